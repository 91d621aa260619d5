//! Terminals: which fds of the tree are terminals, which processes have a controlling
//! terminal, and whether crest can give them back.
//!
//! A terminal cannot be reopened by path at restore: a pty slave `/dev/pts/N` belongs to a
//! master held by someone else (a terminal emulator, sshd, tmux), whose index may be free or
//! another terminal's by then; a hung-up terminal fails every write with EIO. What crest does
//! instead follows CRIU's `--shell-job`: a tree attached to the terminal of the shell that runs
//! `crest dump -j` is recorded as such, and `crest restore -j` attaches it to the terminal
//! that crest restore runs on (see `restore::tty`). Everything else is refused, every problem
//! of the tree at once:
//! - without `-j`, any terminal fd and any controlling terminal (the message names the flag);
//! - with `-j`, a terminal other than crest's own (its standard input);
//! - pseudo-terminal masters (`/dev/ptmx`): a pty pair created inside the tree (`script`, an
//!   expect-like program) or a master whose slave is outside it cannot be recreated yet.
//!
//! An fd on a terminal of the machine itself (the console, a virtual console, a serial port)
//! that is no process's controlling terminal is not refused: its device node reaches the same
//! terminal at restore, so it is reopened by path as a character device ([`TtyKind::
//! reopened_by_path`]). As a controlling terminal it is refused like any other.
//!
//! Terminal devices are recognised by their device number, through `/proc/tty/drivers` (with
//! the well-known numbers as a fallback): 5:0 `/dev/tty` (the caller's controlling terminal),
//! 5:1 the console, 5:2 `ptmx`, 128-135 pty masters, 136-143 pty slaves, 4:x virtual consoles
//! and serial ports, and any other registered tty driver.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::images::{MachineTty, ShellJob, TreeTask};
use crate::proc::{FdTarget, Proc, TreeIds, TtyDriver};

use super::DumpError;

/// The kinds of terminal device crest tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyKind {
    /// 5:0 `/dev/tty`: whatever the opener's controlling terminal was.
    CurrentTty,
    /// 5:1 `/dev/console`.
    Console,
    /// `/dev/ptmx` (5:2) or a legacy master (128-135).
    PtyMaster,
    /// A pty slave `/dev/pts/N` (136-143).
    PtySlave,
    /// A virtual console `/dev/ttyN` (4:0-63).
    VirtualConsole,
    /// A serial port (`ttyS`, `ttyUSB`, `ttyACM`, ...).
    Serial,
    /// Another tty driver.
    Other,
}

impl TtyKind {
    /// A terminal of the machine itself (the console, a virtual console, a serial port): its
    /// device node reaches the same terminal at restore, so an fd on it that is no process's
    /// controlling terminal is reopened by path (without O_NOCTTY never being dropped) like
    /// any character device. A pty belongs to whoever holds its master, `/dev/tty` to the
    /// opener's session: neither can be reopened so.
    pub fn reopened_by_path(self) -> bool {
        matches!(
            self,
            TtyKind::Console | TtyKind::VirtualConsole | TtyKind::Serial
        )
    }
}

/// crest's view of terminals during one dump: `--shell-job` or not, crest's own terminal, and
/// the kernel's tty drivers.
pub struct Terminals {
    shell_job: bool,
    /// crest's standard input's device when it is a terminal, or why it is not.
    own: Result<u64, String>,
    drivers: Vec<TtyDriver>,
    survey: Survey,
}

/// What the survey of the frozen processes found.
#[derive(Default)]
struct Survey {
    /// Every terminal fd of the tree.
    fds: Vec<TtyFd>,
    /// Processes with a controlling terminal: (pid, sid, device, foreground group).
    cttys: Vec<(i32, i32, u64, i32)>,
    problems: Vec<DumpError>,
}

/// One fd of a process of the tree that is a terminal.
#[derive(Debug, Clone)]
struct TtyFd {
    pid: i32,
    fd: i32,
    rdev: u64,
    kind: TtyKind,
    /// The pty index: N of `/dev/pts/N` for a slave, of its slave for a master.
    index: Option<u32>,
    /// The process's controlling terminal (0: none), for `/dev/tty`.
    ctty: u64,
    /// The path the fd's link shows.
    path: std::path::PathBuf,
}

