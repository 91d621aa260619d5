//! Collecting one frozen process of the tree: everything but its pages and what it shares with
//! other processes (resolved afterwards by [`super::shared`]).
//!
//! Order: threads (registers, masks, rseq, pending signals) -> parasite (process-only state, and
//! each thread's own) -> what /proc shows (VMAs, fds, cwd, exe, limits, mm fields). All of it
//! while the whole tree is frozen, so the tree is one consistent snapshot.

use crate::images::{Creds, FileIdentity, MmFields, Rlimit, TaskState, ThreadImage, ThreadState};
use crate::proc::{Proc, ProcError};

use super::fds::{self, FdTable};
use super::files::FileTable;
use super::freeze::Frozen;
use super::problems::Problems;
use super::{creds, parasite, seccomp, task, threads, vmas, DumpError};
use crate::phases::Phases;

/// One process's state, as collected while the tree is frozen.
pub struct CollectedProcess {
    pub proc: Proc,
    /// Until the tree is released (`-R`) or killed.
    pub frozen: Option<Frozen>,
    pub creds: Creds,
    pub threads: Vec<ThreadImage>,
    pub notes: Vec<String>,
    pub task: TaskState,
    pub vmas: vmas::Collected,
    pub files: FileTable,
    pub fd_table: FdTable,
    pub cwd_file: u32,
    /// The chroot directory, when it is not crest's "/".
    pub root_file: Option<u32>,
    pub exe_file: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmFields,
    pub comm: String,
    pub ppid: i32,
    pub umask: u32,
    pub sig_ignored: u64,
    pub sig_caught: u64,
    /// The owner of the fd table this process shares (set by [`super::fdshare::group`]).
    pub fd_table_of: Option<i32>,
}

impl CollectedProcess {
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// The file behind description `d` of the fd table.
    pub fn description_file(&self, d: u32) -> &FileIdentity {
        self.files.get(self.fd_table.open_files[d as usize].file)
    }
}

/// Collects the frozen process `proc` (whose threads `frozen` holds; `shell_fds` are its fds on
/// the shell's terminal; `ghost_limit` is `--ghost-limit`).
pub fn collect(
    proc: Proc,
    frozen: Frozen,
    shell_fds: &[i32],
    ghost_limit: u64,
    phases: &mut Phases,
) -> Result<CollectedProcess, DumpError> {
    let pid = proc.pid();
    // Dropped before `frozen` on failure: connections leave repair mode before the release.
    let tcp = crate::net::tcp_dump::ProcessGuard::new(pid);
    let tids = frozen.tids();
    let (mut threads, notes, mut task_state, brk, securebits, raw_settings) =
        std::thread::scope(|scope| {
            let mut seccomp = seccomp::watch(scope, &proc, tids[1..].to_vec());
            let (mut threads, notes) = threads::capture_all(&proc, &tids)?;
            let shared_pending = parasite::pending(pid, pid, true)?;
            phases.end("threads");
            let timers = proc.posix_timers()?;
            // The leader's seccomp mode was checked before the freeze.
            let inside = parasite::collect(pid, &tids, &timers, |tid| seccomp.check(tid))?;
            phases.end("parasite");
            let mut task_state = inside.task;
            task_state.shared_pending = shared_pending;
            for (thread, state) in threads.iter_mut().zip(inside.threads) {
                thread.state = ThreadState {
                    pending: std::mem::take(&mut thread.state.pending),
                    ..state
                };
            }
            Ok::<_, DumpError>((
                threads,
                notes,
                task_state,
                inside.brk,
                inside.securebits,
                inside.settings,
            ))
        })?;
    crate::pstate::collect(&proc, &raw_settings, &mut task_state, &mut threads)?;
    task_state.group_stop = frozen.group_stop().unwrap_or(0) as u32;
    let creds = creds::collect(&proc, &tids, &securebits)?;

    let status = proc.status()?;
    let umask = status.umask.ok_or_else(|| {
        DumpError::Proc(ProcError::Parse {
            path: format!("/proc/{pid}/status"),
            detail: "no Umask: line (kernel older than 4.7?)".into(),
        })
    })?;
    // The parasite is out by now: a refusal from here on leaves the process as it was, and
    // every mapping, fd, the cwd and the exe are looked at, so that all of them are named.
    let mut files = FileTable::with_ghost_limit(ghost_limit);
    let mut problems = Problems::new();
    let vmas = problems.take(vmas::collect(&proc, &mut files))?;
    let fd_table = problems.take(fds::collect(
        &proc,
        &mut files,
        vmas.as_ref().map_or(&[][..], |v| &v.vmas[..]),
        shell_fds,
    ))?;
    let cwd_file = problems.take(fds::cwd(&proc, &mut files))?;
    let root_file = problems.take(fds::root(&proc, &mut files))?;
    let exe_file = problems.take(fds::exe(&proc, &mut files))?;
    let (Some(mut vmas), Some(mut fd_table), Some(cwd_file), Some(root_file), Some(exe_file)) =
        (vmas, fd_table, cwd_file, root_file, exe_file)
    else {
        problems.finish()?;
        unreachable!("a step without a value recorded a refusal");
    };
    vmas.memfds = super::memfd::content_areas(&files, &fd_table, &vmas.vmas);
    vmas.ghosts = crate::files::ghost::content_areas(
        files.all(),
        fd_table
            .fds
            .iter()
            .map(|f| (fd_table.open_files[f.description as usize].file, f.fd)),
        &vmas.vmas,
    );
    let rlimits = task::rlimits(&proc)?;
    let (mm, comm, ppid) = task::mm(&proc, brk)?;
    phases.end("collect");
    tcp.collected();
    let mut notes = notes;
    notes.append(&mut fd_table.notes);
    Ok(CollectedProcess {
        proc,
        frozen: Some(frozen),
        creds,
        threads,
        notes,
        task: task_state,
        vmas,
        files,
        fd_table,
        cwd_file,
        root_file,
        exe_file,
        rlimits,
        mm,
        comm,
        ppid,
        umask,
        sig_ignored: status.sig_ignored,
        sig_caught: status.sig_caught,
        fd_table_of: None,
    })
}
