//! Restore: read and validate an image, fork a task with the original pid, give it the image's
//! files and settings, and morph it into the dumped process through the restorer blob.
//!
//! Order matters for "a failed restore leaves nothing half-built": everything that can be
//! checked in crest (the image, every file, the vDSO, the pid) is checked before the fork; after
//! the fork, the child is traced with PTRACE_O_EXITKILL and killed and reaped on any failure.

pub mod blob;
mod bootstrap;
mod child;
mod cow;
pub(crate) mod creds;
mod epoll;
mod fdshare;
mod files;
mod finish;
mod fork;
mod jobctl;
mod loading;
mod memfd;
mod mqueue;
mod netlink;
mod packet;
mod peercred;
mod pidns;
mod pipes;
mod procfiles;
pub(crate) mod scm;
mod shmem;
mod sockets;
mod spawn;
mod specials;
mod sysv;
mod sysv_ipc;
mod task_state;
mod tree;
mod tty;
mod udp;
mod wait;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::images::{self, ProcessImage};

pub use wait::Restored;

/// What `crest restore` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    /// Also check the page data against its checksums first.
    pub verify: bool,
    /// crest exits once the process runs (`-d`) instead of staying its parent until it ends.
    pub detached: bool,
    /// Restore into a fresh pid namespace ([`pidns`]), so copies can run beside each other.
    pub pidns: bool,
    /// Descriptors of crest's that take the place of files of the image (`--inherit-fd`).
    pub inherit: Vec<files::InheritFd>,
    /// `--shell-job`: attach a tree dumped with `--shell-job` to crest's terminal.
    pub shell_job: bool,
    /// `--ext-unix-sk`: connect UNIX sockets dumped with `--ext-unix-sk` to their outside peer's
    /// name again (refused without it).
    pub ext_unix_sk: bool,
    /// `--tcp-close`: TCP connections come back closed (reads give their unread bytes, then
    /// end of file; writes fail with EPIPE) instead of connected.
    pub tcp_close: bool,
    /// `--lazy-pages`: private anonymous memory is filled by a page server in crest
    /// (userfaultfd) while the tree runs ([`crate::lazy`]).
    pub lazy_pages: bool,
    /// `--pages map`: private anonymous memory is mapped from the page files, copy-on-write
    /// ([`crate::mapped`]).
    pub map_pages: bool,
    /// `--record-working-set[=MS]`: record the pages the tree touches in that window and write
    /// them beside the image ([`crate::prefetch`]; lazy or mapped restores only).
    pub record_working_set: Option<std::time::Duration>,
    /// `--no-prefetch`: ignore the image's recorded working set.
    pub no_prefetch: bool,
    /// `--clocks host` (`--host-clocks`): the tree sees the host's monotonic and boot-time
    /// clocks, moved on by the time since the dump, instead of clocks that carry on from the
    /// dump ([`crate::timens`]). The CLI and the CRaC engine default it per architecture
    /// (`arch::CLOCKS_CARRY_ON_BY_DEFAULT`).
    pub host_clocks: bool,
}

pub use files::InheritFd;
pub use wait::{forwardable_signals, RestoreStats};

/// Whether a restore could recreate the parents, sessions and groups of `tree`; the reason
/// when it could not (a dump refuses such a tree before touching it). `caller_sid` is the
/// session of the root's parent at dump time (-1: unknown; 0: led outside the pid namespace): a session or group whose leader is
/// not in the tree is made again by a helper under the leader's pid, unless it is the root's
/// own or the caller's (those become crest's); a leader still alive outside the tree holds
/// that pid, so such a tree is refused.
pub fn check_tree_layout(tree: &[images::TreeTask], caller_sid: i32) -> Result<(), String> {
    let alive: Vec<i32> = tree
        .iter()
        .filter(|t| t.state == images::TreeTaskState::Alive)
        .map(|t| t.pid)
        .collect();
    let plan = tree::plan(tree, &alive, caller_sid).map_err(|e| match e {
        RestoreError::Unsupported(why) => why,
        other => other.to_string(),
    })?;
    for t in &plan.tasks {
        let leaders = t
            .group_helpers
            .iter()
            .map(|h| (h.pid, "process group"))
            .chain(t.session_helpers.iter().map(|h| (h.pid, "session")));
        for (pid, what) in leaders {
            if crate::proc::pid_in_use(pid) {
                return Err(format!(
                    "the tree is in {what} {pid}, whose leader (pid {pid}) is a process outside \
                     the tree; crest can recreate it only when its leader has exited"
                ));
            }
        }
    }
    Ok(())
}

