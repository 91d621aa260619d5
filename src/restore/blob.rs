//! The restorer blob, as the restore uses it: the loader and the blobs themselves live in
//! [`crate::blob`] (shared with the parasite); this module keeps the restore's names for them
//! and tests the restorer by running it in forked children.

pub use crate::blob::{abi, restorer, BlobError, RestorerBlob};

#[cfg(test)]
mod tests {
    use super::abi::*;
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
                madvise: [0; MAX_MADVISE],
                extra: 0,
                nr_hot_runs: 0,
                first_run: 0,
                nr_runs: 2,
                name: 0,
            },
            VmaArg {
                start: w(3),
                len: page as u64,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
                fd: -1,
                fill: VMA_FILL_COPY,
                file_offset: 0,
                madvise: [
                    libc::MADV_DONTFORK as u32,
                    libc::MADV_RANDOM as u32,
                    libc::MADV_DONTDUMP as u32,
                    libc::MADV_NOHUGEPAGE as u32,
                    libc::MADV_WIPEONFORK as u32,
                    0,
                    0,
                    0,
                ],
                extra: VMA_EXTRA_LOCK_ONFAULT,
                nr_hot_runs: 0,
                first_run: 2,
                nr_runs: 1,
                name: 0,
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

    /// Whether this kernel names anonymous memory (CONFIG_ANON_VMA_NAME), tried on a mapping
    /// of this test's own.
    fn kernel_names_vmas() -> bool {
        let m = Map::new(
            0,
            page(),
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        );
        // SAFETY: names a mapping this test owns; the name is a NUL-terminated literal.
        let r = unsafe {
            libc::prctl(
                0x5356_4d41, // PR_SET_VMA
                0,           // PR_SET_VMA_ANON_NAME
                m.addr,
                page(),
                c"probe".as_ptr(),
            )
        };
        r == 0
    }

    #[test]
    fn blob_names_an_anonymous_vma_or_reports_that_it_cannot() {
        let page = page();
        let boot = Bootstrap::new();
        let world = Map::new(0, 2 * page, libc::PROT_NONE, libc::MAP_PRIVATE);
        let name = boot.array(4096, b"crest named\0");
        let vmas = [VmaArg {
            start: world.addr,
            len: page as u64,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            fd: -1,
            name,
            ..Default::default()
        }];
        let mut args = boot.empty_args();
        args.vmas = boot.array(0, &vmas);
        args.nr_vmas = 1;
        let (code, progress) = boot.run(args);
        assert_eq!(code, 127, "{progress:?}");
        if kernel_names_vmas() {
            // Past the naming, up to the mm fields that the zeroed args make fail.
            assert_eq!(
                Step::from_u32(progress.step),
                Some(Step::SetMm),
                "{progress:?}"
            );
        } else {
            // A kernel without CONFIG_ANON_VMA_NAME: the restore fails there, not silently.
            assert_eq!(
                Step::from_u32(progress.step),
                Some(Step::NameVma),
                "{progress:?}"
            );
            assert_eq!(progress.error, -libc::EINVAL);
            assert_eq!(progress.detail, world.addr);
        }

        // Without a name the same VMA never gets to that step.
        let unnamed = [VmaArg { name: 0, ..vmas[0] }];
        let mut args = boot.empty_args();
        args.vmas = boot.array(0, &unnamed);
        args.nr_vmas = 1;
        let (_, progress) = boot.run(args);
        assert_eq!(
            Step::from_u32(progress.step),
            Some(Step::SetMm),
            "{progress:?}"
        );
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
