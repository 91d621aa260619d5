//! Test helpers: forked child processes that the tests own, kill by pid and always reap.
//!
//! The child is forked from the (multi-threaded) test binary, so after fork it only calls
//! async-signal-safe functions and never allocates: its fd layout and body are prepared
//! before the fork. (The multi-threaded children of [`spawn_threads`] start pthreads, which
//! glibc allows in such a child; see there.)
//!
//! Most helpers serve tests that dump, which exist on x86_64 only so far.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

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
        // SAFETY: (whole block) raw fd syscalls on fds that exist in this fresh child.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            crate::sys::give_up_controlling_terminal();
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

// ------------------------------------------------------------------------------------------
// Multi-threaded children: glibc pthreads started in the forked child, each doing one kind of
// `Work` forever and reporting through its slot of the shared page what it set up (tid, signal
// mask, altstack, clear-child-tid address, robust list, thread pointer, rseq area) and how it
// is doing (a progress counter, a count of self-check failures, SIGUSR2 deliveries).
//
// glibc makes pthread_create and malloc usable in the child of a multi-threaded fork (it resets
// its locks and thread list at fork), and the thread bodies use libc calls only.
// ------------------------------------------------------------------------------------------

/// What one thread of a [`spawn_threads`] child does, over and over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// pthread_cond_timedwait for 20 ms on a condvar nobody signals (a timed futex wait).
    TimedWait,
    /// nanosleep for 20 ms.
    Sleep,
    /// Spins under a mutex shared with the other busy threads.
    Busy,
    /// Like Sleep, on its own sigaltstack and with extra signals blocked.
    AltStack,
    /// pthread_cond_wait without timeout, woken by the Waker thread.
    CondWait,
    /// Every 2 ms, wakes the CondWait threads.
    Waker,
    /// sched_getcpu (glibc reads the rseq area) then a 200 us sleep.
    GetCpu,
    /// pause(), until a signal.
    Pause,
    /// FUTEX_WAIT without timeout on a word nobody wakes, until a signal.
    FutexForever,
    /// ppoll on no fds without timeout, until a signal.
    PollForever,
}

impl Work {
    const ALL: [Work; 10] = [
        Work::TimedWait,
        Work::Sleep,
        Work::Busy,
        Work::AltStack,
        Work::CondWait,
        Work::Waker,
        Work::GetCpu,
        Work::Pause,
        Work::FutexForever,
        Work::PollForever,
    ];

    fn code(self) -> u64 {
        Work::ALL.iter().position(|&w| w == self).expect("listed") as u64 + 1
    }

    fn from_code(code: u64) -> Option<Work> {
        Work::ALL.get((code as usize).checked_sub(1)?).copied()
    }
}

/// First word of the thread slots in the shared page, and the words per slot.
const SLOT_BASE: usize = 160;
const SLOT_WORDS: usize = 20;
/// Most threads a [`spawn_threads`] child can have (the slots must fit the page).
pub const MAX_THREADS: usize = 16;

/// Words of a thread's slot.
pub mod slot {
    pub const TID: usize = 0;
    pub const SIGMASK: usize = 1;
    pub const ALT_SP: usize = 2;
    pub const ALT_SIZE: usize = 3;
    pub const CLEAR_CHILD_TID: usize = 4;
    pub const ROBUST_HEAD: usize = 5;
    pub const ROBUST_LEN: usize = 6;
    /// pthread_self(): on x86_64 the thread pointer, i.e. fs_base.
    pub const SELF: usize = 7;
    pub const PROGRESS: usize = 8;
    /// Iterations where the thread's TLS value, signal mask or altstack was not as it set it.
    pub const FAILURES: usize = 9;
    pub const READY: usize = 10;
    /// SIGUSR2 deliveries to this thread.
    pub const SIGUSR2: usize = 11;
    pub const WORK: usize = 12;
    /// Where glibc registered the thread's rseq area (0 when glibc did not register one).
    pub const RSEQ: usize = 13;
}

/// The slot word `w` of thread `i`.
pub fn slot_word(page: &SharedPage, i: usize, w: usize) -> u64 {
    page.word(SLOT_BASE + i * SLOT_WORDS + w)
        .load(Ordering::SeqCst)
}

/// The child's copy of its shared page's address (set in the child before threads start).
static CHILD_PAGE: AtomicU64 = AtomicU64::new(0);

