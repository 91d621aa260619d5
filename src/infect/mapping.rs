//! The parasite's memory: one memfd mapped MAP_SHARED both in crest and in the target, holding
//! `[parasite code+data][ParasiteArgs][stack]`. crest installs the blob and writes commands
//! through its own mapping; the target runs the code and writes results through its mapping.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::blob::abi::{ParasiteArgs, ABI_VERSION, PARASITE_MAGIC};
use crate::blob::Blob;

/// Stack the parasite runs on. It calls nothing deep: a few hundred bytes of locals.
const STACK_SIZE: u64 = 64 * 1024;

/// Where things are inside the mapping (offsets from its start, all page-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub code_len: u64,
    pub args_off: u64,
    pub stack_off: u64,
    pub total: u64,
}

impl Layout {
    pub fn new(blob: &Blob, page: u64) -> Layout {
        let round = |n: u64| n.div_ceil(page) * page;
        let code_len = round(blob.code_size() as u64);
        let args_off = code_len;
        let stack_off = args_off + round(std::mem::size_of::<ParasiteArgs>() as u64);
        Layout {
            code_len,
            args_off,
            stack_off,
            total: stack_off + STACK_SIZE,
        }
    }
}

/// crest's own MAP_SHARED view of the memfd.
#[derive(Debug)]
pub struct LocalMap {
    ptr: *mut u8,
    len: usize,
    /// The memfd, opened through /proc/PID/fd/N; kept for as long as the view exists.
    _file: File,
}

impl LocalMap {
    /// Maps all `len` bytes of `file` read-write and shared.
    pub fn new(file: File, len: u64) -> std::io::Result<LocalMap> {
        let len = len as usize;
        // SAFETY: a fresh shared mapping of a file crest holds open; it replaces nothing (no
        // MAP_FIXED). The memory is only ever accessed through raw pointers (the target writes
        // it too).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = LocalMap {
            ptr: p.cast(),
            len,
            _file: file,
        };
        // A process crest forks meanwhile (a restore, or another thread of a test binary) must
        // not inherit this view: it would carry a memfd mapping of crest's into a process that
        // is not crest.
        // SAFETY: advice on the mapping made just above; it changes only fork's behaviour.
        if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(map)
    }

    /// Copies the blob into the start of the mapping, relocated for the target's address
    /// `remote_base` of the same memory.
    pub fn install(&mut self, blob: &Blob, remote_base: u64) -> Result<(), crate::blob::BlobError> {
        // SAFETY: the whole mapping is live and writable; the target does not run while crest
        // installs (it is in a ptrace stop), so nothing else accesses these bytes meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) };
        blob.install(bytes, remote_base)
    }

    fn args_ptr(&self, layout: &Layout) -> *mut ParasiteArgs {
        assert!(layout.args_off as usize + std::mem::size_of::<ParasiteArgs>() <= self.len);
        // SAFETY: in bounds (checked above); args_off is page-aligned, so the pointer is
        // aligned for ParasiteArgs.
        unsafe { self.ptr.add(layout.args_off as usize).cast() }
    }

    /// Writes the whole argument block.
    pub fn write_args(&mut self, layout: &Layout, args: &ParasiteArgs) {
        let p = self.args_ptr(layout);
        // SAFETY: `p` is valid and aligned for one ParasiteArgs; volatile because the target
        // reads this memory through its own mapping.
        unsafe { std::ptr::write_volatile(p, *args) };
    }

    /// Reads the whole argument block (with the parasite's results).
    pub fn read_args(&self, layout: &Layout) -> ParasiteArgs {
        let p = self.args_ptr(layout);
        // SAFETY: as in write_args; ParasiteArgs is plain integers, any bit pattern is valid.
        unsafe { std::ptr::read_volatile(p) }
    }
}

impl Drop for LocalMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in new(); no reference into it outlives
        // `self` (all access goes through short-lived raw-pointer reads and writes).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// An argument block for `cmd`, with the magic and version the parasite checks.
pub fn new_args(cmd: u32) -> ParasiteArgs {
    // SAFETY: ParasiteArgs is made of integers only; all-zero is a valid value.
    let mut a: ParasiteArgs = unsafe { std::mem::zeroed() };
    a.magic = PARASITE_MAGIC;
    a.abi_version = ABI_VERSION;
    a.cmd = cmd;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_page_aligned_and_holds_everything() {
        let page = crate::arch::page_size();
        let l = Layout::new(crate::blob::parasite(), page);
        assert!(l.code_len >= crate::blob::parasite().code_size() as u64);
        for off in [l.code_len, l.args_off, l.stack_off, l.total] {
            assert_eq!(off % page, 0);
        }
        assert!(l.stack_off - l.args_off >= std::mem::size_of::<ParasiteArgs>() as u64);
        assert_eq!(l.total - l.stack_off, STACK_SIZE);
    }
}
