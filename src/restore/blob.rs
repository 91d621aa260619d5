//! The restorer blob built from `parasite/` by build.rs, and its loader.
//!
//! The blob is a flattened static PIE linked at address 0: crest copies it into the bootstrap
//! region and adds the load address to every R_*_RELATIVE slot (build.rs refuses any other
//! relocation), after which the code runs at that address in the restored task. The shared
//! argument structures are in [`abi`], the same file the blob compiles.

#[path = "../../parasite/src/abi.rs"]
pub mod abi;

/// What build.rs found in the blob's ELF file (generated constants).
mod meta {
    include!(concat!(env!("OUT_DIR"), "/restorer_meta.rs"));
}

static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/restorer.bin"));

/// Errors from installing the blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The destination buffer cannot hold the blob.
    #[error(
        "the restorer blob needs {need} bytes but the space reserved for it at {load_addr:#x} \
         has {got}; reserve at least code_size() bytes"
    )]
    DestTooSmall {
        need: usize,
        got: usize,
        load_addr: u64,
    },
    /// The load address breaks the alignment the blob's sections were linked with.
    #[error(
        "the restorer blob cannot be loaded at {load_addr:#x}: it must be {align}-byte aligned"
    )]
    Misaligned { load_addr: u64, align: u64 },
    /// The blob would extend past the end of the address space.
    #[error("the restorer blob ({size} bytes) does not fit at {load_addr:#x}")]
    AddressOverflow { load_addr: u64, size: usize },
    /// A relocation points outside the image (a broken build, caught before anything runs).
    #[error("restorer blob relocation at offset {offset:#x} is outside its {size}-byte image")]
    BadRelocation { offset: u64, size: usize },
}

/// An embedded restorer: its memory image (with `.bss`), entry points and relocations.
#[derive(Debug)]
pub struct RestorerBlob {
    image: &'static [u8],
    entry: u64,
    gadget: u64,
    align: u64,
    relocations: &'static [(u64, i64)],
    arch: &'static str,
}

static RESTORER: RestorerBlob = RestorerBlob {
    image: IMAGE,
    entry: meta::ENTRY_OFFSET,
    gadget: meta::GADGET_OFFSET,
    align: meta::LOAD_ALIGN,
    relocations: meta::RELOCATIONS,
    arch: meta::ARCH,
};

// build.rs writes the image with .bss included, so its length is the memory size.
const _: () = assert!(meta::MEM_SIZE == IMAGE.len());

/// The restorer for the architecture crest was built for.
pub fn restorer() -> &'static RestorerBlob {
    &RESTORER
}

impl RestorerBlob {
    /// Bytes of memory the blob occupies, `.bss` included (the caller rounds up to pages).
    pub fn code_size(&self) -> usize {
        self.image.len()
    }

    /// Offset of `restorer_main(args: *mut RestorerArgs) -> !` from the load address.
    pub fn entry_offset(&self) -> u64 {
        self.entry
    }

    /// Offset of `crest_syscall_gadget` (x86_64 `syscall; int3`, aarch64 `svc #0; brk #0`).
    pub fn gadget_offset(&self) -> u64 {
        self.gadget
    }

    /// Alignment the load address must have.
    pub fn load_align(&self) -> u64 {
        self.align
    }

