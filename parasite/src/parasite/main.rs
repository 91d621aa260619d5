//! The parasite: freestanding code that crest maps into a stopped thread of the process being
//! dumped (through a memfd shared with crest) and runs there, to read the state that only the
//! process itself can report: signal dispositions, the alternate signal stack, interval and
//! POSIX timers, the clear-child-tid address, the robust futex list, personality and a few
//! prctl flags.
//!
//! crest runs `PARASITE_CMD_COLLECT` once, in the leader, for the process-wide state and the
//! leader's own, then `PARASITE_CMD_COLLECT_THREAD` in each other thread, one at a time, on the
//! same stack inside the mapping.
//!
//! One run carries out one command (`ParasiteArgs::cmd`), writes the results into the same
//! `ParasiteArgs` (shared memory crest reads), and stops on a breakpoint. crest runs it with every
//! signal but SIGTRAP blocked and puts the thread's registers, signal mask and memory back
//! afterwards, so nothing here needs to undo anything: every call only reads.
//!
//! No libc, no TLS, no formatting, no unwinding; the only memory it touches is its own mapping.

#![no_std]
#![no_main]

#[path = "../abi.rs"]
#[allow(dead_code)]
mod abi;

// The raw syscall shims are the restorer's: same instructions, same kernel ABI. (The restorer's
// sigreturn, thread-area helper and syscall gadget come along unused; --gc-sections drops them.)
#[cfg_attr(target_arch = "x86_64", path = "../restorer/arch_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "../restorer/arch_aarch64.rs")]
#[allow(dead_code)]
mod shims;

#[cfg_attr(target_arch = "x86_64", path = "arch_x86_64.rs")]
#[cfg_attr(target_arch = "aarch64", path = "arch_aarch64.rs")]
mod arch;

use abi::*;
use arch::nr;
use core::ptr;

/// The kernel's sigset size, which rt_sigaction insists on.
const SIGSET_SIZE: usize = 8;
const EINVAL: i32 = 22;

/// prctl options (include/uapi/linux/prctl.h).
const PR_GET_PDEATHSIG: usize = 2;
const PR_GET_DUMPABLE: usize = 3;
const PR_GET_CHILD_SUBREAPER: usize = 37;
const PR_GET_NO_NEW_PRIVS: usize = 39;
const PR_GET_TID_ADDRESS: usize = 40;
const PR_GET_NAME: usize = 16;
const PR_GET_SECUREBITS: usize = 27;
const PR_GET_TSC: usize = 25;
const PR_GET_TIMERSLACK: usize = 30;
const PR_MCE_KILL_GET: usize = 34;
const PR_GET_THP_DISABLE: usize = 42;
const PR_GET_SPECULATION_CTRL: usize = 52;
const PR_GET_TAGGED_ADDR_CTRL: usize = 56;
const PR_GET_MDWE: usize = 66;
const PR_GET_MEMORY_MERGE: usize = 68;
/// membarrier(2) command listing the registrations of the process (Linux 6.3+).
const MEMBARRIER_CMD_GET_REGISTRATIONS: usize = 1 << 9;
/// personality(0xffffffff) only queries (kernel/exec_domain.c).
const PERSONALITY_QUERY: usize = 0xffff_ffff;

/// The kernel returns -4095..-1 for errors.
fn check(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// Remembers the first failing call; later calls still run, so one broken field does not hide
/// the others from a debugging crest.
struct Report<'a> {
    args: &'a mut ParasiteArgs,
}

impl Report<'_> {
    fn failed(&mut self, call: u32, arg: u32, errno: i32) {
        if self.args.error == 0 {
            self.args.error = errno;
            self.args.failed_call = call;
            self.args.failed_arg = arg;
        }
    }

    /// `Some(value)` of a successful call, `None` after recording its failure.
    fn call(&mut self, call: u32, arg: u32, ret: isize) -> Option<usize> {
        match check(ret) {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed(call, arg, e);
                None
            }
        }
    }
}

/// The entry point: crest sets the instruction pointer here, the stack pointer to the top of the
/// stack inside the parasite's mapping (as after a call) and the first argument to the args.
#[no_mangle]
pub extern "C" fn parasite_main(args: *mut ParasiteArgs) -> ! {
    // SAFETY: crest passes a pointer to a ParasiteArgs inside the parasite's own mapping, which
    // stays mapped while the parasite runs, and does not touch it until the parasite stops: this
    // is the only reference to it.
    let a = unsafe { &mut *args };
    let mut report = Report { args: a };
    if report.args.magic != PARASITE_MAGIC || report.args.abi_version != ABI_VERSION {
        report.failed(PARASITE_CALL_ARGS, 0, -EINVAL);
    } else {
        match report.args.cmd {
            PARASITE_CMD_COLLECT => collect(&mut report),
            PARASITE_CMD_COLLECT_THREAD => thread_fields(&mut report),
            PARASITE_CMD_PING => {}
            _ => report.failed(PARASITE_CALL_ARGS, report.args.cmd, -EINVAL),
        }
    }
    // SAFETY: `done` is a field of the live args; volatile so the store is not elided or moved
    // before the results (crest reads it from its own mapping of the same memory).
    unsafe { ptr::write_volatile(ptr::addr_of_mut!(report.args.done), 1) };
    arch::trap()
}