/// The outcome of the survey: what the image records, and which fds are the shell's terminal.
pub struct Accepted {
    pub shell_job: Option<ShellJob>,
    /// (pid, fd) of every fd that is the shell's terminal.
    pub shell_fds: HashSet<(i32, i32)>,
    /// Terminals of the machine that control sessions of the tree.
    pub machine_ttys: Vec<MachineTty>,
}

fn dev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// `major:minor` of a device number.
pub fn numbers(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

impl Terminals {
    /// Reads crest's own terminal and the kernel's tty drivers.
    pub fn new(shell_job: bool) -> Terminals {
        Terminals {
            shell_job,
            own: own_terminal(),
            // Without the table, the well-known numbers still recognise the usual terminals.
            drivers: crate::proc::tty_drivers().unwrap_or_default(),
            survey: Survey::default(),
        }
    }

    /// What kind of terminal device `rdev` is, or None when it is not a terminal.
    pub fn classify(&self, rdev: u64) -> Option<TtyKind> {
        classify(&self.drivers, rdev)
    }

    /// A name for terminal `rdev`: `/dev/pts/3 (136:3)`.
    fn name(&self, rdev: u64) -> String {
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let node = self
            .drivers
            .iter()
            .find(|d| d.serves(major, minor))
            .map(|d| {
                if d.minor_first == d.minor_last {
                    d.node.clone()
                } else if d.kind == "pty:slave" {
                    format!("{}/{}", d.node, minor - d.minor_first)
                } else {
                    format!("{} device", d.node)
                }
            });
        match node {
            Some(n) => format!("{n} ({})", numbers(rdev)),
            None if self.classify(rdev) == Some(TtyKind::PtySlave) => {
                format!("/dev/pts/{} ({})", pty_index(rdev), numbers(rdev))
            }
            None => format!("terminal device {}", numbers(rdev)),
        }
    }

    fn own_text(&self) -> String {
        match &self.own {
            Ok(rdev) => format!("crest runs on {}", self.name(*rdev)),
            Err(why) => why.clone(),
        }
    }

    /// Looks at the frozen process `proc` (whose ids `ids` were read while frozen): its
    /// controlling terminal and every fd that is a terminal.
    pub fn survey(&mut self, proc: &Proc, ids: &TreeIds) {
        let pid = proc.pid();
        let ctty = ids.tty_nr as u32 as u64;
        if ctty != 0 {
            // tty_nr is the kernel's encoding of a dev_t, which glibc's makedev shares.
            let ctty = dev(libc::major(ctty), libc::minor(ctty));
            self.survey.cttys.push((pid, ids.sid, ctty, ids.tpgid));
        }
        let fds = match proc.fds() {
            Ok(f) => f,
            Err(e) => return self.survey.problems.push(e.into()),
        };
        for entry in fds {
            let FdTarget::Path { path, .. } = &entry.target else {
                continue;
            };
            let md = match proc.stat_link(&format!("fd/{}", entry.fd)) {
                Ok(md) => md,
                Err(e) => return self.survey.problems.push(e.into()),
            };
            if !md.file_type().is_char_device() {
                continue;
            }
            let rdev = md.rdev();
            let Some(kind) = self.classify(rdev) else {
                continue;
            };
            let index = match kind {
                TtyKind::PtySlave => Some(pty_index(rdev)),
                TtyKind::PtyMaster => match proc.fdinfo(entry.fd) {
                    Ok(info) => info.tty_index,
                    Err(e) => return self.survey.problems.push(e.into()),
                },
                _ => None,
            };
            self.survey.fds.push(TtyFd {
                pid,
                fd: entry.fd,
                rdev,
                kind,
                index,
                ctty: self
                    .survey
                    .cttys
                    .iter()
                    .find(|c| c.0 == pid)
                    .map_or(0, |c| c.2),
                path: path.clone(),
            });
        }
    }

    /// Decides, for the whole tree (`tasks`), what is refused (every problem) and what the
    /// image records.
    pub fn finish(mut self, tasks: &[TreeTask]) -> Result<Accepted, Vec<DumpError>> {
        let mut survey = std::mem::take(&mut self.survey);
        let mut problems = std::mem::take(&mut survey.problems);
        let refuse = |pid: i32, what: String| DumpError::Terminal { pid, what };

        // Pty pairs inside the tree, by index: masters, slave fds and controlling terminals.
        let masters: BTreeMap<u32, Vec<&TtyFd>> = survey
            .fds
            .iter()
            .filter(|f| f.kind == TtyKind::PtyMaster)
            .fold(BTreeMap::new(), |mut m, f| {
                if let Some(i) = f.index {
                    m.entry(i).or_insert_with(Vec::new).push(f);
                }
                m
            });
        let slave_in_tree = |rdev: u64| {
            (self.classify(rdev) == Some(TtyKind::PtySlave))
                .then(|| pty_index(rdev))
                .filter(|i| masters.contains_key(i))
        };
        for (index, holders) in &masters {
            let mut slaves: Vec<String> = survey
                .fds
                .iter()
                .filter(|f| f.kind == TtyKind::PtySlave && f.index == Some(*index))
                .map(|f| format!("process {} fd {}", f.pid, f.fd))
                .collect();
            slaves.extend(
                survey
                    .cttys
                    .iter()
                    .filter(|c| slave_in_tree(c.2) == Some(*index))
                    .map(|c| format!("process {} (its controlling terminal)", c.0)),
            );
            if slaves.is_empty() {
                for f in holders {
                    problems.push(refuse(
                        f.pid,
                        format!(
                            "fd {} is the master of pseudo-terminal /dev/pts/{index}, whose \
                             slave is outside the tree; crest cannot recreate a \
                             pseudo-terminal pair yet, so the master cannot be restored",
                            f.fd
                        ),
                    ));
                }
                continue;
            }
            let held: Vec<String> = holders
                .iter()
                .map(|f| format!("process {} fd {}", f.pid, f.fd))
                .collect();
            problems.push(refuse(
                holders[0].pid,
                format!(
                    "a pseudo-terminal pair is inside the tree: /dev/pts/{index}, its master \
                     held by {}, its slave by {}; crest cannot recreate a pseudo-terminal pair \
                     (with the data in flight) yet, so the tree cannot be dumped, with or \
                     without --shell-job",
                    held.join(", "),
                    slaves.join(", ")
                ),
            ));
        }
        let masterless = |f: &TtyFd| f.index.is_none();
        for f in survey
            .fds
            .iter()
            .filter(|f| f.kind == TtyKind::PtyMaster && masterless(f))
        {
            problems.push(refuse(
                f.pid,
                format!(
                    "fd {} is a pseudo-terminal master whose index the kernel does not show; \
                     crest cannot restore it",
                    f.fd
                ),
            ));
        }

        let machine_ttys = self.machine_cttys(&survey, tasks, &mut problems);
        let machine_ctty = |rdev: u64| machine_ttys.iter().any(|m| same_device(m.rdev, rdev));

        // Everything else must be the shell's terminal, with -j.
        let mut accepted = HashSet::new();
        let mut shell_used = false;
        // (pid, terminal) -> what of the process is on it ("fd 1", "its controlling terminal"):
        // one refusal per process and terminal.
        let mut refused: BTreeMap<(i32, u64), Vec<String>> = BTreeMap::new();
        for f in &survey.fds {
            if f.kind == TtyKind::PtyMaster || slave_in_tree(f.rdev).is_some() {
                continue;
            }
            let what_fd = format!("fd {}", f.fd);
            let rdev = if f.kind == TtyKind::CurrentTty {
                if f.ctty == 0 {
                    problems.push(refuse(
                        f.pid,
                        format!(
                            "fd {} is /dev/tty (5:0), but the process has no controlling \
                             terminal any more; crest cannot restore it",
                            f.fd
                        ),
                    ));
                    continue;
                }
                f.ctty
            } else {
                f.rdev
            };
            let a_ctty = survey.cttys.iter().any(|c| same_device(c.2, rdev)) && !machine_ctty(rdev);
            if self.check(rdev).is_ok() {
                accepted.insert((f.pid, f.fd));
                shell_used = true;
            } else if f.kind.reopened_by_path() && !a_ctty {
                // Recorded as a character device by the fd walk.
            } else {
                refused.entry((f.pid, rdev)).or_default().push(what_fd);
            }
        }
        let mut ctty_sessions = Vec::new();
        let mut foreground = None;
        for &(pid, sid, rdev, tpgid) in &survey.cttys {
            if slave_in_tree(rdev).is_some() || machine_ctty(rdev) {
                continue;
            }
            if self.check(rdev).is_ok() {
                shell_used = true;
                if !ctty_sessions.contains(&sid) {
                    ctty_sessions.push(sid);
                }
                let leads = tasks.iter().any(|t| t.pid == tpgid && t.pgid == tpgid);
                if tpgid > 0 && leads {
                    foreground = Some(tpgid);
                }
            } else {
                refused
                    .entry((pid, rdev))
                    .or_default()
                    .push("its controlling terminal".into());
            }
        }
        for ((pid, rdev), subjects) in refused {
            let Err(why) = self.check(rdev) else {
                continue;
            };
            let (list, verb) = match subjects.split_last() {
                Some((last, [])) => (last.clone(), "is"),
                Some((last, rest)) => (format!("{} and {last}", rest.join(", ")), "are"),
                None => continue,
            };
            problems.push(refuse(pid, format!("{list} {verb} on the terminal {why}")));
        }
        if ctty_sessions.len() > 1 {
            // One terminal controls one session; seen otherwise only if it changed meanwhile.
            problems.push(refuse(
                tasks[0].pid,
                format!(
                    "the tree's processes have the shell's terminal as controlling terminal in \
                     sessions {ctty_sessions:?}; a terminal controls one session"
                ),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let shell_job = match (&self.own, shell_used) {
            (Ok(rdev), true) => Some(ShellJob {
                rdev: *rdev,
                ctty_session: ctty_sessions.first().copied(),
                foreground,
            }),
            _ => None,
        };
        Ok(Accepted {
            shell_job,
            shell_fds: accepted,
            machine_ttys,
        })
    }

    /// The terminals of the machine (not the shell's with `-j`) that control a session led by
    /// a task of the tree, each with a device node to open it by at restore. Any other
    /// controlling terminal is left to the refusals of [`Terminals::finish`].
    fn machine_cttys(
        &self,
        survey: &Survey,
        tasks: &[TreeTask],
        problems: &mut Vec<DumpError>,
    ) -> Vec<MachineTty> {
        let mut found: Vec<MachineTty> = Vec::new();
        for &(pid, sid, rdev, tpgid) in &survey.cttys {
            let machine = self.classify(rdev).is_some_and(TtyKind::reopened_by_path);
            let leader_in_tree = tasks.iter().any(|t| t.pid == sid && t.sid == sid);
            if !machine || !leader_in_tree || self.check(rdev).is_ok() {
                continue;
            }
            if found.iter().any(|m| m.session == sid) {
                continue;
            }
            let held = survey.fds.iter().find(|f| same_device(f.rdev, rdev));
            let path = match held.map(|f| f.path.clone()).or_else(|| device_node(rdev)) {
                Some(p) => p.to_string_lossy().into_owned(),
                None => {
                    problems.push(DumpError::Terminal {
                        pid,
                        what: format!(
                            "its controlling terminal {} has no device node under /dev and \
                            no fd of the tree holds it, so a restore could not open it",
                            self.name(rdev)
                        ),
                    });
                    continue;
                }
            };
            let leads = |g: i32| {
                tasks
                    .iter()
                    .any(|t| t.pid == g && t.pgid == g && t.sid == sid)
            };
            found.push(MachineTty {
                path,
                rdev,
                session: sid,
                foreground: (tpgid > 0 && leads(tpgid)).then_some(tpgid),
            });
        }
        found
    }

    /// Whether the terminal `rdev` may be dumped: only as crest's own terminal with
    /// `--shell-job`. The refusal names the terminal and the flag, to follow "... on the
    /// terminal ".
    fn check(&self, rdev: u64) -> Result<(), String> {
        let name = self.name(rdev);
        if !self.shell_job {
            return Err(format!(
                "{name}; a tree attached to a terminal is dumped only with --shell-job (-j), by \
                 a crest running on that terminal (crest restore --shell-job then attaches the \
                 tree to the terminal it runs on)"
            ));
        }
        match &self.own {
            Ok(own) if same_device(*own, rdev) => Ok(()),
            _ => Err(format!(
                "{name}, which is not the terminal crest runs on \
                 ({}); with --shell-job (-j) crest takes only a tree attached to the terminal of \
                 the shell it runs in: run crest dump -j from that terminal, its standard input \
                 on it",
                self.own_text()
            )),
        }
    }
}

fn same_device(a: u64, b: u64) -> bool {
    libc::major(a) == libc::major(b) && libc::minor(a) == libc::minor(b)
}

/// N of `/dev/pts/N` for a pty slave device: minors continue over majors 136-143.
fn pty_index(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (major.saturating_sub(136)) * 256 + minor
}

/// The kind of terminal `rdev` is, from the kernel's driver table, else from the well-known
/// numbers; None when it is not a terminal.
pub fn classify(drivers: &[TtyDriver], rdev: u64) -> Option<TtyKind> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if let Some(d) = drivers.iter().find(|d| d.serves(major, minor)) {
        return Some(match d.kind.as_str() {
            "system:/dev/tty" => TtyKind::CurrentTty,
            "system:console" => TtyKind::Console,
            "system:vtmaster" | "console" => TtyKind::VirtualConsole,
            "system" if d.node == "/dev/ptmx" => TtyKind::PtyMaster,
            "pty:master" => TtyKind::PtyMaster,
            "pty:slave" => TtyKind::PtySlave,
            "serial" => TtyKind::Serial,
            _ => TtyKind::Other,
        });
    }
    match (major, minor) {
        (5, 0) => Some(TtyKind::CurrentTty),
        (5, 1) => Some(TtyKind::Console),
        (5, 2) | (128..=135, _) => Some(TtyKind::PtyMaster),
        (136..=143, _) => Some(TtyKind::PtySlave),
        (4, 0..=63) => Some(TtyKind::VirtualConsole),
        (4, _) | (188, _) | (204, _) | (166, _) => Some(TtyKind::Serial),
        _ => None,
    }
}

/// A character device node directly under /dev with device number `rdev`.
fn device_node(rdev: u64) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/dev").ok()?.flatten().find_map(|e| {
        let md = std::fs::symlink_metadata(e.path()).ok()?;
        (md.file_type().is_char_device() && same_device(md.rdev(), rdev)).then(|| e.path())
    })
}

