//! What the forked child does before it turns into the restored process: it takes the image's
//! fds, cwd, umask, name, signal dispositions and rlimits, then jumps into the restorer blob.
//!
//! Process-only state (handlers, timers, pending signals, ...) is set by [`task_state`].
//!
//! This runs in a copy of crest right after clone3. It reports to crest over a pipe: `R` when
//! ready, or `E` followed by a message; then it waits for crest's go-ahead (which carries the
//! child's own rseq registration, read by crest through ptrace) and jumps. It never returns.

use std::os::fd::{AsRawFd, RawFd};

use crate::images::ProcessImage;

use super::blob::abi::Range;
use super::bootstrap::{Bootstrap, Special};
use super::files::OpenedFiles;
use super::task_state;

/// The go-ahead message: the child's own rseq area, to unregister before its memory goes away.
pub const GO_MESSAGE_LEN: usize = 16;

pub struct ChildPlan<'a> {
    pub image: &'a ProcessImage,
    /// Restore the parent-death signal (crest stays the parent until the process ends).
    pub keep_pdeath: bool,
    pub files: &'a OpenedFiles,
    pub specials: &'a [Special],
    pub boot: &'a mut Bootstrap,
    pub status_fd: RawFd,
    pub go_fd: RawFd,
    pub fd_base: RawFd,
    /// Children restored as zombies, with the signal their end sends: their end must not
    /// leave a signal the process did not have pending at dump time.
    pub zombie_children: Vec<(i32, i32)>,
    /// epoll registrations this task makes itself (signalfd targets, see
    /// [`crate::events::epoll`]).
    pub epoll_registrations: Vec<crate::events::epoll::TaskRegistration>,
    /// Its part in an fd table shared with other processes ([`super::fdshare`]).
    pub table: Option<super::fdshare::TaskTable>,
    /// Helpers leading process groups whose leaders had exited, to end once every task is
    /// ready ([`super::spawn::end_group_helpers`]).
    pub group_helpers: Vec<super::tree::GroupHelper>,
    /// Helpers leading sessions whose leaders had exited ([`super::tree::SessionHelper`]).
    pub session_helpers: Vec<super::tree::SessionHelper>,
}

/// Entry of the child side. Never returns: it either jumps into the restorer or exits.
pub fn run(plan: ChildPlan<'_>) -> ! {
    if let Err(msg) = prepare(&plan) {
        fail(plan.status_fd, &msg);
    }
    let boot = plan.boot;
    let mut keep = {
        let mut keep: Vec<RawFd> = vec![plan.files.pages.as_raw_fd(), plan.files.exe.as_raw_fd()];
        keep.extend(plan.files.mapped.iter().flatten().map(|f| f.as_raw_fd()));
        keep.extend(plan.files.shmem.values().map(|f| f.as_raw_fd()));
        keep.sort_unstable();
        keep
    };
    // AIO contexts last: their rings must stay where io_setup put them until the restorer
    // moves them, and nothing of crest's may map memory after the unmap list is taken.
    let rings = match crate::files::aio::create_in_task(plan.image) {
        Ok(rings) => rings,
        Err(msg) => fail(plan.status_fd, &msg),
    };
    if let Err(msg) = boot.add_ring_moves(&rings) {
        fail(plan.status_fd, &msg);
    }
    let ranges = match unmap_list(boot, plan.specials, &rings) {
        Ok(ranges) => ranges,
        Err(msg) => fail(plan.status_fd, &msg),
    };
    if let Err(msg) = boot.set_unmap_list(&ranges) {
        fail(plan.status_fd, &msg);
    }
    // The chroot comes after the last path this task opens (/proc/self files above) and
    // before it becomes the process.
    if let Some(root) = &plan.files.root {
        if let Err(msg) = crate::files::root::enter(root, &plan.files.cwd) {
            fail(plan.status_fd, &msg);
        }
    }
    if plan.keep_pdeath {
        // A credential switch in the restorer clears it; the restorer sets it again.
        boot.set_pdeath_after_creds(plan.image.task.pdeath_signal);
    }
    if boot.uffd_wanted() {
        // Lazy pages: the userfaultfd of this memory, for the restorer to register the lazy
        // VMAs with and for crest to take (pidfd_getfd) once this task reports ready.
        match crate::lazy::create_in_task(plan.fd_base) {
            Ok(fd) => {
                boot.set_uffd(fd);
                keep.push(fd);
                keep.sort_unstable();
            }
            Err(msg) => fail(plan.status_fd, &format!("lazy pages: {msg}")),
        }
    }
    report_ready(plan.status_fd);
    let mut go = [0u8; GO_MESSAGE_LEN];
    if !read_exact(plan.go_fd, &mut go) {
        // crest gave up (it closed the pipe): leave quietly.
        // SAFETY: _exit has no preconditions.
        unsafe { libc::_exit(1) };
    }
    let rseq_ptr = u64::from_le_bytes(go[0..8].try_into().unwrap());
    let rseq_len = u32::from_le_bytes(go[8..12].try_into().unwrap());
    let rseq_sig = u32::from_le_bytes(go[12..16].try_into().unwrap());
    if rseq_ptr != 0 {
        // The kernel writes the current CPU into a registered rseq area on every return to user
        // space; crest's area is about to be unmapped, so unregister it (RSEQ_FLAG_UNREGISTER = 1).
        // SAFETY: unregistering the registration crest read from this very thread via ptrace.
        let r = unsafe { libc::syscall(libc::SYS_rseq, rseq_ptr, rseq_len, 1, rseq_sig) };
        if r != 0 {
            fail(
                plan.status_fd,
                &format!(
                    "cannot unregister crest's own rseq area {rseq_ptr:#x}: {}",
                    std::io::Error::last_os_error()
                ),
            );
        }
    }
    if let Err(msg) = super::spawn::end_helpers(&plan.group_helpers, &plan.session_helpers) {
        fail(plan.status_fd, &msg);
    }
    // Limits last: a lowered RLIMIT_NOFILE or RLIMIT_AS must not stop crest's own setup.
    let last_steps = set_rlimits(plan.image)
        .and_then(|()| absorb_zombie_signals(&plan.zombie_children))
        .and_then(|()| task_state::queue_pending_signals(plan.image))
        .and_then(|()| task_state::set_thread_links(&plan.image.threads[0]))
        .and_then(|()| task_state::set_dumpable(plan.image));
    if let Err(msg) = last_steps {
        fail(plan.status_fd, &msg);
    }
    match &plan.table {
        None => close_all_but(&keep, plan.fd_base),
        Some(t) => t.close_before_restorer(&keep, plan.fd_base),
    }
    // SAFETY: the bootstrap region holds the installed blob, its arguments and stack; from here
    // the restorer owns this process.
    unsafe {
        crate::arch::morph::jump_to_restorer(boot.entry(), boot.stack_top(), boot.args_addr())
    }
}