/// Process-wide state plus the running thread's own.
fn collect(r: &mut Report) {
    sigactions(r);
    itimers(r);
    timers(r);
    process_fields(r);
    thread_fields(r);
}

/// What belongs to the running thread alone: its alternate signal stack, clear-child-tid
/// address, robust futex list and name (each call reports the calling thread's).
fn thread_fields(r: &mut Report) {
    altstack(r);
    tid_address(r);
    robust_list(r);
    name(r);
    securebits(r);
    thread_settings(r);
}

fn securebits(r: &mut Report) {
    // SAFETY: PR_GET_SECUREBITS returns the calling thread's bits and touches no memory.
    let ret = unsafe { shims::syscall5(nr::PRCTL, PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if let Some(v) = r.call(PARASITE_CALL_SECUREBITS, 0, ret) {
        r.args.state.securebits = v as u64;
    }
}

/// A prctl that only reads and touches no memory: its raw result, a negative errno included
/// (a kernel without the option says EINVAL, which crest judges, not the parasite).
fn prctl_value(option: usize, arg2: usize) -> i64 {
    // SAFETY: every option passed here only returns a value and reads no pointer.
    (unsafe { shims::syscall5(nr::PRCTL, option, arg2, 0, 0, 0) }) as i64
}

/// Per-thread settings that only the thread can read: TSC access, machine-check kill policy,
/// speculation controls, tagged-address control, timer slack.
fn thread_settings(r: &mut Report) {
    let mut tsc: i32 = 0;
    // SAFETY: PR_GET_TSC stores one int at arg2.
    let ret = unsafe {
        shims::syscall5(
            nr::PRCTL,
            PR_GET_TSC,
            ptr::addr_of_mut!(tsc) as usize,
            0,
            0,
            0,
        )
    };
    r.args.state.tsc = if ret < 0 { ret as i64 } else { tsc as i64 };
    r.args.state.mce_kill = prctl_value(PR_MCE_KILL_GET, 0);
    for which in 0..3usize {
        r.args.state.speculation[which] = prctl_value(PR_GET_SPECULATION_CTRL, which);
    }
    r.args.state.tagged_addr = prctl_value(PR_GET_TAGGED_ADDR_CTRL, 0);
    r.args.state.timerslack = prctl_value(PR_GET_TIMERSLACK, 0);
}

fn name(r: &mut Report) {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME stores the thread's comm, at most 16 bytes with the NUL, at arg2.
    let ret = unsafe {
        shims::syscall5(
            nr::PRCTL,
            PR_GET_NAME,
            ptr::addr_of_mut!(name) as usize,
            0,
            0,
            0,
        )
    };
    if r.call(PARASITE_CALL_NAME, 0, ret).is_some() {
        r.args.state.name = name;
    }
}

fn sigactions(r: &mut Report) {
    for sig in 1..=64usize {
        let mut old = KernelSigaction::default();
        // SAFETY: no new action is installed (act = NULL); the kernel writes one struct
        // sigaction into `old`, a local of exactly that layout. SIGKILL and SIGSTOP report their
        // (default) disposition like any other signal.
        let ret = unsafe {
            shims::syscall4(
                nr::RT_SIGACTION,
                sig,
                0,
                ptr::addr_of_mut!(old) as usize,
                SIGSET_SIZE,
            )
        };
        if r.call(PARASITE_CALL_SIGACTION, sig as u32, ret).is_some() {
            r.args.state.sigactions[sig - 1] = old;
        }
    }
}

fn altstack(r: &mut Report) {
    let mut old = StackT::default();
    // SAFETY: ss = NULL only queries; the kernel writes one stack_t into `old`.
    let ret = unsafe { shims::syscall2(nr::SIGALTSTACK, 0, ptr::addr_of_mut!(old) as usize) };
    if r.call(PARASITE_CALL_SIGALTSTACK, 0, ret).is_some() {
        r.args.state.altstack = old;
    }
}

fn itimers(r: &mut Report) {
    for which in 0..3usize {
        let mut value = ITimerVal::default();
        // SAFETY: the kernel writes one struct itimerval into `value`.
        let ret =
            unsafe { shims::syscall2(nr::GETITIMER, which, ptr::addr_of_mut!(value) as usize) };
        if r.call(PARASITE_CALL_GETITIMER, which as u32, ret).is_some() {
            r.args.state.itimers[which] = value;
        }
    }
}

fn timers(r: &mut Report) {
    let n = r.args.nr_timer_ids as usize;
    if n > MAX_POSIX_TIMERS {
        r.failed(PARASITE_CALL_ARGS, r.args.nr_timer_ids, -EINVAL);
        return;
    }
    for i in 0..n {
        let id = r.args.timer_ids[i] as isize as usize;
        let mut t = TimerState::default();
        // SAFETY: the kernel writes one struct itimerspec into the local `t.spec`.
        let ret =
            unsafe { shims::syscall2(nr::TIMER_GETTIME, id, ptr::addr_of_mut!(t.spec) as usize) };
        match check(ret) {
            Ok(_) => {
                // SAFETY: timer_getoverrun takes only the id.
                let ret = unsafe { shims::syscall1(nr::TIMER_GETOVERRUN, id) };
                match check(ret) {
                    Ok(v) => t.overrun = v as i32,
                    Err(e) => t.error = e,
                }
            }
            Err(e) => t.error = e,
        }
        if t.error != 0 {
            r.failed(PARASITE_CALL_TIMER, i as u32, t.error);
        }
        r.args.state.timers[i] = t;
    }
}

fn tid_address(r: &mut Report) {
    let mut tid_address: u64 = 0;
    // SAFETY: PR_GET_TID_ADDRESS stores one pointer (the clear_child_tid address) at arg2.
    let ret = unsafe {
        shims::syscall5(
            nr::PRCTL,
            PR_GET_TID_ADDRESS,
            ptr::addr_of_mut!(tid_address) as usize,
            0,
            0,
            0,
        )
    };
    if r.call(PARASITE_CALL_TID_ADDRESS, 0, ret).is_some() {
        r.args.state.clear_child_tid = tid_address;
    }
}

fn robust_list(r: &mut Report) {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: pid 0 is the calling thread; the kernel stores one pointer at head_ptr and one
    // size_t at len_ptr.
    let ret = unsafe {
        shims::syscall3(
            nr::GET_ROBUST_LIST,
            0,
            ptr::addr_of_mut!(head) as usize,
            ptr::addr_of_mut!(len) as usize,
        )
    };
    if r.call(PARASITE_CALL_ROBUST_LIST, 0, ret).is_some() {
        r.args.state.robust_list = head;
        r.args.state.robust_list_len = len;
    }
}

fn process_fields(r: &mut Report) {
    // SAFETY: 0xffffffff only returns the current persona.
    let ret = unsafe { shims::syscall1(nr::PERSONALITY, PERSONALITY_QUERY) };
    if let Some(v) = r.call(PARASITE_CALL_PERSONALITY, 0, ret) {
        r.args.state.personality = v as u64;
    }

    let mut pdeath: i32 = 0;
    // SAFETY: PR_GET_PDEATHSIG stores one int at arg2.
    let ret = unsafe {
        shims::syscall5(
            nr::PRCTL,
            PR_GET_PDEATHSIG,
            ptr::addr_of_mut!(pdeath) as usize,
            0,
            0,
            0,
        )
    };
    if r.call(PARASITE_CALL_PDEATHSIG, 0, ret).is_some() {
        r.args.state.pdeath_signal = pdeath as u32 as u64;
    }

    // SAFETY: PR_GET_DUMPABLE returns the value and touches no memory.
    let ret = unsafe { shims::syscall5(nr::PRCTL, PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if let Some(v) = r.call(PARASITE_CALL_DUMPABLE, 0, ret) {
        r.args.state.dumpable = v as u64;
    }

    // SAFETY: PR_GET_NO_NEW_PRIVS returns the value; the kernel insists the other arguments be 0.
    let ret = unsafe { shims::syscall5(nr::PRCTL, PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    if let Some(v) = r.call(PARASITE_CALL_NO_NEW_PRIVS, 0, ret) {
        r.args.state.no_new_privs = v as u64;
    }

    let mut subreaper: i32 = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER stores one int at arg2.
    let ret = unsafe {
        shims::syscall5(
            nr::PRCTL,
            PR_GET_CHILD_SUBREAPER,
            ptr::addr_of_mut!(subreaper) as usize,
            0,
            0,
            0,
        )
    };
    if r.call(PARASITE_CALL_CHILD_SUBREAPER, 0, ret).is_some() {
        r.args.state.child_subreaper = subreaper as u32 as u64;
    }

    r.args.state.thp_disable = prctl_value(PR_GET_THP_DISABLE, 0);
    r.args.state.mdwe = prctl_value(PR_GET_MDWE, 0);
    r.args.state.memory_merge = prctl_value(PR_GET_MEMORY_MERGE, 0);
    // SAFETY: GET_REGISTRATIONS takes flags 0 and cpu_id 0 and touches no memory.
    r.args.state.membarrier =
        (unsafe { shims::syscall3(nr::MEMBARRIER, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0) })
            as i64;
}

/// Nothing here can panic short of a bug; crest then finds `done == 0` at the breakpoint.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    arch::trap()
}
