//! Dumping TCP sockets: what each one is doing, its options, and for an established
//! connection everything TCP_REPAIR can read (sequence numbers, both queues, the negotiated
//! options, the window, the timestamp clock).
//!
//! crest works on its own duplicate of the socket (pidfd_getfd: the same socket). A
//! connection is locked ([`super::lock`]) before its queues are read, and put into repair mode
//! so that nothing it does afterwards reaches the peer: when the dumped tree is killed, its
//! close sends no FIN and no RST. The duplicates are held by the dump's [`Session`] until then;
//! a failed dump, or one that leaves the tree running, takes them out of repair mode again.
//!
//! The session lives in a thread-local: a dump runs entirely on the thread that called it
//! (as fault injection relies on too), and the socket code it reaches is deep inside the
//! per-process collection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::images::validate::TCP_QUEUED_MAX;
use crate::images::{TcpConnection, TcpPhase, TcpSocket, TcpState};

use super::lock::{LockError, NetLock};
use super::{opts, sock};

thread_local! {
    static SESSION: RefCell<Option<State>> = const { RefCell::new(None) };
}

struct State {
    lock: NetLock,
    /// Duplicates of the sockets in repair mode: (pid, fd, socket, its SO_REUSEADDR before).
    repaired: Vec<(i32, i32, OwnedFd, i32)>,
    /// Time spent on TCP sockets during the collection.
    spent: Duration,
    /// `--skip-in-flight`: connections waiting in a listener's accept queue are left out
    /// instead of refused.
    skip_in_flight: bool,
    /// What was left out that way, one line per listener, for the dump's report.
    skipped: Vec<String>,
    /// `--tcp-close`: connections are recorded closed, without lock or repair mode.
    tcp_close: bool,
}

/// The TCP side of one dump: its network lock and the sockets it put into repair mode. Dropped
/// without [`Session::killed`], it undoes everything (repair mode off, lock table deleted).
pub struct Session {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// The connections of the processes `pids`: (pid, fd, local, remote) of each TCP socket that
/// has a peer. Processes and fds that vanish meanwhile are skipped (the freeze will see).
fn connections(pids: &[i32]) -> Vec<(SocketAddr, SocketAddr)> {
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let Ok(pidfd) = crate::sys::pidfd_open(pid) else {
            continue;
        };
        for e in dir.flatten() {
            let Ok(link) = std::fs::read_link(e.path()) else {
                continue;
            };
            if !link.to_string_lossy().starts_with("socket:[") {
                continue;
            }
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(copy) = crate::sys::pidfd_getfd(&pidfd, fd) else {
                continue;
            };
            let s = copy.as_fd();
            if !is_tcp(s) {
                continue;
            }
            let Ok(info) = sock::tcp_info(s) else {
                continue;
            };
            if info.state == sock::TCP_LISTEN || info.state == sock::TCP_CLOSE {
                continue;
            }
            // SO_PEERNAME: getpeername(2) fails in SYN_SENT.
            if let (Ok(l), Ok(r)) = (sock::local_addr(s), sock::kept_peer_addr(s)) {
                out.push((l, r));
            }
        }
    }
    out
}