fn prepare(plan: &ChildPlan<'_>) -> Result<(), String> {
    let p = plan.image;
    block_all_signals()?;
    let regs: Vec<_> = p.threads.iter().map(|t| &t.regs).collect();
    crate::arch::sigframe::request_dynamic_features(&regs)?;
    task_state::set_sigactions(p)?;
    if let Some(t) = &plan.table {
        t.wait_installed()?;
    }
    if plan.table.as_ref().is_none_or(|t| t.installs()) {
        install_fds(plan)?;
    }
    if let Some(t) = &plan.table {
        t.installed()?;
    }
    // SAFETY: fchdir on a directory descriptor we own.
    if unsafe { libc::fchdir(plan.files.cwd.as_raw_fd()) } < 0 {
        return Err(format!(
            "cannot change into the working directory: {}",
            std::io::Error::last_os_error()
        ));
    }
    finish_prepare(plan)
}

/// Puts the image's fds in place (the task's table is its own, or it owns a shared one).
fn install_fds(plan: &ChildPlan<'_>) -> Result<(), String> {
    let p = plan.image;
    // pidfds are opened by the task itself: the processes they name exist only now.
    let mut pidfds = crate::events::pidfd::open_in_task(p, plan.fd_base)?;
    // So are /proc/PID files of the tree.
    pidfds.extend(super::procfiles::open_in_task(p, plan.fd_base)?);
    // Move every image fd into place; all of crest's descriptors are at fd_base or above.
    for fd in &p.fds {
        let src = match pidfds.get(&fd.description) {
            Some(pidfd) => pidfd.as_raw_fd(),
            None => plan.files.descriptions[fd.description as usize].as_raw_fd(),
        };
        let flags = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: dup3 on descriptors we own; the target number is below fd_base.
        if unsafe { libc::dup3(src, fd.fd, flags) } < 0 {
            return Err(format!(
                "cannot install fd {}: {}",
                fd.fd,
                std::io::Error::last_os_error()
            ));
        }
    }
    let by_id = |id: u32| {
        p.open_files
            .iter()
            .position(|d| d.id == id)
            .map(|k| plan.files.descriptions[k].as_raw_fd())
    };
    crate::events::epoll::register_in_task(&plan.epoll_registrations, by_id, plan.fd_base)?;
    crate::files::fown::arm_async_in_task(p)?;
    // flock and OFD locks belong to the descriptions, which are in place now; POSIX locks are
    // the restorer's, after its last close.
    crate::files::locks::take_description_locks(p)?;
    crate::files::locks::take_mapping_locks(p, &plan.files.mapped)?;
    let wanted: std::collections::HashSet<RawFd> = p.fds.iter().map(|f| f.fd).collect();
    for fd in 0..plan.fd_base {
        if !wanted.contains(&fd) {
            // SAFETY: closing a descriptor number below fd_base that the image does not have
            // (crest's stdin/stdout/stderr); EBADF is harmless.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// The rest of the process's settings, once its fds and cwd are in place.
fn finish_prepare(plan: &ChildPlan<'_>) -> Result<(), String> {
    let p = plan.image;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(p.umask as libc::mode_t) };
    let comm = std::ffi::CString::new(
        p.comm
            .as_bytes()
            .iter()
            .copied()
            .filter(|b| *b != 0)
            .collect::<Vec<u8>>(),
    )
    .unwrap_or_default();
    // SAFETY: PR_SET_NAME reads at most 16 bytes from a valid C string.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    task_state::create_posix_timers(p)?;
    task_state::set_process_flags(p, plan.keep_pdeath)?;
    crate::pstate::restore_in_child(p)?;
    Ok(())
}

/// crest's own mappings the restorer must remove: everything but the bootstrap region, the
/// vDSO/vvar pieces and AIO rings it moves, and [vsyscall] (outside the user address range).
fn unmap_list(
    boot: &Bootstrap,
    specials: &[Special],
    rings: &[crate::files::aio::RingMove],
) -> Result<Vec<Range>, String> {
    let own =
        crate::proc::own_maps().map_err(|e| format!("cannot list crest's own mappings: {e}"))?;
    let b_start = boot.addr();
    let b_end = boot.addr() + boot.len();
    // The premap area (cow.rs) stays: the restorer moves what it needs out of it first.
    let area = boot.args().premap_area;
    Ok(own
        .iter()
        .filter(|m| !(m.start >= b_start && m.end <= b_end))
        .filter(|m| !(area.len > 0 && m.start >= area.start && m.end <= area.start + area.len))
        .filter(|m| !specials.iter().any(|s| s.current.start == m.start))
        .filter(|m| !rings.iter().any(|r| r.current == m.start))
        .filter(|m| m.name != "[vsyscall]")
        .map(|m| Range {
            start: m.start,
            len: m.end - m.start,
        })
        .collect())
}

fn block_all_signals() -> Result<(), String> {
    let all = nix::sys::signal::SigSet::all();
    nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&all), None)
        .map_err(|e| format!("cannot block signals: {e}"))
}