    /// The architecture the blob was built for (`std::env::consts::ARCH` spelling).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// Copies the blob into `dest` (which will live at address `load_addr`) and applies
    /// relocations. Bytes of `dest` past `code_size()` are left as they are.
    ///
    /// On aarch64 the caller must make the instruction cache coherent with the new code before
    /// it runs (the kernel does this for pages it maps fresh into the task).
    pub fn install(&self, dest: &mut [u8], load_addr: u64) -> Result<(), BlobError> {
        let size = self.image.len();
        if dest.len() < size {
            return Err(BlobError::DestTooSmall {
                need: size,
                got: dest.len(),
                load_addr,
            });
        }
        if !load_addr.is_multiple_of(self.align) {
            return Err(BlobError::Misaligned {
                load_addr,
                align: self.align,
            });
        }
        if load_addr.checked_add(size as u64).is_none() {
            return Err(BlobError::AddressOverflow { load_addr, size });
        }
        // Check every relocation before writing anything, so a failure leaves `dest` untouched.
        for &(offset, _) in self.relocations {
            if offset.checked_add(8).is_none_or(|end| end > size as u64) {
                return Err(BlobError::BadRelocation { offset, size });
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::abi::*;
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn synthetic(image: &'static [u8], relocations: &'static [(u64, i64)]) -> RestorerBlob {
        RestorerBlob {
            image,
            entry: 0,
            gadget: 0,
            align: 16,
            relocations,
            arch: std::env::consts::ARCH,
        }
    }

    #[test]
    fn install_applies_relocations() {
        static IMG: [u8; 40] = [0x5a; 40];
        static RELOCS: [(u64, i64); 3] = [(0, 0x20), (8, 0), (24, -0x10)];
        let blob = synthetic(&IMG, &RELOCS);
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
        let blob = synthetic(&IMG, &RELOCS);
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
        let broken = synthetic(&IMG, &BAD);
        assert!(matches!(
            broken.install(&mut dest, 0x10000),
            Err(BlobError::BadRelocation {
                offset: 28,
                size: 32
            })
        ));
        assert_eq!(dest, vec![0u8; 32]);
        blob.install(&mut dest, 0x10000).unwrap();
    }

    #[test]
    fn embedded_blob_is_consistent() {
        let blob = restorer();
        assert_eq!(blob.arch(), std::env::consts::ARCH);
        assert!(blob.code_size() > 0);
        assert!((blob.entry_offset() as usize) < blob.code_size());
        let gadget = blob.gadget_offset() as usize;
        let expected: &[u8] = if cfg!(target_arch = "x86_64") {
            &[0x0f, 0x05, 0xcc] // syscall; int3
        } else {
            &[0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4] // svc #0; brk #0
        };
        assert_eq!(&IMAGE[gadget..gadget + expected.len()], expected);

        let load = 0x5555_0000_0000u64;
        let mut dest = vec![0u8; blob.code_size()];
        blob.install(&mut dest, load).unwrap();
        let mut relocated = vec![false; dest.len()];
        for &(off, addend) in blob.relocations {
            let at = off as usize;
            let got = u64::from_le_bytes(dest[at..at + 8].try_into().unwrap());
            assert_eq!(got, load.wrapping_add_signed(addend));
            relocated[at..at + 8].iter_mut().for_each(|r| *r = true);
        }
        for (i, (&d, &s)) in dest.iter().zip(IMAGE).enumerate() {
            if !relocated[i] {
                assert_eq!(d, s, "byte {i} changed by install");
            }
        }
    }

    /// An anonymous mapping owned by the test.
    struct Map {
        addr: u64,
        len: usize,
    }

    impl Map {
        fn new(addr: u64, len: usize, prot: i32, flags: i32) -> Map {
            // SAFETY: a fresh anonymous mapping; with MAP_FIXED the tests only replace pages of
            // a reservation they made themselves.
            let p = unsafe {
                libc::mmap(
                    addr as *mut _,
                    len,
                    prot,
                    flags | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(
                p,
                libc::MAP_FAILED,
                "mmap: {}",
                std::io::Error::last_os_error()
            );
            Map {
                addr: p as u64,
                len,
            }
        }

        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the mapping is readable and writable for `len` bytes while `self` lives.
            unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: unmapping a region this test mapped and no longer uses.
            unsafe { libc::munmap(self.addr as *mut _, self.len) };
        }
    }

    fn memfd(data: &[u8], len: usize) -> OwnedFd {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"crest-blob-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let f = std::fs::File::from(fd.try_clone().unwrap());
        f.set_len(len as u64).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, data, 0).unwrap();
        fd
    }

    fn page() -> usize {
        crate::arch::page_size() as usize
    }

    /// A bootstrap region like crest's: the installed blob, then the arguments (shared with
    /// the child so that its progress report survives it), then room for arrays.
    struct Bootstrap {
        _reserve: Map,
        blob: Map,
        args: Map,
    }

    impl Bootstrap {
        fn new() -> Bootstrap {
            let page = page();
            let blob_len = restorer().code_size().div_ceil(page) * page;
            let args_len = 16 * page;
            let reserve = Map::new(0, blob_len + args_len, libc::PROT_NONE, libc::MAP_PRIVATE);
            let mut blob = Map::new(
                reserve.addr,
                blob_len,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
            );
            let load_addr = blob.addr;
            restorer().install(blob.bytes(), load_addr).unwrap();
            let args = Map::new(
                reserve.addr + blob_len as u64,
                args_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
            );
            Bootstrap {
                _reserve: reserve,
                blob,
                args,
            }
        }

        fn range(&self) -> Range {
            Range {
                start: self.blob.addr,
                len: self.blob.len as u64 + self.args.len as u64,
            }
        }

        fn args(&self) -> *mut RestorerArgs {
            self.args.addr as *mut RestorerArgs
        }

        /// Puts `items` into the array area (at byte `at` of it) and returns their address.
        fn array<T: Copy>(&self, at: usize, items: &[T]) -> u64 {
            let base = std::mem::size_of::<RestorerArgs>().next_multiple_of(64) + at;
            assert!(base + std::mem::size_of_val(items) <= self.args.len);
            let addr = self.args.addr + base as u64;
            // SAFETY: the destination lies inside the args mapping (checked above), 64-byte
            // aligned plus the caller's 8-byte aligned offset.
            unsafe {
                std::ptr::copy_nonoverlapping(items.as_ptr(), addr as *mut T, items.len());
            }
            addr
        }

        fn empty_args(&self) -> RestorerArgs {
            // SAFETY: RestorerArgs is made of integers only; all-zero is a valid value.
            let mut a: RestorerArgs = unsafe { std::mem::zeroed() };
            a.magic = ARGS_MAGIC;
            a.abi_version = ABI_VERSION;
            a.page_size = page() as u32;
            a.bootstrap = self.range();
            a.pages_fd = -1;
            a
        }

        /// Runs the blob in a forked child and returns its exit status and final report.
        fn run(&self, args: RestorerArgs) -> (i32, Progress) {
            // SAFETY: the args mapping is writable and sized for a RestorerArgs.
            unsafe { std::ptr::write(self.args(), args) };
            let entry: extern "C" fn(*mut RestorerArgs) -> ! =
                // SAFETY: the blob is installed at blob.addr and entry_offset is restorer_main,
                // an `extern "C" fn(*mut RestorerArgs) -> !`.
                unsafe { std::mem::transmute(self.blob.addr + restorer().entry_offset()) };
            let args_ptr = self.args();
            // SAFETY: the child only runs the blob, which makes raw syscalls and exits; it
            // touches no lock or allocator state the fork may have copied mid-use.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => entry(args_ptr),
                nix::unistd::ForkResult::Parent { child } => {
                    let status = nix::sys::wait::waitpid(child, None).unwrap();
                    // SAFETY: the child is gone; the shared page holds its last report.
                    let progress = unsafe { std::ptr::read_volatile(&(*self.args()).progress) };
                    match status {
                        nix::sys::wait::WaitStatus::Exited(_, code) => (code, progress),
                        other => panic!("restorer child ended with {other:?}, {progress:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn blob_refuses_bad_magic() {
        let boot = Bootstrap::new();
        let mut args = boot.empty_args();
        args.magic ^= 1;
        let (code, progress) = boot.run(args);
        assert_eq!(code, 127);
        assert_eq!(Step::from_u32(progress.step), Some(Step::BadArgs));
        assert_eq!(progress.error, -libc::EINVAL);
        assert_eq!(progress.detail, BAD_ARGS_MAGIC);
    }

    #[test]
    fn blob_maps_fills_and_moves_memory() {
        let page = page();
        let boot = Bootstrap::new();
        // Addresses for the child's work, reserved here so nothing else lands there.
        let world = Map::new(0, 16 * page, libc::PROT_NONE, libc::MAP_PRIVATE);
        let w = |i: usize| world.addr + (i * page) as u64;
        // Something of "crest's" for the child to unmap, and a "vDSO" page for it to move.
        let _own = Map::new(
            w(5),
            page,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
        );
        let mut special = Map::new(
            w(7),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
        );
        special.bytes().fill(0xab);

        let pages: Vec<u8> = (0..3 * page).map(|i| (i * 7 + i / page) as u8).collect();
        let page_file = memfd(&pages, pages.len());
        let target = memfd(&[], 2 * page);

        let runs = [
            PageRunArg {
                vaddr: w(0),
                len: page as u64,
                file_offset: 0,
            },
            PageRunArg {
                vaddr: w(1),
                len: page as u64,
                file_offset: 2 * page as u64,
            },
            PageRunArg {
                vaddr: w(3),
                len: page as u64,
                file_offset: page as u64,
            },
        ];
        let vmas = [
            // A read-only shared file mapping: written through a temporary PROT_WRITE.
            VmaArg {
                start: w(0),
                len: 2 * page as u64,
                prot: libc::PROT_READ as u32,
                flags: libc::MAP_SHARED as u32,
                fd: target.as_raw_fd(),
                fill: VMA_FILL_COPY,
                file_offset: 0,
                madvise: [0; 4],
                first_run: 0,
                nr_runs: 2,
            },
            VmaArg {
                start: w(3),
                len: page as u64,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
                fd: -1,
                fill: VMA_FILL_COPY,
                file_offset: 0,
                madvise: [libc::MADV_DONTFORK as u32, 0, 0, 0],
                first_run: 2,
                nr_runs: 1,
            },
        ];
        let unmap = [Range {
            start: w(5),
            len: page as u64,
        }];

        let mut args = boot.empty_args();
        args.vmas = boot.array(0, &vmas);
        args.nr_vmas = vmas.len() as u64;
        args.runs = boot.array(4096, &runs);
        args.nr_runs = runs.len() as u64;
        args.unmap = boot.array(8192, &unmap);
        args.nr_unmap = 1;
        args.pages_fd = page_file.as_raw_fd();
        args.special[0] = SpecialMove {
            current: w(7),
            park: w(9),
            target: w(11),
            len: page as u64,
        };
        args.nr_special = 1;
        // All-zero mm fields are below mmap_min_addr: PR_SET_MM_MAP refuses them with EINVAL,
        // which stops the run at a known point after all memory work is done.
        let (code, progress) = boot.run(args);
        assert_eq!(code, 127, "{progress:?}");
        assert_eq!(
            Step::from_u32(progress.step),
            Some(Step::SetMm),
            "{progress:?}"
        );
        assert_eq!(progress.error, -libc::EINVAL);

        // The shared file mapping received page 0 and page 2 of the page file.
        let mut got = vec![0u8; 2 * page];
        let f = std::fs::File::from(target);
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 0).unwrap();
        assert_eq!(&got[..page], &pages[..page]);
        assert_eq!(&got[page..], &pages[2 * page..]);
    }

    #[test]
    fn blob_reports_short_page_file_and_bootstrap_overlap() {
        let page = page();
        let boot = Bootstrap::new();
        let world = Map::new(0, 4 * page, libc::PROT_NONE, libc::MAP_PRIVATE);
        // One page stored, two claimed: the second pread hits end of file.
        let page_file = memfd(&vec![3u8; page], page);
        let runs = [PageRunArg {
            vaddr: world.addr,
            len: 2 * page as u64,
            file_offset: 0,
        }];
        let vmas = [VmaArg {
            start: world.addr,
            len: 2 * page as u64,
            prot: libc::PROT_READ as u32,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            fd: -1,
            fill: VMA_FILL_COPY,
            nr_runs: 1,
            ..Default::default()
        }];
        let mut args = boot.empty_args();
        args.vmas = boot.array(0, &vmas);
        args.nr_vmas = 1;
        args.runs = boot.array(4096, &runs);
        args.nr_runs = 1;
        args.pages_fd = page_file.as_raw_fd();
        let (code, progress) = boot.run(args);
        assert_eq!(code, 127);
        assert_eq!(Step::from_u32(progress.step), Some(Step::FillPages));
        assert_eq!(progress.error, -libc::EIO);
        assert_eq!(progress.detail, world.addr);

        // A VMA over the blob itself is refused instead of wiping the running code.
        let over = [VmaArg {
            start: boot.range().start,
            len: page as u64,
            prot: libc::PROT_READ as u32,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            fd: -1,
            ..Default::default()
        }];
        let mut args = boot.empty_args();
        args.vmas = boot.array(0, &over);
        args.nr_vmas = 1;
        let (code, progress) = boot.run(args);
        assert_eq!(code, 127);
        assert_eq!(Step::from_u32(progress.step), Some(Step::MapVma));
        assert_eq!(progress.error, -libc::EEXIST);
        assert_eq!(progress.detail, boot.range().start);
    }
}
