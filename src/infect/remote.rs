//! Running code in a seized, stopped thread: single syscalls through a stub placed over the
//! first bytes of an executable mapping, and calls into the parasite; then putting the thread
//! back exactly as it was.
//!
//! Everything the thread runs for crest runs with every signal but SIGTRAP blocked
//! (PTRACE_SETSIGMASK), so no handler of the program can run in the middle and no signal is
//! lost: a signal that arrives stays pending until the cure restores the mask. The only stops
//! crest can see are then the trap it placed, a fault in code it runs (a synchronous SIGSEGV,
//! SIGBUS, ... forces its way through the mask), or SIGSTOP (which cannot be blocked; crest
//! keeps it aside and sends it again after the cure).

use crate::arch::infect as arch;
use crate::arch::regs;
use crate::images::ArchRegs;
use crate::ptrace::{self, Stop};

use super::InfectError;

/// Bytes of the stub area: the syscall stub, then room for a short string argument (the
/// memfd's name) that remote syscalls can point at.
pub const STUB_AREA: usize = 24;
const STUB_WORDS: usize = STUB_AREA / 8;
/// Offset of the string slot in the stub area.
pub const STUB_STRING_OFFSET: u64 = 8;

/// A seized, stopped thread that crest runs code in. It remembers what it changed
/// (registers, signal mask, stub bytes) so [`RemoteThread::restore`] can put it all back.
#[derive(Debug)]
pub struct RemoteThread {
    pub pid: i32,
    pub tid: i32,
    /// Registers (general and extended) as found at the seize.
    saved_regs: ArchRegs,
    /// The general registers as found, the base every call starts from.
    saved_gprs: Vec<u64>,
    saved_mask: u64,
    /// Address of the stub area, and its original bytes.
    stub: u64,
    stub_orig: [u64; STUB_WORDS],
    stub_placed: bool,
    mask_set: bool,
    /// The thread has exited or was killed: nothing can (or needs to) be put back.
    gone: bool,
    /// The thread was left running (a failed wait): nothing can be put back either.
    lost: bool,
    /// A SIGSTOP arrived while crest ran code in the thread; it is sent again after the cure.
    deferred_stop: bool,
    /// Remote syscalls run so far.
    syscalls: u32,
}

/// What [`RemoteThread::run_to_trap`] expects the thread to stop on.
#[derive(Debug, Clone, Copy)]
enum Trap {
    /// The stub's trap after its syscall.
    Stub,
    /// A trap instruction anywhere in `[start, end)` (the parasite's code).
    InRange { start: u64, end: u64 },
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks_exact(8)")))
}

impl RemoteThread {
    /// Saves the thread's registers, signal mask and the stub area's bytes at `stub`. Changes
    /// nothing yet.
    pub fn attach(pid: i32, tid: i32, stub: u64) -> Result<RemoteThread, InfectError> {
        let mut thread = RemoteThread::attach_bare(pid, tid)?;
        for (i, w) in thread.stub_orig.iter_mut().enumerate() {
            let addr = stub + 8 * i as u64;
            *w = ptrace::peek_word(tid, addr).map_err(|err| {
                InfectError::ptrace(pid, tid, "saving the code bytes under the stub", err)
            })?;
        }
        thread.stub = stub;
        Ok(thread)
    }

    /// Saves the thread's registers and signal mask, for [`call`](Self::call)s only: a thread
    /// attached like this has no syscall stub (the parasite's code is already mapped by another
    /// thread of the process). Changes nothing yet.
    pub fn attach_bare(pid: i32, tid: i32) -> Result<RemoteThread, InfectError> {
        let saved_regs = regs::capture(tid).map_err(|err| InfectError::Regs { pid, tid, err })?;
        let saved_gprs = regs::general(&saved_regs)
            .map_err(|err| InfectError::Arch { pid, tid, err })?
            .to_vec();
        let saved_mask = ptrace::get_sigmask(tid)
            .map_err(|err| InfectError::ptrace(pid, tid, "reading the signal mask", err))?;
        Ok(RemoteThread {
            pid,
            tid,
            saved_regs,
            saved_gprs,
            saved_mask,
            stub: 0,
            stub_orig: [0; STUB_WORDS],
            stub_placed: false,
            mask_set: false,
            gone: false,
            lost: false,
            deferred_stop: false,
            syscalls: 0,
        })
    }

    /// Blocks every signal but SIGTRAP (the trap crest stops the code on), so no handler of
    /// the program runs in the middle of crest's code and no signal is consumed.
    pub fn block_signals(&mut self) -> Result<(), InfectError> {
        let (pid, tid) = (self.pid, self.tid);
        ptrace::set_sigmask(tid, !(1u64 << (libc::SIGTRAP - 1)))
            .map_err(|err| InfectError::ptrace(pid, tid, "blocking signals", err))?;
        self.mask_set = true;
        Ok(())
    }

