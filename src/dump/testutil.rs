//! Test helpers: forked child processes that the tests own, kill by pid and always reap.
//!
//! The child is forked from the (multi-threaded) test binary, so after fork it only calls
//! async-signal-safe functions and never allocates: its fd layout and body are prepared
//! before the fork.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A page of MAP_SHARED|MAP_ANONYMOUS memory shared with a child: word 0 is the child's
/// "ready" flag, word 1 its loop counter.
pub struct SharedPage {
    ptr: *mut AtomicU64,
    len: usize,
}

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for SharedPage {}
// SAFETY: the page is only accessed through atomics.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    pub fn new() -> SharedPage {
        let len = crate::arch::page_size() as usize;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        SharedPage { ptr: p.cast(), len }
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.len / 8);
        // SAFETY: in bounds of the live mapping, which is 8-byte aligned; AtomicU64 has the
        // layout of u64.
        unsafe { &*self.ptr.add(i) }
    }

    pub fn ready(&self) -> bool {
        self.word(0).load(Ordering::SeqCst) != 0
    }

    pub fn counter(&self) -> u64 {
        self.word(1).load(Ordering::SeqCst)
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in new().
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A child process owned by a test: killed by pid and reaped on drop (also on panic).
pub struct Child {
    pub pid: i32,
    reaped: bool,
}

impl Child {
    /// Whether the child has been collected already (e.g. by a dump that killed it while
    /// tracing it: crest's wait then reaps it, as its parent). Never signals a pid.
    pub fn reaped_already(&mut self) -> bool {
        let mut status = 0;
        // SAFETY: `status` is a valid, writable int.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG | libc::__WALL) };
        if r == self.pid {
            // It had ended and we just collected it.
            self.reaped = true;
            return true;
        }
        if r < 0 && nix::errno::Errno::last() == nix::errno::Errno::ECHILD {
            self.reaped = true;
            return true;
        }
        false
    }

    /// The child's state letter from /proc (R, S, t, ...).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn state(&self) -> char {
        procfs::process::Process::new(self.pid)
            .and_then(|p| p.stat())
            .map(|s| s.state)
            .unwrap_or('?')
    }

    /// TracerPid of the child.
    pub fn tracer(&self) -> i32 {
        procfs::process::Process::new(self.pid)
            .and_then(|p| p.status())
            .map(|s| s.tracerpid)
            .unwrap_or(-1)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped || self.reaped_already() {
            return;
        }
        // SAFETY: plain syscalls on our own, not yet reaped child (its pid cannot be reused
        // before we reap it).
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, libc::__WALL);
        }
    }
}

/// How the child's fd table is built: `(fd in the test process, fd number in the child,
/// close-on-exec)`. fds 0-2 are /dev/null unless listed; every other fd is closed.
pub type FdPlan<'a> = &'a [(RawFd, RawFd, bool)];

/// Forks a child that sets up its fds, runs `setup`, raises the ready flag in `page`, then
/// loops forever bumping the counter and sleeping 1 ms. Returns once the child is ready.
pub fn spawn(fds: FdPlan, page: &SharedPage, setup: impl FnOnce()) -> Child {
    spawn_with(fds, page, setup, || loop {
        page.word(1).fetch_add(1, Ordering::SeqCst);
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: valid timespec; a null remainder pointer is allowed.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    })
}