/// Whether `s` is a TCP socket (IPv4 or IPv6).
pub fn is_tcp(s: BorrowedFd) -> bool {
    let family = sock::get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
    (family == libc::AF_INET || family == libc::AF_INET6)
        && sock::get_int(s, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
        && sock::get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Ok(libc::IPPROTO_TCP)
}

impl Session {
    /// Starts the TCP side of the dump of the tree `pids` (rooted at `root`), before the
    /// freeze: every connection the tree has now is locked. `skip_in_flight`: connections
    /// waiting to be accepted are left out (`--skip-in-flight`) instead of refused.
    pub fn begin(
        root: i32,
        pids: &[i32],
        skip_in_flight: bool,
        tcp_close: bool,
    ) -> Result<Session, LockError> {
        let mut lock = NetLock::new(root);
        if !tcp_close {
            lock.add(&connections(pids))?;
        }
        SESSION.with(|s| {
            *s.borrow_mut() = Some(State {
                lock,
                repaired: Vec::new(),
                spent: Duration::ZERO,
                skip_in_flight,
                skipped: Vec::new(),
                tcp_close,
            })
        });
        Ok(Session {
            _not_send: std::marker::PhantomData,
        })
    }

    /// Time spent on TCP sockets during the collection so far.
    pub fn spent(&self) -> Duration {
        SESSION.with(|s| s.borrow().as_ref().map(|st| st.spent).unwrap_or_default())
    }

    /// The connections `--skip-in-flight` left out, one line per listener.
    pub fn skipped(&self) -> Vec<String> {
        SESSION.with(|s| {
            s.borrow()
                .as_ref()
                .map(|st| st.skipped.clone())
                .unwrap_or_default()
        })
    }

    /// Whether any connection was locked.
    pub fn locked(&self) -> bool {
        SESSION.with(|s| s.borrow().as_ref().is_some_and(|st| st.lock.active()))
    }

    /// The tree runs on (`-R`): before it is released, the lock goes and the sockets leave
    /// repair mode (which sends a window probe, so the peers resume at once).
    pub fn leave_running(&self) -> Result<(), String> {
        let st = SESSION.with(|s| s.borrow_mut().take());
        let Some(mut st) = st else { return Ok(()) };
        let removed = st.lock.remove().map_err(|e| e.to_string());
        let repair = repair_off(&st.repaired);
        removed.and(repair)
    }

    /// The tree was killed with the sockets in repair mode: crest's duplicates are closed
    /// (silently, still in repair mode) and the lock stays for the restore. Returns the lock
    /// table, if there is one.
    pub fn killed(self) -> Option<String> {
        let st = SESSION.with(|s| s.borrow_mut().take());
        let st = st?;
        drop(st.repaired);
        st.lock.keep()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A failed dump: the program must find its connections as they were.
        let st = SESSION.with(|s| s.borrow_mut().take());
        if let Some(mut st) = st {
            if let Err(e) = repair_off(&st.repaired) {
                crate::warn!("{e}");
            }
            if let Err(e) = st.lock.remove() {
                crate::warn!("{e}");
            }
        }
    }
}

/// Held while one process is collected: if its collection fails, the process is released at
/// once (it is refused), so its connections leave repair mode first.
pub struct ProcessGuard {
    pid: i32,
    armed: bool,
}

impl ProcessGuard {
    pub fn new(pid: i32) -> ProcessGuard {
        ProcessGuard { pid, armed: true }
    }

    /// The process was collected: its connections stay as the dump needs them.
    pub fn collected(mut self) {
        self.armed = false;
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mine = SESSION.with(|s| {
            let mut s = s.borrow_mut();
            let Some(st) = s.as_mut() else {
                return Vec::new();
            };
            let (mine, rest) = std::mem::take(&mut st.repaired)
                .into_iter()
                .partition(|(pid, _, _, _)| *pid == self.pid);
            st.repaired = rest;
            mine
        });
        if let Err(e) = repair_off(&mine) {
            crate::warn!("{e}");
        }
    }
}

/// Takes every socket of `repaired` out of repair mode, and gives it back its SO_REUSEADDR
/// (which repair mode overrides).
fn repair_off(repaired: &[(i32, i32, OwnedFd, i32)]) -> Result<(), String> {
    let mut failed = Vec::new();
    for (pid, fd, s, reuse) in repaired {
        if let Err(e) = sock::set_int(s.as_fd(), libc::IPPROTO_TCP, sock::TCP_REPAIR, 0)
            .and_then(|()| sock::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, *reuse))
        {
            failed.push(format!("pid {pid} fd {fd}: {e}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "taking TCP connections out of repair mode failed ({})",
            failed.join(", ")
        ))
    }
}

/// Records the TCP socket `copy` (crest's duplicate of fd `fd` of process `pid`). The error is
/// what the socket is and why it cannot be dumped, for the caller's refusal.
pub fn record(pid: i32, fd: i32, copy: OwnedFd) -> Result<TcpSocket, String> {
    let started = Instant::now();
    let r = record_timed(pid, fd, copy);
    SESSION.with(|s| {
        if let Some(st) = s.borrow_mut().as_mut() {
            st.spent += started.elapsed();
        }
    });
    r
}

/// IP options the program set on a TCP socket (IPv4 IP_OPTIONS, IPv6 sticky extension
/// headers) are not carried yet (a restore sets them empty to make the kernel compute the
/// segment size again): refused.
fn refuse_ip_options(
    s: std::os::fd::BorrowedFd<'_>,
    family: i32,
    v: &str,
    local: std::net::SocketAddr,
) -> Result<(), String> {
    let options: &[(i32, i32, &str)] = if family == libc::AF_INET {
        &[(libc::IPPROTO_IP, libc::IP_OPTIONS, "IP_OPTIONS")]
    } else {
        &[
            (libc::IPPROTO_IPV6, 54, "IPV6_HOPOPTS"),
            (libc::IPPROTO_IPV6, 55, "IPV6_RTHDRDSTOPTS"),
            (libc::IPPROTO_IPV6, 57, "IPV6_RTHDR"),
            (libc::IPPROTO_IPV6, 59, "IPV6_DSTOPTS"),
        ]
    };
    for &(level, name, shown) in options {
        match sock::get_bytes(s, level, name, 2048) {
            Ok(set) if !set.is_empty() => {
                return Err(format!(
                    "a TCP/{v} socket {local} with IP options set ({} bytes of {shown}), which \
                     crest does not restore yet",
                    set.len()
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn record_timed(pid: i32, fd: i32, copy: OwnedFd) -> Result<TcpSocket, String> {
    let s = copy.as_fd();
    let family = sock::get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| format!("a TCP socket whose family cannot be read: {e}"))?;
    let v = if family == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    };
    let info = sock::tcp_info(s)
        .map_err(|e| format!("a TCP/{v} socket whose TCP_INFO cannot be read: {e}"))?;
    let local = sock::local_addr(s)
        .map_err(|e| format!("a TCP/{v} socket whose address cannot be read: {e}"))?;
    let phase = sock::tcp_phase(info.state);
    // A socket closed after a connection keeps its peer's address; one disconnected (connect
    // with AF_UNSPEC) or never connected has none.
    let closed_peer = if info.state == sock::TCP_CLOSE {
        sock::kept_peer_addr(s).ok()
    } else {
        None
    };
    // Read before repair mode, which changes SO_REUSEADDR (to "force", then to off). TCP_MAXSEG
    // is then the connection's, not one the program set.
    let connected = phase.is_some() || closed_peer.is_some() || info.state == sock::TCP_SYN_SENT;
    let (options, buf_lock) = opts::read(s, family, connected)
        .map_err(|e| format!("a TCP/{v} socket {local} whose options cannot be read: {e}"))?;
    refuse_ip_options(s, family, v, local)?;
    let state = match (info.state, closed_peer) {
        (_, Some(remote)) => closed(s, local, remote, v)?,
        (state, None) => match state {
            sock::TCP_CLOSE if local.port() == 0 && local.ip().is_unspecified() => {
                TcpState::Unbound
            }
            sock::TCP_CLOSE => TcpState::Bound { local },
            sock::TCP_SYN_SENT => {
                let remote = sock::kept_peer_addr(s).map_err(|e| {
                    format!("a connecting TCP/{v} socket whose peer cannot be read: {e}")
                })?;
                let what = format!("a TCP/{v} socket {local} connecting to {remote} (SYN_SENT)");
                let copy = copy
                    .try_clone()
                    .map_err(|e| format!("{what}: duplicating it: {e}"))?;
                connecting(pid, fd, copy, local, remote, &what)?
            }
            sock::TCP_LISTEN => {
                if info.unacked > 0 {
                    let waiting = format!(
                        "a TCP/{v} socket listening on {local} with {} connection(s) waiting to \
                         be accepted",
                        info.unacked
                    );
                    let skipped = SESSION.with(|st| {
                        st.borrow_mut()
                            .as_mut()
                            .filter(|st| st.skip_in_flight)
                            .map(|st| {
                                st.skipped.push(format!(
                                    "process {pid}: fd {fd} is {waiting}: left out \
                                     (--skip-in-flight); their clients find them reset"
                                ))
                            })
                            .is_some()
                    });
                    if !skipped {
                        return Err(format!(
                            "{waiting}, which crest cannot carry over; dump it once they are \
                             accepted, or give --skip-in-flight to leave them out (their \
                             clients then find them reset)"
                        ));
                    }
                }
                TcpState::Listening {
                    local,
                    backlog: info.sacked,
                }
            }
            _ if phase.is_some()
                && SESSION.with(|st| st.borrow().as_ref().is_some_and(|st| st.tcp_close)) =>
            {
                // `--tcp-close`: the connection is not captured, only where it went.
                let remote = sock::peer_addr(s).map_err(|e| {
                    format!("a connected TCP/{v} socket whose peer cannot be read: {e}")
                })?;
                TcpState::Closed {
                    local,
                    remote,
                    recv_queue: Vec::new(),
                }
            }
            state if phase.is_some() => {
                let phase = phase.unwrap_or(TcpPhase::Established);
                let remote = sock::peer_addr(s).map_err(|e| {
                    format!("a connected TCP/{v} socket whose peer cannot be read: {e}")
                })?;
                let what = if state == sock::TCP_ESTABLISHED {
                    format!("a TCP/{v} connection {local} -> {remote}")
                } else {
                    format!(
                        "a TCP/{v} connection {local} -> {remote} in state {}",
                        phase.name()
                    )
                };
                TcpState::Established(established(
                    pid,
                    fd,
                    copy.try_clone()
                        .map_err(|e| format!("{what}: duplicating it: {e}"))?,
                    local,
                    remote,
                    phase,
                    &what,
                )?)
            }
            other => {
                let remote = sock::peer_addr(s)
                    .map(|r| format!(" -> {r}"))
                    .unwrap_or_default();
                return Err(format!(
                "a TCP/{v} socket {local}{remote} in state {}; crest dumps only unbound, bound, \
                 listening, connecting (SYN_SENT) and connected (established or closing) TCP \
                 sockets",
                sock::state_name(other)
            ));
            }
        },
    };
    Ok(TcpSocket {
        family: family as u32,
        state,
        options,
        buf_lock,
    })
}

/// A socket closed after a connection `local` -> `remote`: what it has left to read. Nothing
/// can reach it any more, so it needs neither the lock nor repair mode.
fn closed(
    s: BorrowedFd,
    local: SocketAddr,
    remote: SocketAddr,
    v: &str,
) -> Result<TcpState, String> {
    let what = format!("a TCP/{v} socket {local} -> {remote} closed after a connection");
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd; a zero timeout only reports.
    if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 && pfd.revents & libc::POLLERR != 0 {
        return Err(format!(
            "{what}, reset, with the error the program has not read yet (crest cannot read \
             it without taking it away, nor give it back)"
        ));
    }
    match sock::get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF) {
        Ok(-1) | Err(_) => {}
        Ok(off) => {
            return Err(format!(
                "{what} with a peek offset ({off}) set by the program; crest cannot read its \
                 queue without moving it"
            ))
        }
    }
    let len = sock::ioctl_int(s, libc::FIONREAD as libc::c_ulong)
        .map_err(|e| format!("{what}: reading its receive queue length: {e}"))?
        .max(0) as usize;
    if len > TCP_QUEUED_MAX {
        return Err(format!(
            "{what} with {len} bytes unread, more than the {TCP_QUEUED_MAX} crest captures"
        ));
    }
    let recv_queue =
        sock::peek(s, len).map_err(|e| format!("{what}: reading its receive queue: {e}"))?;
    if recv_queue.len() != len {
        return Err(format!(
            "{what}: its receive queue gave {} bytes instead of {len}",
            recv_queue.len()
        ));
    }
    Ok(TcpState::Closed {
        local,
        remote,
        recv_queue,
    })
}

/// Locks the connection, puts it into repair mode and reads what a restore needs.
fn established(
    pid: i32,
    fd: i32,
    copy: OwnedFd,
    local: SocketAddr,
    remote: SocketAddr,
    phase: TcpPhase,
    what: &str,
) -> Result<TcpConnection, String> {
    let s = copy.as_fd();
    // SHUT_RD leaves a connection ESTABLISHED (or FIN_WAIT*); its receive side is closed for
    // good. Once the peer's FIN is in, the receive side is closed anyway.
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd; a zero timeout only reports.
    if !phase.fin_received()
        && unsafe { libc::poll(&mut pfd, 1, 0) } > 0
        && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
    {
        return Err(format!(
            "{what} shut down for reading; crest cannot restore a half-closed connection"
        ));
    }
    // MSG_PEEK starts at a peek offset the program set (TCP has one since Linux 6.10).
    match sock::get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF) {
        Ok(-1) | Err(_) => {}
        Ok(off) => {
            return Err(format!(
                "{what} with a peek offset ({off}) set by the program; crest cannot read its \
                 queue without moving it"
            ))
        }
    }
    let table = lock_and_repair(pid, fd, &copy, local, remote, what)?;
    read_repaired(s, local, remote, phase, table).map_err(|e| format!("{what}: {e}"))
}

/// Locks the connection `local` -> `remote` (the socket `copy`, fd `fd` of `pid`) and puts it
/// into repair mode, which the session undoes if the dump fails; returns the lock's table.
fn lock_and_repair(
    pid: i32,
    fd: i32,
    copy: &OwnedFd,
    local: SocketAddr,
    remote: SocketAddr,
    what: &str,
) -> Result<String, String> {
    let s = copy.as_fd();
    let table = SESSION.with(|st| -> Result<String, String> {
        let mut st = st.borrow_mut();
        let Some(st) = st.as_mut() else {
            return Err(format!(
                "{what}, which crest dumps only with its network lock"
            ));
        };
        if !st.lock.holds(&local, &remote) {
            st.lock
                .add(&[(local, remote)])
                .map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(st.lock.table().to_string())
    })?;
    let reuse = sock::get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR)
        .map_err(|e| format!("{what}: SO_REUSEADDR cannot be read: {e}"))?;
    let repair = |on: i32| sock::set_int(s, libc::IPPROTO_TCP, sock::TCP_REPAIR, on);
    repair(1).map_err(|e| {
        format!("{what}: TCP_REPAIR failed ({e}); repairing connections needs CAP_NET_ADMIN")
    })?;
    // From here on, the session turns repair mode off again if the dump fails.
    let held = copy
        .try_clone()
        .map_err(|e| format!("{what}: duplicating it: {e}"))?;
    SESSION.with(|st| {
        if let Some(st) = st.borrow_mut().as_mut() {
            st.repaired.push((pid, fd, held, reuse));
        }
    });
    Ok(table)
}

/// A connection in SYN_SENT: locked (so the SYN it sends again meanwhile goes nowhere) and in
/// repair mode, its initial sequence number read.
fn connecting(
    pid: i32,
    fd: i32,
    copy: OwnedFd,
    local: SocketAddr,
    remote: SocketAddr,
    what: &str,
) -> Result<TcpState, String> {
    let network_lock = lock_and_repair(pid, fd, &copy, local, remote, what)?;
    let s = copy.as_fd();
    let fail = |step: &str, e: Errno| format!("{what}: {step} failed in repair mode: {e}");
    sock::set_int(
        s,
        libc::IPPROTO_TCP,
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_SEND_QUEUE,
    )
    .map_err(|e| fail("TCP_REPAIR_QUEUE", e))?;
    let send_seq = sock::get_int(s, libc::IPPROTO_TCP, sock::TCP_QUEUE_SEQ)
        .map_err(|e| fail("TCP_QUEUE_SEQ", e))? as u32;
    sock::set_int(
        s,
        libc::IPPROTO_TCP,
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_NO_QUEUE,
    )
    .map_err(|e| fail("TCP_REPAIR_QUEUE", e))?;
    let state = sock::tcp_info(s).map_err(|e| fail("TCP_INFO", e))?.state;
    if state != sock::TCP_SYN_SENT {
        return Err(format!(
            "{what}: its state changed to {} while crest read it; dump again",
            sock::state_name(state)
        ));
    }
    Ok(TcpState::Connecting {
        local,
        remote,
        send_seq,
        network_lock,
    })
}

fn read_repaired(
    s: BorrowedFd,
    local: SocketAddr,
    remote: SocketAddr,
    phase: TcpPhase,
    network_lock: String,
) -> Result<TcpConnection, String> {
    let call = |name: &'static str| move |e: Errno| format!("{name} failed in repair mode: {e}");
    let info = sock::tcp_info(s).map_err(call("TCP_INFO"))?;
    // The lock holds the connection, so its state can only have moved on by a timer (say a
    // retransmission giving up); the phase read before must still be the one.
    if sock::tcp_phase(info.state) != Some(phase) {
        return Err(format!(
            "its state changed from {} to {} while crest read it; dump again",
            phase.name(),
            sock::state_name(info.state)
        ));
    }
    // The kernel counts the program's FIN, once written, as one byte not acknowledged yet
    // (SIOCOUTQ) and, while it waits behind unsent bytes, as one unsent (SIOCOUTQNSD).
    let fin = u32::from(phase.fin_unacked()) as i32;
    let tcp_options =
        info.options & (sock::TCPI_OPT_TIMESTAMPS | sock::TCPI_OPT_SACK | sock::TCPI_OPT_WSCALE);
    let unsent = sock::ioctl_int(s, sock::SIOCOUTQNSD).map_err(call("SIOCOUTQNSD"))?;
    let unsent = if unsent > 0 { unsent - fin } else { unsent };
    let mss = sock::get_int(s, libc::IPPROTO_TCP, libc::TCP_MAXSEG).map_err(call("TCP_MAXSEG"))?;
    let timestamp = if tcp_options & sock::TCPI_OPT_TIMESTAMPS != 0 {
        sock::get_int(s, libc::IPPROTO_TCP, sock::TCP_TIMESTAMP).map_err(call("TCP_TIMESTAMP"))?
            as u32
    } else {
        0
    };
    let w = sock::get_bytes(s, libc::IPPROTO_TCP, sock::TCP_REPAIR_WINDOW, 20)
        .map_err(call("TCP_REPAIR_WINDOW"))?;
    if w.len() != 20 {
        return Err(format!(
            "TCP_REPAIR_WINDOW gave {} bytes instead of 20",
            w.len()
        ));
    }
    let mut window = [0u32; 5];
    for (i, v) in window.iter_mut().enumerate() {
        *v = u32::from_ne_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
    }
    // FIONREAD leaves the peer's FIN out already.
    let (recv_seq, recv_queue) = queue(
        s,
        sock::TCP_RECV_QUEUE,
        libc::FIONREAD as libc::c_ulong,
        0,
        "receive",
    )?;
    let (send_seq, send_queue) = queue(
        s,
        sock::TCP_SEND_QUEUE,
        libc::TIOCOUTQ as libc::c_ulong,
        fin,
        "send",
    )?;
    sock::set_int(
        s,
        libc::IPPROTO_TCP,
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_NO_QUEUE,
    )
    .map_err(call("TCP_REPAIR_QUEUE"))?;
    Ok(TcpConnection {
        local,
        remote,
        send_seq,
        recv_seq,
        unsent: (unsent.max(0) as u32).min(send_queue.len() as u32),
        send_queue,
        recv_queue,
        mss: mss as u32,
        tcp_options,
        snd_wscale: info.snd_wscale,
        rcv_wscale: info.rcv_wscale,
        timestamp,
        window,
        network_lock,
        phase,
    })
}

/// One queue's sequence number and bytes, read twice to be sure nothing moved meanwhile.
/// `len_ioctl` gives its length, `not_data` more than the bytes in it.
fn queue(
    s: BorrowedFd,
    which: i32,
    len_ioctl: libc::c_ulong,
    not_data: i32,
    name: &str,
) -> Result<(u32, Vec<u8>), String> {
    let fail = |step: &str, e: Errno| format!("reading the {name} queue ({step}) failed: {e}");
    sock::set_int(s, libc::IPPROTO_TCP, sock::TCP_REPAIR_QUEUE, which)
        .map_err(|e| fail("TCP_REPAIR_QUEUE", e))?;
    let seq = |s| sock::get_int(s, libc::IPPROTO_TCP, sock::TCP_QUEUE_SEQ).map(|v| v as u32);
    let before = seq(s).map_err(|e| fail("TCP_QUEUE_SEQ", e))?;
    let len =
        (sock::ioctl_int(s, len_ioctl).map_err(|e| fail("length", e))? - not_data).max(0) as usize;
    if len > TCP_QUEUED_MAX {
        return Err(format!(
            "{len} bytes in its {name} queue, more than the {TCP_QUEUED_MAX} crest captures"
        ));
    }
    let data = sock::peek(s, len).map_err(|e| fail("MSG_PEEK", e))?;
    let after = seq(s).map_err(|e| fail("TCP_QUEUE_SEQ", e))?;
    if data.len() != len || before != after {
        return Err(format!(
            "its {name} queue changed while crest read it ({len} bytes, then {}); dump again",
            data.len()
        ));
    }
    Ok((before, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Shutdown, TcpListener, TcpStream};

    #[test]
    fn waiting_connections_and_connections_outside_a_dump_are_refused_by_name() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = l.local_addr().unwrap();
        let client = TcpStream::connect(at).unwrap();
        let me = std::process::id() as i32;
        let err = record(me, l.as_raw_fd(), OwnedFd::from(l.try_clone().unwrap())).unwrap_err();
        assert!(
            err.contains(&format!("listening on {at} with 1 connection(s) waiting")),
            "{err}"
        );
        let (mut server, _) = l.accept().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.read(&mut [0u8; 1]).unwrap(), 0);
        let err = record(
            me,
            server.as_raw_fd(),
            OwnedFd::from(server.try_clone().unwrap()),
        )
        .unwrap_err();
        assert!(
            err.contains("in state CLOSE_WAIT")
                && err.contains(&at.to_string())
                && err.contains("only with its network lock"),
            "{err}"
        );
        // Without a dump's session (and its lock), a connection is not put into repair mode.
        let err = record(
            me,
            client.as_raw_fd(),
            OwnedFd::from(client.try_clone().unwrap()),
        )
        .unwrap_err();
        assert!(err.contains("in state FIN_WAIT"), "{err}");

        // Both ends shut down: both sockets end up closed, with end of file to read; they are
        // recorded with their peers.
        server.shutdown(Shutdown::Write).unwrap();
        assert_eq!((&client).read(&mut [0u8; 1]).unwrap(), 0);
        for s in [&client, &server] {
            let closed = (0..1000).any(|_| {
                let st = sock::tcp_info(s.as_fd()).unwrap().state;
                st == sock::TCP_CLOSE || {
                    std::thread::yield_now();
                    false
                }
            });
            assert!(closed);
            let t = record(me, s.as_raw_fd(), OwnedFd::from(s.try_clone().unwrap())).unwrap();
            let TcpState::Closed {
                local,
                remote,
                recv_queue,
            } = t.state
            else {
                panic!("{t:?}")
            };
            assert_eq!(local, s.local_addr().unwrap());
            assert!(recv_queue.is_empty());
            assert!(remote == at || local == at, "{local} -> {remote}");
        }
        // A fresh socket, closed too, is recorded.
        let fresh = sock::tcp_socket(libc::AF_INET).unwrap();
        let raw = fresh.as_raw_fd();
        assert!(record(me, raw, fresh).is_ok());
    }
}
