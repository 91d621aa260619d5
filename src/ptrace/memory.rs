//! Reading another process's memory with `process_vm_readv` (no ptrace stop needed, one call
//! moves many ranges).
//!
//! process_vm_readv does not use FOLL_FORCE, so it cannot read areas without PROT_READ; callers
//! fall back to `/proc/PID/mem` for those.

use std::io::IoSliceMut;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use super::PtraceError;

/// Most iovecs one process_vm_readv call takes (UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Reads exactly `buf.len()` bytes at `addr` of process `pid`.
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> Result<(), PtraceError> {
    let len = buf.len();
    let got = read_memory_vectored(pid, &[(addr, len)], buf)?;
    if got != len {
        return Err(PtraceError::ShortRead {
            pid,
            addr,
            len,
            got,
        });
    }
    Ok(())
}

/// Reads the remote ranges `remote` (address, length) of process `pid` back to back into
/// `local`, which must be at least as long as their sum. Returns the bytes read: less than the
/// sum when a range could not be read completely — the kernel stops at the first failing page,
/// and so does this function, so the result is always a prefix of the request.
pub fn read_memory_vectored(
    pid: i32,
    remote: &[(u64, usize)],
    local: &mut [u8],
) -> Result<usize, PtraceError> {
    let total: usize = remote.iter().map(|r| r.1).sum();
    assert!(
        local.len() >= total,
        "local buffer too small for the request"
    );
    let mut done = 0usize;
    for chunk in remote.chunks(IOV_MAX) {
        let chunk_len: usize = chunk.iter().map(|r| r.1).sum();
        let iovs: Vec<RemoteIoVec> = chunk
            .iter()
            .map(|&(base, len)| RemoteIoVec {
                base: base as usize,
                len,
            })
            .collect();
        let mut local_iov = [IoSliceMut::new(&mut local[done..done + chunk_len])];
        let got = loop {
            match process_vm_readv(Pid::from_raw(pid), &mut local_iov, &iovs) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EFAULT) if done > 0 => return Ok(done),
                // EFAULT on the very first byte: report it as a short read of nothing, so callers
                // can fall back to /proc/PID/mem the same way as for a partial read.
                Err(Errno::EFAULT) => return Ok(0),
                Err(errno) => {
                    return Err(PtraceError::ReadMemory {
                        pid,
                        addr: chunk[0].0,
                        len: chunk_len,
                        errno,
                    })
                }
                Ok(n) => break n,
            }
        };
        done += got;
        if got < chunk_len {
            return Ok(done);
        }
    }
    Ok(done)
}
