//! Typed wrappers over the arch shims for the calls the restorer makes. Each returns the raw
//! kernel result decoded as `Ok(value)` or `Err(negative errno)`.

use crate::arch::{self, nr};

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;
pub const MAP_FIXED: u32 = 0x10;
pub const MAP_PRIVATE: u32 = 0x02;
pub const MAP_NORESERVE: u32 = 0x4000;
pub const MREMAP_MAYMOVE: usize = 1;
pub const MREMAP_FIXED: usize = 2;
pub const EIO: i32 = 5;
pub const EINTR: i32 = 4;
pub const EINVAL: i32 = 22;
pub const EEXIST: i32 = 17;
pub const PR_SET_MM: usize = 35;
pub const PR_SET_MM_MAP: usize = 14;

pub type SysResult = Result<usize, i32>;

/// The kernel returns -4095..-1 for errors; everything else (including "negative" addresses) is
/// a value.
fn decode(ret: isize) -> SysResult {
    if (-4095..0).contains(&ret) {
        Err(ret as i32)
    } else {
        Ok(ret as usize)
    }
}

pub fn mmap(addr: u64, len: u64, prot: u32, flags: u32, fd: i32, off: u64) -> SysResult {
    // SAFETY: mapping with MAP_FIXED replaces whatever is there; the restorer checked that the
    // range does not touch the bootstrap region it runs from.
    decode(unsafe {
        arch::syscall6(
            nr::MMAP,
            addr as usize,
            len as usize,
            prot as usize,
            flags as usize,
            fd as isize as usize,
            off as usize,
        )
    })
}

pub fn munmap(addr: u64, len: u64) -> SysResult {
    // SAFETY: crest lists only its own mappings, never the bootstrap region.
    decode(unsafe { arch::syscall2(nr::MUNMAP, addr as usize, len as usize) })
}

pub fn mremap_fixed(old: u64, len: u64, new: u64) -> SysResult {
    // SAFETY: moves a vDSO/vvar piece between addresses crest chose outside the blob's code,
    // arguments and stack.
    decode(unsafe {
        arch::syscall5(
            nr::MREMAP,
            old as usize,
            len as usize,
            len as usize,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            new as usize,
        )
    })
}

/// SHM_RDONLY, SHM_REMAP and SHM_EXEC (include/uapi/linux/shm.h).
pub const SHM_RDONLY: u32 = 0o10000;
pub const SHM_REMAP: u32 = 0o40000;
pub const SHM_EXEC: u32 = 0o100000;

pub fn shmat(id: i32, addr: u64, flags: u32) -> SysResult {
    // SAFETY: attaching with SHM_REMAP replaces whatever is there, like MAP_FIXED; the
    // restorer checked that the range does not touch the bootstrap region it runs from.
    decode(unsafe { arch::syscall3(nr::SHMAT, id as isize as usize, addr as usize, flags as usize) })
}

pub fn mprotect(addr: u64, len: u64, prot: u32) -> SysResult {
    // SAFETY: changes the protection of a VMA the restorer just mapped for the image.
    decode(unsafe { arch::syscall3(nr::MPROTECT, addr as usize, len as usize, prot as usize) })
}

/// madvise(2): fault the range in as if written (Linux 5.14).
pub const MADV_POPULATE_WRITE: u32 = 23;

pub fn madvise(addr: u64, len: u64, advice: u32) -> SysResult {
    // SAFETY: advice on a VMA the restorer just mapped, with a value taken from the image.
    decode(unsafe { arch::syscall3(nr::MADVISE, addr as usize, len as usize, advice as usize) })
}

/// `MLOCK_ONFAULT` (include/uapi/asm-generic/mman-common.h).
pub const MLOCK_ONFAULT: usize = 1;

pub fn mlock2(addr: u64, len: u64, flags: usize) -> SysResult {
    // SAFETY: locks a VMA the restorer just mapped for the image; no memory is written.
    decode(unsafe { arch::syscall3(nr::MLOCK2, addr as usize, len as usize, flags) })
}

pub fn mseal(addr: u64, len: u64) -> SysResult {
    // SAFETY: seals a VMA the restorer just mapped and finished for the image.
    decode(unsafe { arch::syscall3(nr::MSEAL, addr as usize, len as usize, 0) })
}

pub fn pread64(fd: i32, buf: u64, len: u64, off: u64) -> SysResult {
    // SAFETY: `buf..buf+len` lies inside a writable VMA the restorer just mapped.
    decode(unsafe {
        arch::syscall4(
            nr::PREAD64,
            fd as isize as usize,
            buf as usize,
            len as usize,
            off as usize,
        )
    })
}