/// Closes every descriptor at or above `base` except `keep` (sorted).
pub(super) fn close_all_but(keep: &[RawFd], base: RawFd) {
    let mut from = base as u32;
    for &k in keep {
        let k = k as u32;
        if k > from {
            // SAFETY: closing descriptors we own and no longer need.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
        }
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

fn set_rlimits(p: &ProcessImage) -> Result<(), String> {
    for lim in &p.rlimits {
        let new = libc::rlimit64 {
            rlim_cur: lim.soft,
            rlim_max: lim.hard,
        };
        // SAFETY: prlimit64 on ourselves with a valid struct; the old value is not requested.
        let r = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                lim.resource,
                &new as *const libc::rlimit64,
                std::ptr::null::<u8>(),
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot set rlimit {}: {}",
                lim.resource,
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Tells crest this task is ready.
pub fn report_ready(status_fd: RawFd) {
    write_all(status_fd, b"R");
}

/// Waits until each zombie child has ended (without reaping it: the restored program will),
/// then takes the signals their ends sent out of the pending set. The image's own pending
/// signals, queued next, are what the process had; a SIGCHLD it had not yet handled is among
/// them.
fn absorb_zombie_signals(zombies: &[(i32, i32)]) -> Result<(), String> {
    for &(pid, _) in zombies {
        loop {
            // SAFETY: siginfo_t is plain data; waitid writes into it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child, WNOWAIT: it stays a zombie.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(format!("waiting for the zombie child {pid} to end: {err}"));
            }
        }
    }
    for &(_, sig) in zombies {
        if sig <= 0 {
            continue;
        }
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set and signal number; a zero timeout only polls.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == sig {}
        }
    }
    Ok(())
}

/// Reports `msg` to crest and exits.
pub fn fail(status_fd: RawFd, msg: &str) -> ! {
    let mut out = Vec::with_capacity(msg.len() + 1);
    out.push(b'E');
    out.extend_from_slice(msg.as_bytes());
    write_all(status_fd, &out);
    // SAFETY: _exit has no preconditions; nothing of crest's state needs flushing in the child.
    unsafe { libc::_exit(1) }
}

fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        buf = &buf[n as usize..];
    }
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled tail of buf.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        got += n as usize;
    }
    true
}