/// Why a restore failed. Every variant says what failed, where, and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error("the image cannot be used: {0}")]
    BadImage(String),
    #[error("{path} {problem}; restore it as it was at dump time, or dump again")]
    File { path: String, problem: String },
    #[error("pid {pid} is in use by another process; crest restores processes under their original pid, so stop that process first")]
    PidTaken { pid: i32 },
    #[error("pid {pid} is still held by a zombie after {waited} s: the dumped process was killed but its parent has not reaped it; the parent must wait() for it before pid {pid} can be restored")]
    PidHeldByZombie { pid: i32, waited: u64 },
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// The image needs a terminal crest cannot give it as asked (see `tty.rs`).
    #[error("{0}")]
    Terminal(String),
    /// SysV IPC objects of the image cannot be recreated (sysv.rs).
    #[error("{0}")]
    Ipc(String),
    #[error("insufficient privilege: {0}")]
    Privilege(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: std::io::Error,
    },
    #[error("pid {pid}: preparing the restored task failed: {message}")]
    ChildSetup { pid: i32, message: String },
    #[error("pid {pid}: the restorer {how} while {step} (at {detail:#x}){errno}")]
    Restorer {
        pid: i32,
        how: String,
        step: String,
        detail: u64,
        errno: String,
    },
    #[error(transparent)]
    Arch(#[from] crate::arch::ArchError),
    #[error("internal error: {0}")]
    Internal(String),
    /// An owner of signal-driven I/O cannot be set again (files/fown.rs).
    #[error("signal-driven I/O: {0}")]
    FileOwner(String),
    #[error("restoring into a new pid namespace failed: {0}")]
    PidNamespace(String),
    #[error("lazy pages: {0}")]
    Lazy(String),
    #[error("giving the tree clocks that carry on from the dump: {0} (restore with --host-clocks to keep the host's)")]
    Clocks(#[from] crate::timens::TimeNamespaceError),
}

/// Restores the image in `opts.dir`: the whole tree, every process under its original pid, its
/// parent, group and session. On success the root runs as a child of crest.
///
/// Steps: read and validate the image -> plan the tree ([`tree`]) -> check every pid is free
/// -> open everything in crest (files, descriptions shared across the tree, pipes, shared
/// memory) and map each process's bootstrap region -> fork the root, which forks the rest
/// ([`spawn`]) -> trace each task as it reports ready and send it into its restorer
/// ([`finish::start`]) -> catch every thread of every process right after its rt_sigreturn
/// ([`finish::catch_all`]) -> remove the bootstrap regions -> release all threads together.
/// Until that release no task of the tree runs its own code; on any failure every task is
/// killed and reaped ([`TreeGuard`]).
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    if opts.lazy_pages && opts.pidns {
        return Err(RestoreError::Unsupported(
            "lazy pages with --pidns (the page server would have to run in the namespace's \
             init)"
                .into(),
        ));
    }
    if opts.lazy_pages && opts.map_pages {
        return Err(RestoreError::Unsupported(
            "pages both mapped and lazy: choose one of --pages map and --lazy-pages".into(),
        ));
    }
    if opts.record_working_set.is_some() {
        if !opts.lazy_pages && !opts.map_pages {
            return Err(RestoreError::Unsupported(
                "recording a working set with copied pages: a copy restore reads every page \
                 before the tree runs, so there is nothing to learn; record with --pages lazy \
                 or --pages map"
                    .into(),
            ));
        }
        if opts.pidns {
            return Err(RestoreError::Unsupported(
                "recording a working set with --pidns".into(),
            ));
        }
    }
    if opts.pidns {
        return pidns::restore(opts);
    }
    let started = std::time::Instant::now();
    let mut phases = crate::phases::Phases::new();
    let image = images::open_image(&opts.dir)?;
    if opts.verify {
        images::verify_pages(&opts.dir, &image)?;
    }
    for p in &image.processes {
        check_supported(p)?;
    }
    if opts.lazy_pages {
        refuse_lazy_threads(&image)?;
    }
    // Not while recording a new one: the record must be the program's own touches.
    let working_set = crate::prefetch::load(
        &image,
        (opts.lazy_pages || opts.map_pages)
            && !opts.no_prefetch
            && opts.record_working_set.is_none(),
    )?;
    let map_plans = if opts.map_pages {
        crate::mapped::plan_image(&opts.dir, &image.processes, working_set.as_ref())
            .map_err(RestoreError::Unsupported)?
    } else {
        Default::default()
    };

    crate::info!(
        1,
        "image {} checked: {} process(es), {} thread(s), {} zombie(s){}",
        opts.dir.display(),
        image.processes.len(),
        image
            .processes
            .iter()
            .map(|p| p.threads.len())
            .sum::<usize>(),
        image.inventory.tree.len() - image.processes.len(),
        if opts.verify {
            ", page data verified"
        } else {
            ""
        }
    );
    let mut terminals: Vec<tty::Terminal> = tty::plan(&image, opts.shell_job, opts.detached)?
        .into_iter()
        .collect();
    terminals.extend(tty::open_machine(&image)?);
    let task_terminals: Vec<tty::TaskTerminal> = terminals.iter().map(|t| t.for_tasks()).collect();
    let pids: Vec<i32> = image.processes.iter().map(|p| p.pid).collect();
    let plan = tree::plan(&image.inventory.tree, &pids, image.inventory.caller_sid)?;
    crate::info!(1, "planned the forks of {} task(s)", plan.tasks.len());
    let root_index = plan.tasks[0]
        .process
        .ok_or_else(|| RestoreError::BadImage("the root is not a live process".into()))?;
    let root = &image.processes[root_index];
    // The parent-death signal stands for "my parent ended". After restore the root's parent is
    // crest: kept while crest waits for the tree, which ends only with it; with -d crest exits
    // at once, which would fire the signal, so it is left unset then. The other processes get
    // their own parents back, and their signal with them.
    let keep_root_pdeath = root.task.pdeath_signal != 0 && !opts.detached;
    if root.task.pdeath_signal != 0 && opts.detached {
        crate::warn!(
            "pid {} had parent-death signal {}; it is not restored with -d, since crest, its parent after restore, exits at once",
            root.pid,
            root.task.pdeath_signal
        );
    }
    phases.end("validate");
    let readahead = match &working_set {
        Some(ws) if opts.map_pages => {
            let stats = crate::prefetch::mapped::readahead(&image, ws);
            phases.end("prefetch");
            Some(stats)
        }
        _ => None,
    };
    for t in &plan.tasks {
        fork::wait_until_pid_free(t.pid)?;
        for helper in &t.group_helpers {
            fork::wait_until_pid_free(helper.pid)?;
        }
        for helper in &t.session_helpers {
            fork::wait_until_pid_free(helper.pid)?;
        }
    }
    // Thread ids are released as soon as the threads exit; only leaders can linger. Asked
    // with kill(tid, 0) (any task id answers, a thread's too): a thousand lookups of
    // /proc/TID took milliseconds.
    let tid_in_use = |tid: i32| {
        !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(tid), None),
            Err(nix::errno::Errno::ESRCH)
        )
    };
    for p in &image.processes {
        if let Some(t) = p.threads.iter().skip(1).find(|t| tid_in_use(t.tid)) {
            return Err(RestoreError::PidTaken { pid: t.tid });
        }
    }

    phases.end("pid wait");
    raise_fd_limit();
    let base = files::helper_fd_base(&image.processes);
    // Before any fork: the restorers attach the segments by id.
    let sysv = sysv::SysvSegments::create(&image)?;
    let sysv_ipc = sysv_ipc::SysvIpcObjects::create(&image)?;
    let (opened, tcp) = {
        let shmem = shmem::SharedMemory::create(&image, base)?;
        let mut shared = files::TreeFiles::with_inherited(&opts.inherit, base)?;
        shared.unix = sockets::UnixSockets::plan(&image.processes, opts.ext_unix_sk);
        shared.tcp_close = opts.tcp_close;
        scm::open_carried(&image.processes, base, &mut shared, &shmem)?;
        let mut opened = Vec::with_capacity(image.processes.len());
        for p in &image.processes {
            opened.push(files::open_all(
                p,
                &image.dir.join(&p.pages_file),
                base,
                &mut shared,
                &shmem,
            )?);
        }
        epoll::register(&image.processes, &shared)?;
        // Each process holds its own descriptor of what it shares; crest's are closed here,
        // but for the TCP connections still in repair mode.
        (opened, std::mem::take(&mut shared.tcp))
    };
    phases.end("files");
    // Before the bootstrap regions: they keep out of the reservation for the premapped memory.
    let cow = cow::CowPlan::plan(&plan, &image.processes, !opts.lazy_pages && !opts.map_pages)?;
    let mut specials_all = Vec::with_capacity(image.processes.len());
    let mut boots = Vec::with_capacity(image.processes.len());
    for (i, (p, files)) in image.processes.iter().zip(&opened).enumerate() {
        // Read anew each time: the regions made for earlier processes are crest's now.
        let own = crate::proc::own_maps()
            .map_err(|e| RestoreError::Internal(format!("listing crest's own mappings: {e}")))?;
        let specials = specials::plan(p, &own)?;
        boots.push(bootstrap::Bootstrap::create(
            p,
            &own,
            &specials,
            files,
            bootstrap::PageSources {
                lazy: opts.lazy_pages,
                mapped: map_plans.get(&p.pid),
                premaps: cow.of(i),
                premap_area: cow.area(),
            },
        )?);
        specials_all.push(specials);
    }
    let mut tables = fdshare::FdTables::plan(&plan, &image.processes, base)?;
    if opts.lazy_pages {
        refuse_lazy_shared_tables(&plan, &tables, &boots)?;
    }
    let mut status_rx = Vec::with_capacity(plan.tasks.len());
    let mut go_tx = Vec::with_capacity(plan.tasks.len());
    let mut task_ends = Vec::with_capacity(plan.tasks.len());
    let mut task_pipes = Vec::with_capacity(plan.tasks.len());
    for _ in &plan.tasks {
        let (status_r, status_w) = pipe_above(base)?;
        let (go_r, go_w) = pipe_above(base)?;
        task_pipes.push(spawn::TaskPipes {
            status_r: status_r.as_raw_fd(),
            status_w: status_w.as_raw_fd(),
            go_r: go_r.as_raw_fd(),
            go_w: go_w.as_raw_fd(),
        });
        status_rx.push(status_r);
        go_tx.push(go_w);
        task_ends.push((status_w, go_r));
    }

    phases.end("bootstrap");
    // SAFETY: getpgrp cannot fail.
    let crest_pgid = unsafe { libc::getpgrp() };
    let subreaper = Subreaper::become_one()?;
    // Every task starts with all signals blocked; crest's own mask comes back after the fork.
    let all = nix::sys::signal::SigSet::all();
    let mut old_mask = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut old_mask),
    )
    .map_err(|e| RestoreError::Os {
        what: "blocking signals for the fork".into(),
        source: e.into(),
    })?;
    if !opts.host_clocks {
        carry_on_clocks(&image.inventory.clocks)?;
    }
    crate::info!(
        1,
        "opened every file of the tree in crest; forking the root (pid {})",
        root.pid
    );
    let forked = fork::fork_with_pid(root.pid, plan.tasks[0].exit_signal);
    if let Ok(fork::Forked::Child) = forked {
        let mut ctx = spawn::TreeCtx {
            plan: &plan,
            processes: &image.processes,
            files: &opened,
            specials: &specials_all,
            boots: &mut boots,
            pipes: &task_pipes,
            keep_root_pdeath,
            fd_base: base,
            crest_pgid,
            terminals: &task_terminals,
            tables: &tables,
            cow: &cow,
        };
        spawn::task_main(&mut ctx, 0);
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old_mask),
        None,
    );
    forked?;
    let guard = TreeGuard::new(plan.tasks.iter().map(|t| t.pid).collect());
    // crest's copies of the tasks' ends and of the image files are no longer needed; closing
    // the status write ends lets a dead task show as end-of-file.
    drop(task_ends);
    tables.close_crest_ends();
    let owners = crate::files::fown::Owners::keep(
        &image.processes,
        &opened
            .iter()
            .map(|o| &o.descriptions[..])
            .collect::<Vec<_>>(),
    )
    .map_err(RestoreError::FileOwner)?;
    drop(opened);

    // Page data the restorers read from here on: a bar on a terminal if that takes long.
    let loading = loading::Watch::start(
        image.processes.iter().map(|p| p.pid).collect(),
        image
            .processes
            .iter()
            .filter_map(|p| image.file_entry(&p.pages_file))
            .map(|f| f.size)
            .sum(),
    );

    // In tree order: a parent reports before its children, so when a parent fails to fork a
    // child, its own message is the one read (the child's pipe only shows an end of file).
    // The processes of a shared fd table go on together, once all are ready ([`fdshare`]).
    let mut restoring = Vec::with_capacity(image.processes.len());
    let mut lazy_procs = Vec::new();
    let mut statuses: Vec<Option<&mut File>> = status_rx.iter_mut().map(Some).collect();
    for (i, t) in plan.tasks.iter().enumerate() {
        let status = statuses[i].as_mut().expect("each task is waited for once");
        finish::wait_ready(t.pid, status)?;
        for j in tables.startable(i) {
            let t = &plan.tasks[j];
            let status = statuses[j].take().expect("each task is started once");
            if let Some(p) = t.process {
                if let Some(fd) = boots[p].uffd_in_task() {
                    lazy_procs.push(crate::lazy::LazyProcess {
                        pid: t.pid,
                        uffd: crate::lazy::take_from_task(t.pid, fd).map_err(lazy_error)?,
                        pages: open_page_file(&image, &image.processes[p])?,
                        pieces: boots[p].lazy_pieces().to_vec(),
                        prefetch: working_set.as_ref().map_or_else(Vec::new, |ws| {
                            crate::prefetch::merged_ranges(ws, t.pid, image.inventory.page_size)
                        }),
                    });
                }
                let mut r = finish::Restoring {
                    pid: t.pid,
                    boot: &boots[p],
                    image: &image.processes[p],
                    tree: &image.inventory.tree,
                    status,
                };
                finish::start(&mut r, &mut go_tx[j])?;
                restoring.push(r);
            }
        }
    }

    // The restorers may fault on lazy memory from here on (rseq registration writes to it).
    let lazy = if lazy_procs.is_empty() {
        None
    } else {
        Some(
            crate::lazy::start(lazy_procs, &pids, started, opts.record_working_set)
                .map_err(lazy_error)?,
        )
    };
    phases.end("fork");
    crate::info!(
        1,
        "every task is forked; {} process(es) are loading their memory in their restorers",
        restoring.len()
    );
    let (caught, user_sigtraps) = finish::catch_all(&mut restoring, &mut phases)?;
    if let Some(l) = &lazy {
        l.registered();
        // The recorded working set goes in before the tree runs (see crate::prefetch).
        l.wait_prefetched();
    }
    loading.stop();
    crate::info!(
        1,
        "every thread is back in its saved registers; finishing each process and releasing the tree"
    );
    for r in &mut restoring {
        finish::finish_process(r, &caught)?;
    }
    // Every thread and group exists now: signal-driven I/O gets its owners back.
    owners.apply().map_err(RestoreError::FileOwner)?;
    sysv.commit()?;
    sysv_ipc.commit();
    // The connections are in their processes: unlock the network, then leave repair mode
    // (until now a failed restore closes them without a packet, and the image stays usable).
    tcp.resume().map_err(|e| RestoreError::Os {
        what: e.what,
        source: std::io::Error::from_raw_os_error(e.errno.map_or(libc::EIO, |e| e as i32)),
    })?;
    phases.end("finish");
    finish::release(caught, user_sigtraps)?;
    phases.end("release");
    subreaper.end();
    guard.disarm();
    let recording = opts.record_working_set.map(|window| {
        if opts.lazy_pages {
            crate::prefetch::record::Recording::lazy(image.clone(), window)
        } else {
            crate::prefetch::record::Recording::mapped(
                image.clone(),
                window,
                &map_plans,
                std::time::Instant::now(),
            )
        }
    });
    // The first mapped restore of an image records its working set on its own (a short
    // window; --no-prefetch says no), so that the next ones fault in first the pages the
    // program writes first (MapPlan's hot ranges).
    let auto_record = opts.map_pages
        && !opts.no_prefetch
        && recording.is_none()
        && working_set.is_none()
        && crate::prefetch::record::dir_writable(&opts.dir);
    let recording = recording.or_else(|| {
        auto_record.then(|| {
            crate::prefetch::record::Recording::mapped(
                image.clone(),
                crate::prefetch::record::AUTO_WINDOW,
                &map_plans,
                std::time::Instant::now(),
            )
            .auto()
        })
    });
    let stats = RestoreStats {
        prefetch: readahead,
        phases_us: phases.done,
        processes: image.processes.len(),
        threads: image.processes.iter().map(|p| p.threads.len()).sum(),
        page_bytes: image
            .processes
            .iter()
            .filter_map(|p| image.file_entry(&p.pages_file))
            .map(|f| f.size)
            .sum(),
    };
    Ok(Restored::new(root.pid)
        .with_stats(stats)
        .with_lazy(lazy)
        .with_recording(recording))
}