/// UFFDIO_REGISTER and `struct uffdio_register` (include/uapi/linux/userfaultfd.h).
const UFFDIO_REGISTER: usize = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// Registers `addr..addr+len` with userfaultfd `uffd` in missing-page mode.
pub fn uffd_register_missing(uffd: i32, addr: u64, len: u64) -> SysResult {
    let mut reg = UffdioRegister {
        start: addr,
        len,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: the kernel reads and writes the struct on our stack; registering changes no
    // memory, only how missing pages of the range are filled.
    decode(unsafe {
        arch::syscall3(
            nr::IOCTL,
            uffd as isize as usize,
            UFFDIO_REGISTER,
            &mut reg as *mut UffdioRegister as usize,
        )
    })
}

pub fn close(fd: i32) -> SysResult {
    // SAFETY: closing a descriptor has no memory effects.
    decode(unsafe { arch::syscall1(nr::CLOSE, fd as isize as usize) })
}

/// F_SETLK, the same number on x86_64 and aarch64 (asm-generic/fcntl.h).
const F_SETLK: usize = 6;

pub fn fcntl_setlk(fd: i32, lock: *const u8) -> SysResult {
    // SAFETY: `lock` points at a struct flock in the bootstrap region; the kernel only reads it.
    decode(unsafe { arch::syscall3(nr::FCNTL, fd as isize as usize, F_SETLK, lock as usize) })
}

/// PR_SET_VMA, PR_SET_VMA_ANON_NAME (include/uapi/linux/prctl.h).
pub const PR_SET_VMA: usize = 0x53564d41;
pub const PR_SET_VMA_ANON_NAME: usize = 0;

pub fn name_vma(addr: u64, len: u64, name: u64) -> SysResult {
    // SAFETY: names a VMA the restorer just mapped; `name` points at a NUL-terminated string in
    // the bootstrap region, which the kernel only reads.
    decode(unsafe {
        arch::syscall5(
            nr::PRCTL,
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            addr as usize,
            len as usize,
            name as usize,
        )
    })
}

pub fn prctl_set_mm_map(map: *const u8, size: usize) -> SysResult {
    // SAFETY: `map` points at a `struct prctl_mm_map` of `size` bytes; the kernel only reads it.
    decode(unsafe { arch::syscall5(nr::PRCTL, PR_SET_MM, PR_SET_MM_MAP, map as usize, size, 0) })
}

pub fn rseq(ptr: u64, len: u32, signature: u32) -> SysResult {
    // SAFETY: registers the image's own rseq area (already mapped and filled) for this thread.
    decode(unsafe { arch::syscall4(nr::RSEQ, ptr as usize, len as usize, 0, signature as usize) })
}

pub fn setitimer(which: usize, value: *const u8) -> SysResult {
    // SAFETY: `value` points at a struct itimerval in the bootstrap region; the old value is
    // not requested.
    decode(unsafe { arch::syscall3(nr::SETITIMER, which, value as usize, 0) })
}

pub fn timer_settime(id: i32, spec: *const u8) -> SysResult {
    // SAFETY: `spec` points at a struct itimerspec in the bootstrap region; flags 0 (relative),
    // the old value is not requested.
    decode(unsafe { arch::syscall4(nr::TIMER_SETTIME, id as isize as usize, 0, spec as usize, 0) })
}

pub fn set_name(name: *const u8) -> SysResult {
    // SAFETY: PR_SET_NAME (15) reads at most 16 bytes from a NUL-terminated name.
    decode(unsafe { arch::syscall2(nr::PRCTL, 15, name as usize) })
}

pub fn set_pdeath_signal(sig: u32) -> SysResult {
    // SAFETY: PR_SET_PDEATHSIG (1) takes an integer.
    decode(unsafe { arch::syscall2(nr::PRCTL, 1, sig as usize) })
}

/// FUTEX_WAIT (shared: crest wakes it through its own mapping of the region) while `*word`
/// is `val`; returns at once when it is not, on a wake-up or on a signal.
pub fn futex_wait(word: *const i32, val: i32) -> SysResult {
    // SAFETY: `word` is an aligned i32 in the bootstrap region; no timeout (null).
    decode(unsafe { arch::syscall4(nr::FUTEX, word as usize, 0, val as isize as usize, 0) })
}

pub fn getpid() -> i32 {
    // SAFETY: getpid has no arguments and no side effects.
    unsafe { arch::syscall0(nr::GETPID) as i32 }
}

pub fn set_tid_address(addr: u64) {
    // SAFETY: the kernel only records the address (written and woken when the thread exits).
    unsafe { arch::syscall1(nr::SET_TID_ADDRESS, addr as usize) };
}

pub fn set_robust_list(head: u64, len: u64) -> SysResult {
    // SAFETY: the kernel only records the head; it walks the list when the thread exits.
    decode(unsafe { arch::syscall2(nr::SET_ROBUST_LIST, head as usize, len as usize) })
}

/// sigaltstack(&{sp, flags, size}, NULL).
pub fn sigaltstack(sp: u64, flags: i32, size: u64) -> SysResult {
    // The kernel's stack_t: void *ss_sp; int ss_flags; size_t ss_size.
    #[repr(C)]
    struct StackT {
        sp: u64,
        flags: i32,
        size: u64,
    }
    let ss = StackT { sp, flags, size };
    // SAFETY: `ss` is a valid stack_t on this stack; the kernel only reads it.
    decode(unsafe { arch::syscall2(nr::SIGALTSTACK, &ss as *const StackT as usize, 0) })
}

pub fn rt_tgsigqueueinfo(tgid: i32, tid: i32, sig: i32, info: *const u8) -> SysResult {
    // SAFETY: `info` points at a 128-byte siginfo in the bootstrap region; the kernel copies it.
    decode(unsafe {
        arch::syscall4(
            nr::RT_TGSIGQUEUEINFO,
            tgid as usize,
            tid as usize,
            sig as usize,
            info as usize,
        )
    })
}

pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: exit_group does not return; the loop only satisfies the type.
        unsafe {
            arch::syscall1(nr::EXIT_GROUP, code as isize as usize);
        }
    }
}
