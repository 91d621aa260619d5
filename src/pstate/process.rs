//! Process-wide settings: `oom_score_adj`, the audit login uid, PR_SET_THP_DISABLE, the
//! membarrier registrations; and the prctl flags every thread inherits from the leader
//! (PR_SET_TSC, PR_MCE_KILL, PR_SET_SPECULATION_CTRL).
//!
//! All of them belong to the task or its mm, which the morph keeps: the forked child sets
//! them before it jumps into the restorer, and checks each by reading it back.

use crate::images::{ProcessImage, ProcessSettings};
use crate::proc::Proc;

use super::{Raw, StateError};

const PR_SET_TSC: libc::c_int = 26;
const PR_GET_TSC: libc::c_int = 25;
const PR_MCE_KILL: libc::c_int = 33;
const PR_MCE_KILL_GET: libc::c_int = 34;
const PR_MCE_KILL_CLEAR: libc::c_ulong = 0;
const PR_MCE_KILL_SET: libc::c_ulong = 1;
const PR_MCE_KILL_DEFAULT: u32 = 2;
const PR_SET_THP_DISABLE: libc::c_int = 41;
const PR_GET_THP_DISABLE: libc::c_int = 42;
const PR_GET_SPECULATION_CTRL: libc::c_int = 52;
const PR_SET_SPECULATION_CTRL: libc::c_int = 53;
/// PR_SPEC_PRCTL: the control can be changed with prctl.
const PR_SPEC_PRCTL: u32 = 1;
/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3+).
const MEMBARRIER_CMD_GET_REGISTRATIONS: libc::c_int = 1 << 9;

/// The speculation controls, by PR_SPEC_* index.
pub const SPEC_NAMES: [&str; 3] = [
    "speculation control PR_SPEC_STORE_BYPASS",
    "speculation control PR_SPEC_INDIRECT_BRANCH",
    "speculation control PR_SPEC_L1D_FLUSH",
];

/// A raw value the parasite read, where "the kernel has no such control" (a negative errno)
/// reads as `absent`.
fn or_absent(v: i64, absent: u32) -> u32 {
    if v < 0 {
        absent
    } else {
        v as u32
    }
}

pub fn collect(proc: &Proc, raw: &Raw) -> Result<ProcessSettings, StateError> {
    let pid = proc.pid();
    let leader = raw.threads.first().copied().unwrap_or_default();
    if raw.process.thp_disable < 0 {
        return Err(StateError::Syscall {
            pid,
            tid: pid,
            call: "prctl(PR_GET_THP_DISABLE)",
            errno: nix::errno::Errno::from_raw(-raw.process.thp_disable as i32),
        });
    }
    if leader.mce_kill < 0 {
        return Err(StateError::Syscall {
            pid,
            tid: pid,
            call: "prctl(PR_MCE_KILL_GET)",
            errno: nix::errno::Errno::from_raw(-leader.mce_kill as i32),
        });
    }
    Ok(ProcessSettings {
        oom_score_adj: proc.oom_score_adj()?,
        loginuid: proc.loginuid()?,
        thp_disable: raw.process.thp_disable as u32,
        // Kernels before 6.3 cannot list the registrations (EINVAL): none can be recorded.
        membarrier: or_absent(raw.process.membarrier, 0),
        // Architectures without the control answer EINVAL.
        tsc: or_absent(leader.tsc, 0),
        mce_kill: leader.mce_kill as u32,
        // A control the kernel does not know (EINVAL) or the CPU lacks (ENODEV): none.
        speculation: leader.speculation.map(|v| or_absent(v, 0)),
    })
}

fn os(what: String) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn prctl_get(option: libc::c_int, arg2: libc::c_ulong) -> i64 {
    // SAFETY: the options used here only return a value and read no pointer.
    (unsafe { libc::prctl(option, arg2, 0, 0, 0) }) as i64
}

pub fn restore(p: &ProcessImage) -> Result<(), String> {
    let s = &p.task.settings;
    let pid = p.pid;
    oom_score_adj(pid, s.oom_score_adj)?;
    loginuid(pid, s.loginuid)?;
    thp_disable(pid, s.thp_disable)?;
    membarrier(pid, s.membarrier)?;
    tsc(pid, s.tsc)?;
    mce_kill(pid, s.mce_kill)?;
    for which in 0..3 {
        speculation(pid, which, s.speculation[which])?;
    }
    Ok(())
}