    /// Blocks every signal but SIGTRAP and writes the syscall stub and `string` (NUL-padded,
    /// at most STUB_AREA - 8 - 1 bytes) over the stub area.
    pub fn place_stub(&mut self, string: &[u8]) -> Result<(), InfectError> {
        let (pid, tid) = (self.pid, self.tid);
        assert!(string.len() < STUB_AREA - STUB_STRING_OFFSET as usize);
        if self.stub == 0 {
            return Err(InfectError::NotReady {
                pid,
                tid,
                what: "placing the syscall stub (the thread was attached without one)",
            });
        }
        self.block_signals()?;
        let mut area = [0u8; STUB_AREA];
        area[..arch::SYSCALL_STUB.len()].copy_from_slice(&arch::SYSCALL_STUB);
        let at = STUB_STRING_OFFSET as usize;
        area[at..at + string.len()].copy_from_slice(string);
        // From the first word on the bytes differ: restore() must put them back.
        self.stub_placed = true;
        for (i, w) in words(&area).enumerate() {
            ptrace::poke_word(tid, self.stub + 8 * i as u64, w)
                .map_err(|err| InfectError::ptrace(pid, tid, "placing the syscall stub", err))?;
        }
        Ok(())
    }

    /// Address of the string slot written by [`place_stub`](Self::place_stub).
    pub fn string_addr(&self) -> u64 {
        self.stub + STUB_STRING_OFFSET
    }

    /// Remote syscalls run so far (the n of the `remote-syscall-<n>` fault step).
    pub fn syscalls(&self) -> u32 {
        self.syscalls
    }

    /// Whether the thread can still be put back (it exists and is in a ptrace stop).
    pub fn usable(&self) -> bool {
        !self.gone && !self.lost
    }

    /// Runs syscall `nr` in the thread and returns its raw result (negative errno on failure).
    pub fn syscall(
        &mut self,
        name: &'static str,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64, InfectError> {
        let (pid, tid) = (self.pid, self.tid);
        if !self.stub_placed {
            return Err(InfectError::NotReady {
                pid,
                tid,
                what: name,
            });
        }
        let mut gpr = self.saved_gprs.clone();
        arch::set_syscall(&mut gpr, self.stub, nr, args).map_err(|err| InfectError::Arch {
            pid,
            tid,
            err,
        })?;
        regs::write_gprs(tid, &gpr).map_err(|err| InfectError::Regs { pid, tid, err })?;
        let out = self.run_to_trap(Trap::Stub, name)?;
        self.syscalls += 1;
        crate::info!(2, "thread {tid}: remote {name} #{}", self.syscalls);
        arch::syscall_result(&out).map_err(|err| InfectError::Arch { pid, tid, err })
    }

    /// Calls `entry(arg)` on the stack below `stack_top` and waits until the code stops on a
    /// trap instruction inside `[code_start, code_end)`. Signals must be blocked first
    /// ([`block_signals`](Self::block_signals) or [`place_stub`](Self::place_stub)).
    pub fn call(
        &mut self,
        what: &'static str,
        entry: u64,
        stack_top: u64,
        arg: u64,
        code: (u64, u64),
    ) -> Result<(), InfectError> {
        let (pid, tid) = (self.pid, self.tid);
        if !self.mask_set {
            return Err(InfectError::NotReady { pid, tid, what });
        }
        let mut gpr = self.saved_gprs.clone();
        arch::set_call(&mut gpr, entry, stack_top, arg).map_err(|err| InfectError::Arch {
            pid,
            tid,
            err,
        })?;
        regs::write_gprs(tid, &gpr).map_err(|err| InfectError::Regs { pid, tid, err })?;
        self.run_to_trap(
            Trap::InRange {
                start: code.0,
                end: code.1,
            },
            what,
        )?;
        Ok(())
    }

