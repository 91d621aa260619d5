//! The blobs built from `parasite/` by build.rs, and their loader.
//!
//! Each blob is a flattened static PIE linked at address 0: crest copies it into memory that
//! the task will run it from and adds the load address to every R_*_RELATIVE slot (build.rs
//! refuses any other relocation). The restorer turns a forked task into the image's process
//! (`crate::restore`); the parasite runs inside a task being dumped (`crate::infect`). The
//! structures both sides share are in [`abi`], the same file the blobs compile.

#[path = "../parasite/src/abi.rs"]
pub mod abi;

/// What build.rs found in the restorer's ELF file (generated constants).
mod restorer_meta {
    include!(concat!(env!("OUT_DIR"), "/restorer_meta.rs"));
}

/// What build.rs found in the parasite's ELF file (generated constants).
mod parasite_meta {
    include!(concat!(env!("OUT_DIR"), "/parasite_meta.rs"));
}

static RESTORER_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/restorer.bin"));
static PARASITE_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/parasite.bin"));

// build.rs writes each image with .bss included, so its length is the memory size.
const _: () = assert!(restorer_meta::MEM_SIZE == RESTORER_IMAGE.len());
const _: () = assert!(parasite_meta::MEM_SIZE == PARASITE_IMAGE.len());

/// Errors from installing a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The destination buffer cannot hold the blob.
    #[error(
        "the {blob} blob needs {need} bytes but the space reserved for it at {load_addr:#x} \
         has {got}; reserve at least code_size() bytes"
    )]
    DestTooSmall {
        blob: &'static str,
        need: usize,
        got: usize,
        load_addr: u64,
    },
    /// The load address breaks the alignment the blob's sections were linked with.
    #[error("the {blob} blob cannot be loaded at {load_addr:#x}: it must be {align}-byte aligned")]
    Misaligned {
        blob: &'static str,
        load_addr: u64,
        align: u64,
    },
    /// The blob would extend past the end of the address space.
    #[error("the {blob} blob ({size} bytes) does not fit at {load_addr:#x}")]
    AddressOverflow {
        blob: &'static str,
        load_addr: u64,
        size: usize,
    },
    /// A relocation points outside the image (a broken build, caught before anything runs).
    #[error("{blob} blob relocation at offset {offset:#x} is outside its {size}-byte image")]
    BadRelocation {
        blob: &'static str,
        offset: u64,
        size: usize,
    },
}

/// An embedded blob: its memory image (with `.bss`), entry point and relocations.
#[derive(Debug)]
pub struct Blob {
    name: &'static str,
    image: &'static [u8],
    entry: u64,
    align: u64,
    relocations: &'static [(u64, i64)],
    arch: &'static str,
}

/// The restorer: a [`Blob`] that also carries a `syscall; trap` gadget crest runs calls through
/// once the task is back in its own registers.
#[derive(Debug)]
pub struct RestorerBlob {
    blob: Blob,
    gadget: u64,
}

static RESTORER: RestorerBlob = RestorerBlob {
    blob: Blob {
        name: "restorer",
        image: RESTORER_IMAGE,
        entry: restorer_meta::ENTRY_OFFSET,
        align: restorer_meta::LOAD_ALIGN,
        relocations: restorer_meta::RELOCATIONS,
        arch: restorer_meta::ARCH,
    },
    gadget: restorer_meta::GADGET_OFFSET,
};

static PARASITE: Blob = Blob {
    name: "parasite",
    image: PARASITE_IMAGE,
    entry: parasite_meta::ENTRY_OFFSET,
    align: parasite_meta::LOAD_ALIGN,
    relocations: parasite_meta::RELOCATIONS,
    arch: parasite_meta::ARCH,
};

/// The restorer for the architecture crest was built for.
pub fn restorer() -> &'static RestorerBlob {
    &RESTORER
}

/// The parasite for the architecture crest was built for.
pub fn parasite() -> &'static Blob {
    &PARASITE
}

impl std::ops::Deref for RestorerBlob {
    type Target = Blob;

    fn deref(&self) -> &Blob {
        &self.blob
    }
}

impl RestorerBlob {
    /// Offset of `crest_syscall_gadget` (x86_64 `syscall; int3`, aarch64 `svc #0; brk #0`).
    pub fn gadget_offset(&self) -> u64 {
        self.gadget
    }
}

impl Blob {
    /// `restorer` or `parasite`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes of memory the blob occupies, `.bss` included (the caller rounds up to pages).
    pub fn code_size(&self) -> usize {
        self.image.len()
    }

    /// Offset of the entry point (`restorer_main(args: *mut RestorerArgs) -> !`,
    /// `parasite_main(args: *mut ParasiteArgs) -> !`) from the load address.
    pub fn entry_offset(&self) -> u64 {
        self.entry
    }

    /// Alignment the load address must have.
    pub fn load_align(&self) -> u64 {
        self.align
    }