/// `/proc/self/oom_score_adj`. Lowering it below what crest runs with needs
/// CAP_SYS_RESOURCE; raising it needs nothing.
fn oom_score_adj(pid: i32, want: i32) -> Result<(), String> {
    let have = crate::proc::own_oom_score_adj()?;
    if have == want {
        return Ok(());
    }
    crate::proc::set_own_oom_score_adj(want).map_err(|e| {
        format!(
            "cannot set oom_score_adj of pid {pid} to {want} (the restored task inherited \
             {have} from crest; lowering it needs CAP_SYS_RESOURCE): {e}"
        )
    })?;
    let now = crate::proc::own_oom_score_adj()?;
    if now != want {
        return Err(format!(
            "oom_score_adj of pid {pid} reads {now} after setting it to {want}"
        ));
    }
    Ok(())
}

/// `/proc/self/loginuid`: set when it differs from what the task inherited from crest. The
/// kernel lets a task without a login uid take one; changing one needs CAP_AUDIT_CONTROL and
/// is impossible when the system made login uids immutable.
fn loginuid(pid: i32, want: u32) -> Result<(), String> {
    let have = crate::proc::own_loginuid()?;
    if have == want {
        return Ok(());
    }
    crate::proc::set_own_loginuid(want).map_err(|e| {
        format!(
            "cannot set the audit login uid of pid {pid} to {want} (the restored task \
             inherited {have} from crest; changing a set login uid needs CAP_AUDIT_CONTROL, \
             and no process can when login uids are immutable): {e}"
        )
    })?;
    let now = crate::proc::own_loginuid()?;
    if now != want {
        return Err(format!(
            "the audit login uid of pid {pid} reads {now} after setting it to {want}"
        ));
    }
    Ok(())
}

/// PR_SET_THP_DISABLE: bit 0 disables, and PR_THP_DISABLE_EXCEPT_ADVISED (bit 1) keeps
/// MADV_HUGEPAGE regions allowed. The flag lives in the mm, which the morph keeps.
fn thp_disable(pid: i32, want: u32) -> Result<(), String> {
    if prctl_get(PR_GET_THP_DISABLE, 0) == want as i64 {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            PR_SET_THP_DISABLE,
            (want & 1) as libc::c_ulong,
            (want & !1) as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(os(format!(
            "cannot set PR_SET_THP_DISABLE of pid {pid} to {want:#x}"
        )));
    }
    let now = prctl_get(PR_GET_THP_DISABLE, 0);
    if now != want as i64 {
        return Err(format!(
            "PR_GET_THP_DISABLE of pid {pid} reads {now:#x} after setting {want:#x}"
        ));
    }
    Ok(())
}

fn membarrier_call(cmd: libc::c_int) -> i64 {
    // SAFETY: membarrier with flags 0 and cpu_id 0 touches no memory.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

/// Registers every membarrier command the process had registered (each REGISTER_* command
/// is its own bit of the registration mask); the registrations live in the mm.
fn membarrier(pid: i32, want: u32) -> Result<(), String> {
    if want == 0 {
        return Ok(());
    }
    for bit in 0..32 {
        let cmd = 1u32 << bit;
        if want & cmd != 0 && membarrier_call(cmd as libc::c_int) != 0 {
            return Err(os(format!(
                "cannot register membarrier command {cmd:#x} for pid {pid}"
            )));
        }
    }
    let now = membarrier_call(MEMBARRIER_CMD_GET_REGISTRATIONS);
    if now != want as i64 {
        return Err(format!(
            "the membarrier registrations of pid {pid} read {now:#x} after registering {want:#x}"
        ));
    }
    Ok(())
}

/// PR_SET_TSC (x86: whether RDTSC faults). 0: the architecture has no such control.
fn tsc(pid: i32, want: u32) -> Result<(), String> {
    if want == 0 {
        return Ok(());
    }
    let mut have: libc::c_int = 0;
    // SAFETY: PR_GET_TSC stores one int at arg2.
    let r = unsafe { libc::prctl(PR_GET_TSC, &mut have as *mut libc::c_int, 0, 0, 0) };
    if r == 0 && have as u32 == want {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_SET_TSC, want as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(os(format!("cannot set PR_SET_TSC of pid {pid} to {want}")));
    }
    Ok(())
}

/// PR_MCE_KILL: the machine-check memory-corruption kill policy.
fn mce_kill(pid: i32, want: u32) -> Result<(), String> {
    if prctl_get(PR_MCE_KILL_GET, 0) == want as i64 {
        return Ok(());
    }
    let r = if want == PR_MCE_KILL_DEFAULT {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(PR_MCE_KILL, PR_MCE_KILL_CLEAR, 0, 0, 0) }
    } else {
        // SAFETY: as above.
        unsafe { libc::prctl(PR_MCE_KILL, PR_MCE_KILL_SET, want as libc::c_ulong, 0, 0) }
    };
    if r != 0 || prctl_get(PR_MCE_KILL_GET, 0) != want as i64 {
        return Err(os(format!("cannot set PR_MCE_KILL of pid {pid} to {want}")));
    }
    Ok(())
}