fn lazy_error(e: crate::lazy::LazyError) -> RestoreError {
    RestoreError::Lazy(e.to_string())
}

/// Lazy pages for processes of more than one thread, where this architecture does not bring
/// their memory back whole yet ([`crate::arch::LAZY_PAGES_FOR_THREADS_REFUSED`] says why):
/// refused naming every such process, before anything is opened or forked.
fn refuse_lazy_threads(image: &images::Image) -> Result<(), RestoreError> {
    let Some(why) = crate::arch::LAZY_PAGES_FOR_THREADS_REFUSED else {
        return Ok(());
    };
    let threaded: Vec<String> = image
        .processes
        .iter()
        .filter(|p| p.threads.len() > 1)
        .map(|p| format!("pid {} ({} threads)", p.pid, p.threads.len()))
        .collect();
    if threaded.is_empty() {
        return Ok(());
    }
    Err(RestoreError::Unsupported(format!(
        "lazy pages for {}: {why}; restore without --lazy-pages",
        threaded.join(", ")
    )))
}

/// A process that shares its fd table with another (CLONE_FILES) cannot keep a userfaultfd
/// apart until its restorer closes it: refused with lazy pages, naming the process.
fn refuse_lazy_shared_tables(
    plan: &tree::TreePlan,
    tables: &fdshare::FdTables,
    boots: &[bootstrap::Bootstrap],
) -> Result<(), RestoreError> {
    for (i, t) in plan.tasks.iter().enumerate() {
        let Some(p) = t.process else { continue };
        if tables.role(i) != fdshare::Role::Alone && boots[p].uffd_wanted() {
            return Err(RestoreError::Unsupported(format!(
                "lazy pages for pid {}, which shares its fd table with another process of the \
                 tree (CLONE_FILES); restore without --lazy-pages",
                t.pid
            )));
        }
    }
    Ok(())
}