    /// The architecture the blob was built for (`std::env::consts::ARCH` spelling).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The unrelocated memory image.
    pub fn image(&self) -> &'static [u8] {
        self.image
    }

    /// (offset, addend) of every R_*_RELATIVE slot, addends relative to the image start.
    pub fn relocations(&self) -> &'static [(u64, i64)] {
        self.relocations
    }

    /// Copies the blob into `dest` (which will live at address `load_addr`) and applies
    /// relocations. Bytes of `dest` past `code_size()` are left as they are.
    ///
    /// On aarch64 the instruction cache is made coherent with the new code here.
    pub fn install(&self, dest: &mut [u8], load_addr: u64) -> Result<(), BlobError> {
        let blob = self.name;
        let size = self.image.len();
        if dest.len() < size {
            return Err(BlobError::DestTooSmall {
                blob,
                need: size,
                got: dest.len(),
                load_addr,
            });
        }
        if !load_addr.is_multiple_of(self.align) {
            return Err(BlobError::Misaligned {
                blob,
                load_addr,
                align: self.align,
            });
        }
        if load_addr.checked_add(size as u64).is_none() {
            return Err(BlobError::AddressOverflow {
                blob,
                load_addr,
                size,
            });
        }
        // Check every relocation before writing anything, so a failure leaves `dest` untouched.
        for &(offset, _) in self.relocations {
            if offset.checked_add(8).is_none_or(|end| end > size as u64) {
                return Err(BlobError::BadRelocation { blob, offset, size });
            }
        }
        dest[..size].copy_from_slice(self.image);
        for &(offset, addend) in self.relocations {
            // R_*_RELATIVE: the slot receives load address + addend (both arches are
            // little-endian, and build.rs already rebased addends to the image start).
            let value = load_addr.wrapping_add_signed(addend);
            let at = offset as usize;
            dest[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        // The code reaches the CPU that runs it through the data cache (aarch64); the same
        // physical lines are maintained whichever mapping of them `dest` is.
        crate::arch::sync_icache(dest.as_ptr(), size);
        Ok(())
    }

    /// A blob made of test data.
    #[cfg(test)]
    pub(crate) fn synthetic(image: &'static [u8], relocations: &'static [(u64, i64)]) -> Blob {
        Blob {
            name: "test",
            image,
            entry: 0,
            align: 16,
            relocations,
            arch: std::env::consts::ARCH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_applies_relocations() {
        static IMG: [u8; 40] = [0x5a; 40];
        static RELOCS: [(u64, i64); 3] = [(0, 0x20), (8, 0), (24, -0x10)];
        let blob = Blob::synthetic(&IMG, &RELOCS);
        let load = 0x7f12_3456_0000u64;
        let mut dest = vec![0xeeu8; 48];
        blob.install(&mut dest, load).unwrap();
        let word = |at: usize| u64::from_le_bytes(dest[at..at + 8].try_into().unwrap());
        assert_eq!(word(0), load + 0x20);
        assert_eq!(word(8), load);
        assert_eq!(word(24), load - 0x10);
        // Untouched image bytes are copied, the slack past the image is left alone.
        assert_eq!(&dest[16..24], &IMG[16..24]);
        assert_eq!(&dest[32..40], &IMG[32..40]);
        assert_eq!(&dest[40..], &[0xee; 8]);
    }

    #[test]
    fn install_checks_sizes_and_alignment() {
        static IMG: [u8; 32] = [1; 32];
        static RELOCS: [(u64, i64); 1] = [(8, 0)];
        let blob = Blob::synthetic(&IMG, &RELOCS);
        let mut small = vec![0u8; 31];
        assert!(matches!(
            blob.install(&mut small, 0x10000),
            Err(BlobError::DestTooSmall {
                need: 32,
                got: 31,
                ..
            })
        ));
        let mut dest = vec![0u8; 32];
        assert!(matches!(
            blob.install(&mut dest, 0x10008),
            Err(BlobError::Misaligned { align: 16, .. })
        ));
        assert!(matches!(
            blob.install(&mut dest, u64::MAX - 15),
            Err(BlobError::AddressOverflow { .. })
        ));
        // A relocation slot that does not fit is refused before anything is written.
        static BAD: [(u64, i64); 1] = [(28, 0)];
        let broken = Blob::synthetic(&IMG, &BAD);
        assert!(matches!(
            broken.install(&mut dest, 0x10000),
            Err(BlobError::BadRelocation {
                offset: 28,
                size: 32,
                ..
            })
        ));
        assert_eq!(dest, vec![0u8; 32]);
        blob.install(&mut dest, 0x10000).unwrap();
    }

    /// Installing changes exactly the relocation slots, each to load address + addend.
    fn check_installed(blob: &Blob) {
        let load = 0x5555_0000_0000u64;
        let mut dest = vec![0u8; blob.code_size()];
        blob.install(&mut dest, load).unwrap();
        let mut relocated = vec![false; dest.len()];
        for &(off, addend) in blob.relocations() {
            let at = off as usize;
            let got = u64::from_le_bytes(dest[at..at + 8].try_into().unwrap());
            assert_eq!(got, load.wrapping_add_signed(addend));
            relocated[at..at + 8].iter_mut().for_each(|r| *r = true);
        }
        for (i, (&d, &s)) in dest.iter().zip(blob.image()).enumerate() {
            if !relocated[i] {
                assert_eq!(d, s, "{}: byte {i} changed by install", blob.name());
            }
        }
    }

    #[test]
    fn embedded_blobs_are_consistent() {
        for blob in [&**restorer(), parasite()] {
            assert_eq!(blob.arch(), std::env::consts::ARCH);
            assert!(blob.code_size() > 0);
            assert!((blob.entry_offset() as usize) < blob.code_size());
            check_installed(blob);
        }
        assert_eq!(restorer().name(), "restorer");
        assert_eq!(parasite().name(), "parasite");
        let gadget = restorer().gadget_offset() as usize;
        let expected: &[u8] = if cfg!(target_arch = "x86_64") {
            &[0x0f, 0x05, 0xcc] // syscall; int3
        } else {
            &[0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4] // svc #0; brk #0
        };
        assert_eq!(
            &restorer().image()[gadget..gadget + expected.len()],
            expected
        );
    }
}