/// Like [`spawn`] with a custom endless `body` run after the ready flag.
pub fn spawn_with(
    fds: FdPlan,
    page: &SharedPage,
    setup: impl FnOnce(),
    body: impl FnOnce() -> std::convert::Infallible,
) -> Child {
    let devnull = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    let devnull_fd = devnull.as_raw_fd();
    // SAFETY: fork in a test process; the child below only makes async-signal-safe calls
    // until `setup`/`body`, which tests write to the same rule.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY (whole block): raw fd syscalls on fds that exist in this fresh child.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            const HIGH: RawFd = 1000;
            let null_high = libc::fcntl(devnull_fd, libc::F_DUPFD, HIGH);
            let mut highs = [0 as RawFd; 16];
            for (i, &(src, _, _)) in fds.iter().enumerate() {
                highs[i] = libc::fcntl(src, libc::F_DUPFD, HIGH);
            }
            libc::syscall(libc::SYS_close_range, 0u32, (HIGH - 1) as u32, 0u32);
            for fd in 0..3 {
                libc::dup2(null_high, fd);
            }
            for (i, &(_, dst, cloexec)) in fds.iter().enumerate() {
                libc::dup3(highs[i], dst, if cloexec { libc::O_CLOEXEC } else { 0 });
            }
            libc::syscall(libc::SYS_close_range, HIGH as u32, u32::MAX, 0u32);
        }
        // A panic must never unwind into the test harness's code in the child.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            setup();
            page.word(0).store(1, Ordering::SeqCst);
            body();
        }));
        // SAFETY: leaves the child without running any of the parent's destructors.
        unsafe { libc::_exit(101) };
    }
    drop(devnull);
    let child = Child { pid, reaped: false };
    assert!(
        wait_until(|| page.ready()),
        "child {pid} never became ready"
    );
    child
}

/// Polls `cond` every millisecond for up to 10 s.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// Anonymous private memory of `pages` pages owned by the test (unmapped on drop).
pub struct Region {
    pub addr: u64,
    pub len: usize,
}

impl Region {
    pub fn new(pages: usize, shared: bool) -> Region {
        let len = pages * crate::arch::page_size() as usize;
        let flags = libc::MAP_ANONYMOUS
            | if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Region {
            addr: p as u64,
            len,
        }
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is live, readable and writable, and owned by this Region.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    pub fn protect(&self, prot: i32) {
        // SAFETY: changes protection of our own mapping only.
        assert_eq!(
            unsafe { libc::mprotect(self.addr as *mut _, self.len, prot) },
            0
        );
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in new().
        unsafe { libc::munmap(self.addr as *mut _, self.len) };
    }
}

/// A pseudo-random, never all-zero page pattern: page `i` of a region seeded with `seed`.
pub fn pattern_page(seed: u64, i: usize, page_size: usize) -> Vec<u8> {
    let mut x = seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(page_size);
    while out.len() < page_size {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_ne_bytes());
    }
    out[0] |= 1;
    out.truncate(page_size);
    out
}

/// The shared page the signal-counting handler writes to (set in the child before the handler
/// is installed).
static HANDLER_PAGE: AtomicU64 = AtomicU64::new(0);
/// Word of the shared page where signal `sig`'s count lives.
const COUNT_BASE: usize = 64;

extern "C" fn count_signal(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let page = HANDLER_PAGE.load(Ordering::SeqCst) as *const AtomicU64;
    if !page.is_null() && (1..=64).contains(&sig) {
        // SAFETY: HANDLER_PAGE points at a live SharedPage of at least 4096 bytes (512 words),
        // and COUNT_BASE + 64 < 512; atomics are async-signal-safe.
        unsafe { (*page.add(COUNT_BASE + sig as usize)).fetch_add(1, Ordering::SeqCst) };
    }
}

/// The handler address [`count_signals`] installs.
pub fn counting_handler() -> u64 {
    count_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
        as u64
}

/// In a child: handle `sig` by counting it in `page` (see [`signal_count`]), with `flags`
/// (SA_SIGINFO, SA_ONSTACK, ...) and `mask` blocked while the handler runs.
pub fn count_signals(page: &SharedPage, sig: i32, flags: i32, mask: &[i32]) {
    HANDLER_PAGE.store(page.addr(), Ordering::SeqCst);
    // SAFETY: sigaction with a valid handler and a local sigaction; async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = counting_handler() as usize;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        for &m in mask {
            libc::sigaddset(&mut sa.sa_mask, m);
        }
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// How often the child's counting handler ran for `sig`.
pub fn signal_count(page: &SharedPage, sig: i32) -> u64 {
    page.word(COUNT_BASE + sig as usize).load(Ordering::SeqCst)
}

/// A body for [`spawn_with`]: pause forever (handlers run in between).
pub fn pause_forever() -> std::convert::Infallible {
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
