//! Reading many page runs of the target in one call.
//!
//! process_vm_readv takes up to 1024 ranges per call and needs no ptrace round trip, but it
//! does not use FOLL_FORCE, so it cannot read areas without PROT_READ (or a page the kernel
//! refuses for another reason). For those, `/proc/PID/mem`, which reads with FOLL_FORCE, takes
//! over from the first byte process_vm_readv could not read.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::proc::Proc;
use crate::ptrace;

use super::PageError;

/// Reads runs of the target's memory, switching to /proc/PID/mem where needed.
pub struct MemoryReader<'a> {
    proc: &'a Proc,
    mem: Option<File>,
}

impl<'a> MemoryReader<'a> {
    pub fn new(proc: &'a Proc) -> Self {
        MemoryReader { proc, mem: None }
    }

    /// Fills `buf` with the ranges `(address, length)` back to back. `readable` is false for
    /// areas without PROT_READ, which go straight to /proc/PID/mem.
    pub fn read(
        &mut self,
        ranges: &[(u64, usize)],
        buf: &mut [u8],
        readable: bool,
    ) -> Result<(), PageError> {
        let pid = self.proc.pid();
        let done = if readable {
            ptrace::read_memory_vectored(pid, ranges, buf)?
        } else {
            0
        };
        // Whatever process_vm_readv left unread: finish through /proc/PID/mem, range by range.
        let mut pos = 0usize;
        for &(addr, len) in ranges {
            let end = pos + len;
            if end > done {
                let skip = done.saturating_sub(pos);
                self.read_mem(addr + skip as u64, &mut buf[pos + skip..end])?;
            }
            pos = end;
        }
        Ok(())
    }

    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), PageError> {
        if self.mem.is_none() {
            self.mem = Some(self.proc.mem()?);
        }
        let mem = self.mem.as_ref().expect("opened above");
        let pid = self.proc.pid();
        let mut done = 0usize;
        while done < buf.len() {
            match mem.read_at(&mut buf[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(PageError::Unreadable {
                        pid,
                        addr: addr + done as u64,
                        detail: "end of /proc/PID/mem".into(),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(PageError::Unreadable {
                        pid,
                        addr: addr + done as u64,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}