    /// Resumes the thread and waits for the expected trap; returns the general registers at it.
    fn run_to_trap(&mut self, trap: Trap, what: &'static str) -> Result<Vec<u64>, InfectError> {
        let (pid, tid) = (self.pid, self.tid);
        ptrace::cont(tid, 0).map_err(|err| InfectError::ptrace(pid, tid, what, err))?;
        loop {
            let stop = match ptrace::wait_stop(tid) {
                Ok(stop) => stop,
                Err(err) => {
                    // Without a stop crest cannot touch the thread again.
                    self.lost = true;
                    return Err(InfectError::ptrace(pid, tid, what, err));
                }
            };
            match stop {
                Stop::Event {
                    event: ptrace::PTRACE_EVENT_STOP,
                    sig: libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU,
                } => {
                    // The process was in a group stop when seized: resumed by crest, the
                    // thread first re-traps into that stop; resume it past it (the kernel
                    // stops the process again when crest detaches).
                    ptrace::cont(tid, 0).map_err(|err| InfectError::ptrace(pid, tid, what, err))?;
                }
                Stop::Signal(libc::SIGSTOP) => {
                    // Someone stopped the process meanwhile: keep the stop for after the cure
                    // (delivering it now would leave the thread in a group stop, running crest's
                    // code once continued).
                    self.deferred_stop = true;
                    ptrace::cont(tid, 0).map_err(|err| InfectError::ptrace(pid, tid, what, err))?;
                }
                Stop::Signal(sig) => {
                    let info = ptrace::get_siginfo(tid)
                        .map_err(|err| InfectError::ptrace(pid, tid, what, err))?;
                    let gpr =
                        regs::read_gprs(tid).map_err(|err| InfectError::Regs { pid, tid, err })?;
                    let ip = arch::ip(&gpr).map_err(|err| InfectError::Arch { pid, tid, err })?;
                    let at = arch::trap_address(ip);
                    let ours = sig == libc::SIGTRAP
                        && info.code() == arch::TRAP_SI_CODE
                        && match trap {
                            Trap::Stub => at == self.stub + arch::STUB_TRAP_OFFSET,
                            Trap::InRange { start, end } => at >= start && at < end,
                        };
                    if ours {
                        return Ok(gpr);
                    }
                    // The signal is not delivered: resuming from this stop later (to cure)
                    // discards it, which is right for a fault in crest's code; a SIGTRAP the
                    // program had pending was refused before infecting.
                    return Err(InfectError::Fault {
                        pid,
                        tid,
                        what,
                        sig,
                        code: info.code(),
                        ip,
                        addr: info.addr(),
                    });
                }
                stop @ (Stop::Exited(_) | Stop::Killed(_)) => {
                    self.gone = true;
                    return Err(InfectError::Gone {
                        pid,
                        tid,
                        what,
                        how: format!("{stop:?}"),
                    });
                }
                other => {
                    return Err(InfectError::UnexpectedStop {
                        pid,
                        tid,
                        what,
                        stop: format!("{other:?}"),
                    })
                }
            }
        }
    }

    /// Puts back the stub bytes, the registers (general and extended) and the signal mask, and
    /// re-sends a SIGSTOP that arrived meanwhile. Tries every step and returns the first error.
    ///
    /// The thread is in a ptrace stop inside the kernel's signal delivery (the interrupt stop or
    /// a trap's signal-delivery stop), so once resumed the kernel applies the syscall-restart
    /// rules to the registers put back here: a thread that was stopped in a restartable syscall
    /// (orig_rax >= 0, rax = -ERESTART*) re-enters it as if crest had never been there.
    pub fn restore(&mut self) -> Result<(), InfectError> {
        let (pid, tid) = (self.pid, self.tid);
        if !self.usable() {
            return Ok(());
        }
        let mut first: Option<InfectError> = None;
        if self.stub_placed {
            for (i, &w) in self.stub_orig.iter().enumerate() {
                if let Err(err) = ptrace::poke_word(tid, self.stub + 8 * i as u64, w) {
                    first.get_or_insert(InfectError::ptrace(
                        pid,
                        tid,
                        "restoring the code bytes under the stub",
                        err,
                    ));
                }
            }
            // Read back: a code byte left wrong would crash the program much later.
            for (i, &w) in self.stub_orig.iter().enumerate() {
                let addr = self.stub + 8 * i as u64;
                match ptrace::peek_word(tid, addr) {
                    Ok(now) if now == w => {}
                    Ok(now) => {
                        first.get_or_insert(InfectError::CodeNotRestored {
                            pid,
                            tid,
                            addr,
                            expected: w,
                            found: now,
                        });
                    }
                    Err(err) => {
                        first.get_or_insert(InfectError::ptrace(
                            pid,
                            tid,
                            "checking the restored code bytes",
                            err,
                        ));
                    }
                }
            }
            if first.is_none() {
                self.stub_placed = false;
            }
        }
        if let Err(err) = regs::restore(tid, &self.saved_regs) {
            first.get_or_insert(InfectError::Regs { pid, tid, err });
        }
        if self.mask_set {
            match ptrace::set_sigmask(tid, self.saved_mask) {
                Ok(()) => self.mask_set = false,
                Err(err) => {
                    first.get_or_insert(InfectError::ptrace(
                        pid,
                        tid,
                        "restoring the signal mask",
                        err,
                    ));
                }
            }
        }
        if self.deferred_stop {
            // SAFETY: tgkill has no memory effects; the thread is ours (traced, stopped).
            let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGSTOP) };
            if r == 0 {
                self.deferred_stop = false;
            } else {
                first.get_or_insert(InfectError::Resend {
                    pid,
                    tid,
                    errno: nix::errno::Errno::last(),
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The original bytes of the stub area (for tests and verification).
    pub fn original_stub_bytes(&self) -> Vec<u8> {
        self.stub_orig
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    /// The stub area's address.
    pub fn stub_addr(&self) -> u64 {
        self.stub
    }
}