/// crest's standard input's device when it is a terminal, or a sentence saying why not.
fn own_terminal() -> Result<u64, String> {
    let stdin = std::io::stdin();
    let st = nix::sys::stat::fstat(&stdin)
        .map_err(|e| format!("crest's standard input cannot be examined ({e})"))?;
    // SAFETY: isatty only inspects the descriptor.
    let is_tty = unsafe { libc::isatty(0) } == 1;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || !is_tty {
        return Err("crest's standard input is not a terminal".into());
    }
    Ok(st.st_rdev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminals_are_told_apart_with_or_without_the_driver_table() {
        let drivers = crate::proc::tty_drivers().unwrap();
        for table in [&drivers[..], &[]] {
            assert_eq!(classify(table, dev(5, 0)), Some(TtyKind::CurrentTty));
            assert_eq!(classify(table, dev(5, 1)), Some(TtyKind::Console));
            assert_eq!(classify(table, dev(5, 2)), Some(TtyKind::PtyMaster));
            assert_eq!(classify(table, dev(136, 7)), Some(TtyKind::PtySlave));
            assert_eq!(classify(table, dev(4, 1)), Some(TtyKind::VirtualConsole));
            assert_eq!(classify(table, dev(4, 64)), Some(TtyKind::Serial));
            assert_eq!(classify(table, dev(1, 3)), None, "/dev/null");
            assert_eq!(classify(table, dev(1, 5)), None, "/dev/zero");
        }
        assert_eq!(pty_index(dev(136, 7)), 7);
        assert_eq!(pty_index(dev(137, 1)), 257);
        assert_eq!(pty_index(dev(136, 4000)), 4000);
    }

    #[test]
    fn a_refusal_names_the_terminal_and_the_flag() {
        let mut t = Terminals::new(false);
        t.own = Ok(dev(136, 5));
        let err = t.check(dev(136, 3)).unwrap_err();
        assert!(
            err.starts_with("/dev/pts/3 (136:3)") && err.contains("--shell-job (-j)"),
            "{err}"
        );
        t.shell_job = true;
        assert!(t.check(dev(136, 5)).is_ok());
        let err = t.check(dev(136, 3)).unwrap_err();
        assert!(
            err.contains("not the terminal crest runs on")
                && err.contains("crest runs on /dev/pts/5"),
            "{err}"
        );
        t.own = own_terminal_error();
        let err = t.check(dev(136, 3)).unwrap_err();
        assert!(err.contains("not a terminal"), "{err}");
    }

    fn own_terminal_error() -> Result<u64, String> {
        Err("crest's standard input is not a terminal".into())
    }
}