/// crest as the child subreaper of the restore: a task whose parent task fails is handed to
/// crest, which then kills and reaps it, instead of to init. Put back as it was at the end.
struct Subreaper {
    was: bool,
}

impl Subreaper {
    fn become_one() -> Result<Subreaper, RestoreError> {
        let mut was: libc::c_int = 0;
        // SAFETY: PR_GET_CHILD_SUBREAPER writes one int to the pointer.
        unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut was as *mut libc::c_int) };
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            return Err(RestoreError::Os {
                what: "becoming the child subreaper of the restore".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Subreaper { was: was != 0 })
    }

    /// Ends the restore's subreaper role (as dropping does).
    fn end(self) {}
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, self.was as libc::c_ulong) };
    }
}

/// Kills and reaps every task of the tree unless disarmed: a failed restore leaves nothing
/// behind. Only tasks that are crest's (its children, or traced by it) or children of such
/// tasks are killed, never a process that merely took a pid of the image.
struct TreeGuard {
    pids: Vec<i32>,
    armed: bool,
}

impl TreeGuard {
    fn new(pids: Vec<i32>) -> TreeGuard {
        TreeGuard { pids, armed: true }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let me = std::process::id() as i32;
        let ours = |pid: i32| {
            crate::proc::Proc::open(pid)
                .and_then(|p| p.status())
                .is_ok_and(|s| s.ppid == me || s.tracer_pid == me || self.pids.contains(&s.ppid))
        };
        let victims: Vec<i32> = self.pids.iter().copied().filter(|&p| ours(p)).collect();
        for &pid in &victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Killed tasks end as zombies of their parents, which die too: everything comes to
        // crest, the subreaper, in the end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while victims.iter().any(|&p| crate::proc::pid_in_use(p))
            && std::time::Instant::now() < deadline
        {
            match nix::sys::wait::waitpid(
                None,
                Some(nix::sys::wait::WaitPidFlag::__WALL | nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Ok(_) => {}
            }
        }
    }
}

/// Raises crest's soft limit on open files to the hard one: it holds every descriptor of every
/// process of the tree at once.
/// The page file of process `p` of `image`, opened for reading.
pub(crate) fn open_page_file(
    image: &images::Image,
    p: &ProcessImage,
) -> Result<File, RestoreError> {
    File::open(image.pages_path(p)).map_err(|e| RestoreError::Os {
        what: format!("opening the page file of pid {}", p.pid),
        source: e,
    })
}

/// Puts the tree that crest forks next into a time namespace whose clocks carry on from
/// `clocks` ([`crate::timens`]); where the kernel refuses (no CAP_SYS_ADMIN or CAP_SYS_TIME, no
/// time namespaces) the tree keeps the host's clocks, and crest says so.
fn carry_on_clocks(clocks: &images::TreeClocks) -> Result<(), RestoreError> {
    match crate::timens::carry_on_for_children(clocks) {
        Ok(off) => {
            crate::info!(
                1,
                "the tree's clocks carry on from the dump (time namespace offsets: monotonic \
                 {} ms, boot time {} ms)",
                off.monotonic_ns / 1_000_000,
                off.boottime_ns / 1_000_000
            );
            Ok(())
        }
        Err(e) if e.is_refusal() => {
            crate::warn!(
                "the restored tree sees the host's monotonic and boot-time clocks, moved on by \
                 the time since the dump ({e}; a time namespace needs CAP_SYS_ADMIN and \
                 CAP_SYS_TIME); --host-clocks says this is wanted"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Refuses, before anything is touched, what this version cannot restore faithfully.
fn check_supported(p: &ProcessImage) -> Result<(), RestoreError> {
    if p.sig_caught != 0 && p.task.sigactions.len() != 64 {
        return Err(RestoreError::BadImage(format!(
            "pid {} had signal handlers (mask {:#x}) but the image does not record them",
            p.pid, p.sig_caught
        )));
    }
    creds::plan(p).map(|_| ())
}

/// A pipe whose two ends are numbered at or above `base` (so they survive the child moving the
/// image's fds into place) and close-on-exec.
fn pipe_above(base: RawFd) -> Result<(File, File), RestoreError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RestoreError::Os {
            what: "creating a pipe".into(),
            source: e.into(),
        })?;
    Ok((
        File::from(move_above(r, base)?),
        File::from(move_above(w, base)?),
    ))
}

fn move_above(fd: OwnedFd, base: RawFd) -> Result<OwnedFd, RestoreError> {
    if fd.as_raw_fd() >= base {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
    if moved < 0 {
        return Err(RestoreError::Os {
            what: format!("moving a pipe above fd {base}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: moved is a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}