fn child_word(i: usize, w: usize) -> &'static AtomicU64 {
    let page = CHILD_PAGE.load(Ordering::SeqCst) as *const AtomicU64;
    // SAFETY: CHILD_PAGE points at the child's live SharedPage mapping (4096 bytes, 512 words)
    // for the child's whole life; slots end below word SLOT_BASE + MAX_THREADS * SLOT_WORDS
    // = 480.
    unsafe { &*page.add(SLOT_BASE + i * SLOT_WORDS + w) }
}

/// A pthread object in a static of the child.
struct PthreadCell<T>(std::cell::UnsafeCell<T>);
// SAFETY: only ever used through the pthread functions, which do their own synchronization.
unsafe impl<T> Sync for PthreadCell<T> {}

impl<T> PthreadCell<T> {
    fn get(&self) -> *mut T {
        self.0.get()
    }
}

static TIMED_LOCK: PthreadCell<libc::pthread_mutex_t> =
    PthreadCell(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
static TIMED_COND: PthreadCell<libc::pthread_cond_t> =
    PthreadCell(std::cell::UnsafeCell::new(libc::PTHREAD_COND_INITIALIZER));
static WAKE_LOCK: PthreadCell<libc::pthread_mutex_t> =
    PthreadCell(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
static WAKE_COND: PthreadCell<libc::pthread_cond_t> =
    PthreadCell(std::cell::UnsafeCell::new(libc::PTHREAD_COND_INITIALIZER));
static BUSY_LOCK: PthreadCell<libc::pthread_mutex_t> =
    PthreadCell(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
/// The word FutexForever threads wait on (it never changes).
static NEVER: AtomicU64 = AtomicU64::new(0);
/// Shared by the busy threads, under BUSY_LOCK.
static BUSY_SUM: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each thread stores a value of its own here and checks it on every iteration.
    static TLS_VALUE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

extern "C" {
    /// glibc 2.35+: offset of the rseq area from the thread pointer, and its size (0 when
    /// glibc registered none).
    static __rseq_offset: isize;
    static __rseq_size: libc::c_uint;
}

/// The signal mask a thread of kind `work` runs with.
fn thread_mask(work: Work) -> u64 {
    let bit = |s: i32| 1u64 << (s - 1);
    let mut mask = bit(libc::SIGUSR1);
    if work == Work::AltStack {
        mask |= bit(libc::SIGRTMIN() + 3) | bit(libc::SIGTTOU);
    }
    mask
}

fn set_mask(mask: u64) {
    // SAFETY: a raw rt_sigprocmask with an 8-byte kernel sigset on the stack.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

fn current_mask() -> u64 {
    let mut mask = 0u64;
    // SAFETY: a raw rt_sigprocmask that only reads the mask into a local.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut mask as *mut u64,
            8usize,
        )
    };
    mask
}

fn current_altstack() -> (u64, u64) {
    // SAFETY: sigaltstack only queries into a local.
    unsafe {
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        if ss.ss_flags & libc::SS_DISABLE != 0 {
            (0, 0)
        } else {
            (ss.ss_sp as u64, ss.ss_size as u64)
        }
    }
}

fn sleep_us(us: i64) {
    let ts = libc::timespec {
        tv_sec: us / 1_000_000,
        tv_nsec: (us % 1_000_000) * 1000,
    };
    // SAFETY: valid timespec; a null remainder pointer is allowed.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// One iteration of `work`.
fn work_once(work: Work) {
    // SAFETY: (whole block) pthread calls on the static, initialized mutexes and condvars of
    // this child; raw syscalls with valid (or null where allowed) arguments.
    unsafe {
        match work {
            Work::TimedWait => {
                let mut ts: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
                ts.tv_nsec += 20_000_000;
                if ts.tv_nsec >= 1_000_000_000 {
                    ts.tv_sec += 1;
                    ts.tv_nsec -= 1_000_000_000;
                }
                libc::pthread_mutex_lock(TIMED_LOCK.get());
                libc::pthread_cond_timedwait(TIMED_COND.get(), TIMED_LOCK.get(), &ts);
                libc::pthread_mutex_unlock(TIMED_LOCK.get());
            }
            // Long enough that a freeze finds a sleeper inside its sleep rather than just
            // woken, even on a loaded machine.
            Work::Sleep | Work::AltStack => sleep_us(20_000),
            Work::Busy => {
                libc::pthread_mutex_lock(BUSY_LOCK.get());
                for i in 0..20_000u64 {
                    BUSY_SUM.fetch_add(std::hint::black_box(i) & 1, Ordering::Relaxed);
                }
                libc::pthread_mutex_unlock(BUSY_LOCK.get());
            }
            Work::CondWait => {
                libc::pthread_mutex_lock(WAKE_LOCK.get());
                libc::pthread_cond_wait(WAKE_COND.get(), WAKE_LOCK.get());
                libc::pthread_mutex_unlock(WAKE_LOCK.get());
            }
            Work::Waker => {
                sleep_us(2000);
                libc::pthread_mutex_lock(WAKE_LOCK.get());
                libc::pthread_cond_broadcast(WAKE_COND.get());
                libc::pthread_mutex_unlock(WAKE_LOCK.get());
            }
            Work::GetCpu => {
                let cpu = libc::sched_getcpu();
                if cpu < 0 || cpu >= libc::sysconf(libc::_SC_NPROCESSORS_CONF) as i32 {
                    TLS_VALUE.with(|v| v.set(u64::MAX));
                }
                sleep_us(200);
            }
            Work::Pause => {
                libc::pause();
            }
            Work::FutexForever => {
                libc::syscall(
                    libc::SYS_futex,
                    NEVER.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0u32,
                    std::ptr::null::<libc::timespec>(),
                );
            }
            Work::PollForever => {
                libc::syscall(
                    libc::SYS_ppoll,
                    std::ptr::null_mut::<libc::pollfd>(),
                    0,
                    std::ptr::null::<libc::timespec>(),
                    std::ptr::null::<libc::sigset_t>(),
                );
            }
        }
    }
}

/// The name thread `i` of a [`spawn_threads`] child gives itself: `crest:w<i>` (a colon, as in
/// some JVM thread names), NUL-terminated.
pub fn thread_name(i: usize) -> [u8; 11] {
    let mut name = *b"crest:w00\0\0";
    name[7] = b'0' + (i / 10) as u8;
    name[8] = b'0' + (i % 10) as u8;
    name
}

extern "C" fn worker(arg: *mut libc::c_void) -> *mut libc::c_void {
    let i = arg as usize;
    let Some(work) = Work::from_code(child_word(i, slot::WORK).load(Ordering::SeqCst)) else {
        return std::ptr::null_mut();
    };
    let tls = 0x7e57_0000 + i as u64;
    TLS_VALUE.with(|v| v.set(tls));
    let name = thread_name(i);
    // SAFETY: a NUL-terminated name of at most 15 bytes for the calling thread.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr().cast()) };
    set_mask(thread_mask(work));
    if work == Work::AltStack {
        const ALT_SIZE: usize = 64 * 1024;
        // SAFETY: a fresh anonymous mapping for the stack, then sigaltstack on it.
        unsafe {
            let sp = libc::mmap(
                std::ptr::null_mut(),
                ALT_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            let ss = libc::stack_t {
                ss_sp: sp,
                ss_flags: 0,
                ss_size: ALT_SIZE,
            };
            libc::sigaltstack(&ss, std::ptr::null_mut());
        }
    }
    let w = |n| child_word(i, n);
    // SAFETY: (whole block) calls that only report the calling thread's own state into locals.
    unsafe {
        w(slot::TID).store(libc::gettid() as u64, Ordering::SeqCst);
        let mut ctid: u64 = 0;
        libc::prctl(libc::PR_GET_TID_ADDRESS, &mut ctid as *mut u64);
        w(slot::CLEAR_CHILD_TID).store(ctid, Ordering::SeqCst);
        let (mut head, mut len): (u64, usize) = (0, 0);
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut u64,
            &mut len as *mut usize,
        );
        w(slot::ROBUST_HEAD).store(head, Ordering::SeqCst);
        w(slot::ROBUST_LEN).store(len as u64, Ordering::SeqCst);
        let me = libc::pthread_self() as u64;
        w(slot::SELF).store(me, Ordering::SeqCst);
        let rseq = if __rseq_size > 0 {
            me.wrapping_add(__rseq_offset as u64)
        } else {
            0
        };
        w(slot::RSEQ).store(rseq, Ordering::SeqCst);
    }
    let mask = current_mask();
    let alt = current_altstack();
    w(slot::SIGMASK).store(mask, Ordering::SeqCst);
    w(slot::ALT_SP).store(alt.0, Ordering::SeqCst);
    w(slot::ALT_SIZE).store(alt.1, Ordering::SeqCst);
    w(slot::READY).store(1, Ordering::SeqCst);
    loop {
        work_once(work);
        if TLS_VALUE.with(|v| v.get()) != tls || current_mask() != mask || current_altstack() != alt
        {
            w(slot::FAILURES).fetch_add(1, Ordering::SeqCst);
            TLS_VALUE.with(|v| v.set(tls));
        }
        w(slot::PROGRESS).fetch_add(1, Ordering::SeqCst);
    }
}

extern "C" fn count_sigusr2(_: libc::c_int) {
    // SAFETY: gettid is async-signal-safe.
    let tid = unsafe { libc::gettid() } as u64;
    for i in 0..MAX_THREADS {
        if child_word(i, slot::TID).load(Ordering::SeqCst) == tid {
            child_word(i, slot::SIGUSR2).fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Forks a child whose leader runs `leader_setup`, then starts one pthread per entry of `works`
/// (slot i for works[i]) and waits until all have reported; the leader then loops like
/// [`spawn`]'s child (counter in word 1, 1 ms sleeps). SIGUSR2 is handled (SA_RESTART) by
/// counting it in the receiving thread's slot.
pub fn spawn_threads(page: &SharedPage, works: &[Work], leader_setup: impl FnOnce()) -> Child {
    spawn_threads_with(page, works, leader_setup, || loop {
        page.word(1).fetch_add(1, Ordering::SeqCst);
        sleep_us(1000);
    })
}

/// Like [`spawn_threads`], with the leader running `leader_body` once the threads are up.
pub fn spawn_threads_with(
    page: &SharedPage,
    works: &[Work],
    leader_setup: impl FnOnce(),
    leader_body: impl FnOnce() -> std::convert::Infallible,
) -> Child {
    assert!(works.len() <= MAX_THREADS);
    for (i, w) in works.iter().enumerate() {
        page.word(SLOT_BASE + i * SLOT_WORDS + slot::WORK)
            .store(w.code(), Ordering::SeqCst);
    }
    let addr = page.addr();
    let n = works.len();
    let setup = move || {
        CHILD_PAGE.store(addr, Ordering::SeqCst);
        leader_setup();
        // SAFETY: (whole block) sigaction with a valid handler; pthread_create with a valid
        // entry point whose argument is just the slot index.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = count_sigusr2 as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
            for i in 0..n {
                let mut t: libc::pthread_t = 0;
                if libc::pthread_create(&mut t, std::ptr::null(), worker, i as *mut libc::c_void)
                    != 0
                {
                    libc::_exit(102);
                }
                libc::pthread_detach(t);
            }
        }
        while (0..n).any(|i| child_word(i, slot::READY).load(Ordering::SeqCst) == 0) {
            sleep_us(100);
        }
    };
    spawn_with(&[], page, setup, leader_body)
}

/// The tids of a [`spawn_threads`] child's threads, by slot.
pub fn thread_tids(page: &SharedPage, n: usize) -> Vec<i32> {
    (0..n)
        .map(|i| slot_word(page, i, slot::TID) as i32)
        .collect()
}

/// Waits until every one of the first `n` threads has made `steps` more iterations than in
/// `since`; false on timeout.
pub fn threads_progress(page: &SharedPage, since: &[u64], steps: u64) -> bool {
    wait_until(|| {
        since
            .iter()
            .enumerate()
            .all(|(i, &s)| slot_word(page, i, slot::PROGRESS) >= s + steps)
    })
}

/// The progress counters of the first `n` threads.
pub fn progress(page: &SharedPage, n: usize) -> Vec<u64> {
    (0..n).map(|i| slot_word(page, i, slot::PROGRESS)).collect()
}

/// Seizes `tid` and waits for its interrupt stop. The calling thread becomes its tracer.
pub fn seize_and_stop(tid: i32) {
    crate::ptrace::seize(tid, nix::sys::ptrace::Options::empty()).unwrap();
    crate::ptrace::interrupt(tid).unwrap();
    wait_interrupt_stop(tid);
}

/// Waits for the interrupt stop of a seized `tid`, passing on any signal that stops it first.
pub fn wait_interrupt_stop(tid: i32) {
    use crate::ptrace::{self, Stop, PTRACE_EVENT_STOP};
    loop {
        match ptrace::wait_stop(tid).unwrap() {
            Stop::Event {
                event: PTRACE_EVENT_STOP,
                ..
            } => break,
            Stop::Signal(sig) => ptrace::cont(tid, sig).unwrap(),
            other => panic!("unexpected stop {other:?}"),
        }
    }
}
