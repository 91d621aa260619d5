//! The userfaultfd interface (include/uapi/linux/userfaultfd.h, Documentation/admin-guide/
//! mm/userfaultfd.rst): creating one, the API handshake, and the ioctls and messages the page
//! server uses.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFD_API: u64 = 0xAA;

pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// What a lazy restore needs: without these events a fork would give the child zeros where
/// the parent's pages were not yet in, and unmapped or discarded memory could be filled again.
pub const FEATURES: u64 =
    FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;

pub const EVENT_PAGEFAULT: u8 = 0x12;
pub const EVENT_FORK: u8 = 0x13;
pub const EVENT_REMAP: u8 = 0x14;
pub const EVENT_REMOVE: u8 = 0x15;
pub const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// One `struct uffd_msg` (32 bytes), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    PageFault { address: u64 },
    Fork { ufd: RawFd },
    Remap { from: u64, to: u64, len: u64 },
    Remove { start: u64, end: u64 },
    Unmap { start: u64, end: u64 },
    Other(u8),
}

impl Msg {
    fn decode(raw: &[u8; 32]) -> Msg {
        let u = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap());
        match raw[0] {
            EVENT_PAGEFAULT => Msg::PageFault { address: u(16) },
            EVENT_FORK => Msg::Fork {
                ufd: u32::from_le_bytes(raw[8..12].try_into().unwrap()) as RawFd,
            },
            EVENT_REMAP => Msg::Remap {
                from: u(8),
                to: u(16),
                len: u(24),
            },
            EVENT_REMOVE => Msg::Remove {
                start: u(8),
                end: u(16),
            },
            EVENT_UNMAP => Msg::Unmap {
                start: u(8),
                end: u(16),
            },
            other => Msg::Other(other),
        }
    }
}

/// Creates a userfaultfd for the calling process's memory (O_CLOEXEC|O_NONBLOCK) and asks for
/// [`FEATURES`]; an error names what is missing.
pub fn create() -> Result<OwnedFd, String> {
    // SAFETY: userfaultfd takes flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(format!(
            "userfaultfd failed: {} (lazy pages need CONFIG_USERFAULTFD and CAP_SYS_PTRACE or \
             vm.unprivileged_userfaultfd=1)",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // First ask with no features to learn what the kernel offers (the handshake can be done
    // once only per fd, so the probe uses a second descriptor).
    let offered = probe_features()?;
    if offered & FEATURES != FEATURES {
        return Err(format!(
            "this kernel's userfaultfd lacks the events lazy pages need (fork, remap, remove, \
             unmap: features {FEATURES:#x}, offered {offered:#x})"
        ));
    }
    let mut api = UffdioApi {
        api: UFFD_API,
        features: FEATURES,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the struct we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
        return Err(format!(
            "ioctl UFFDIO_API failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

fn probe_features() -> Result<u64, String> {
    // SAFETY: as in `create`.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(format!(
            "userfaultfd failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the struct we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
        return Err(format!(
            "ioctl UFFDIO_API failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(api.features)
}

/// Reads the pending messages of `fd` into `out` (non-blocking: stops at EAGAIN).
pub fn read_msgs(fd: RawFd, out: &mut Vec<Msg>) -> std::io::Result<()> {
    let mut buf = [[0u8; 32]; 16];
    loop {
        // SAFETY: reading into our own buffer of 16 messages.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), std::mem::size_of_val(&buf)) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(()),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(());
        }
        let count = n as usize / 32;
        out.extend(buf[..count].iter().map(Msg::decode));
        if count < buf.len() {
            return Ok(());
        }
    }
}

/// UFFDIO_COPY of `src` to `dst`: the bytes copied, or the error and the bytes copied before.
pub fn copy(fd: RawFd, dst: u64, src: &[u8]) -> Result<u64, (i32, u64)> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: the kernel reads `len` bytes from `src` (a live slice) into the registered memory
    // of the process behind `fd`, and writes the result into the struct.
    let r = unsafe { libc::ioctl(fd, UFFDIO_COPY, &mut c) };
    if r == 0 {
        return Ok(c.copy as u64);
    }
    let err = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    Err((err, if c.copy > 0 { c.copy as u64 } else { 0 }))
}

/// UFFDIO_ZEROPAGE over `start..start+len`.
pub fn zeropage(fd: RawFd, start: u64, len: u64) -> Result<(), i32> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: the kernel reads and writes the struct we pass.
    if unsafe { libc::ioctl(fd, UFFDIO_ZEROPAGE, &mut z) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

/// Wakes threads waiting on faults in `start..start+len` (a page someone else filled).
pub fn wake(fd: RawFd, start: u64, len: u64) {
    let mut r = UffdioRange { start, len };
    // SAFETY: the kernel only reads the struct.
    unsafe { libc::ioctl(fd, UFFDIO_WAKE, &mut r) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode() {
        let mut raw = [0u8; 32];
        raw[0] = EVENT_PAGEFAULT;
        raw[16..24].copy_from_slice(&0x7f00_1234u64.to_le_bytes());
        assert_eq!(
            Msg::decode(&raw),
            Msg::PageFault {
                address: 0x7f00_1234
            }
        );
        raw = [0u8; 32];
        raw[0] = EVENT_REMAP;
        raw[8..16].copy_from_slice(&1u64.to_le_bytes());
        raw[16..24].copy_from_slice(&2u64.to_le_bytes());
        raw[24..32].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(
            Msg::decode(&raw),
            Msg::Remap {
                from: 1,
                to: 2,
                len: 3
            }
        );
    }

    #[test]
    fn handshake_offers_the_events() {
        // Runs as root on the test machines; the kernel there has userfaultfd.
        let fd = create().expect("userfaultfd with fork/remap/remove/unmap events");
        let mut msgs = Vec::new();
        read_msgs(fd.as_raw_fd(), &mut msgs).unwrap();
        assert!(msgs.is_empty());
    }
}