/// PR_SET_SPECULATION_CTRL: a control the process could change (PR_SPEC_PRCTL) is set to its
/// recorded state; one it could not must read the same on this machine.
fn speculation(pid: i32, which: usize, want: u32) -> Result<(), String> {
    let have = prctl_get(PR_GET_SPECULATION_CTRL, which as libc::c_ulong).max(0) as u32;
    if have == want {
        return Ok(());
    }
    let name = SPEC_NAMES[which];
    if want & PR_SPEC_PRCTL == 0 || have & PR_SPEC_PRCTL == 0 {
        return Err(format!(
            "{name} of pid {pid} was {want:#x}, this machine gives {have:#x} and it cannot be \
             changed"
        ));
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            PR_SET_SPECULATION_CTRL,
            which as libc::c_ulong,
            (want & !PR_SPEC_PRCTL) as libc::c_ulong,
            0,
            0,
        )
    };
    let now = prctl_get(PR_GET_SPECULATION_CTRL, which as libc::c_ulong);
    if r != 0 || now != want as i64 {
        return Err(os(format!(
            "cannot set {name} of pid {pid} to {want:#x} (it reads {now:#x})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child (so this test process keeps its own settings) and returns
    /// what it reported.
    fn in_child(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only runs `f` (reads and writes of /proc/self files, prctl),
        // writes to a pipe and _exits; the test harness threads are not used in it.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                drop(r);
                let msg = match f() {
                    Ok(()) => String::new(),
                    Err(m) => m,
                };
                let _ = nix::unistd::write(&w, msg.as_bytes());
                // SAFETY: ends the child only.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut msg = String::new();
                std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut msg).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                if msg.is_empty() {
                    Ok(())
                } else {
                    Err(msg)
                }
            }
        }
    }

    fn have_cap(cap: u32) -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        eff & (1 << cap) != 0
    }

    #[test]
    fn oom_score_adj_is_raised_and_a_refused_lowering_says_why() {
        in_child(|| {
            oom_score_adj(1, 321)?;
            if crate::proc::own_oom_score_adj()? != 321 {
                return Err("not raised".into());
            }
            // Lowering below what the task may (its oom_score_adj_min, 0 unless a privileged
            // writer set it) needs CAP_SYS_RESOURCE.
            match (oom_score_adj(1, -100), have_cap(24)) {
                (Ok(()), true) => Ok(()),
                (Err(e), false) if e.contains("CAP_SYS_RESOURCE") && e.contains("pid 1") => Ok(()),
                (r, cap) => Err(format!("with CAP_SYS_RESOURCE {cap}: {r:?}")),
            }
        })
        .unwrap();
    }

    #[test]
    fn thp_disable_membarrier_and_mce_kill_are_set_and_read_back() {
        in_child(|| {
            thp_disable(1, 1)?;
            mce_kill(1, 1)?;
            mce_kill(1, PR_MCE_KILL_DEFAULT)?;
            // PRIVATE_EXPEDITED, on kernels that can list registrations.
            if membarrier_call(MEMBARRIER_CMD_GET_REGISTRATIONS) >= 0 {
                membarrier(1, 1 << 4)?;
            }
            Ok(())
        })
        .unwrap();
    }
}
