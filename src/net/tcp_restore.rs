//! Recreating TCP sockets, in crest, before the fork (the tasks inherit them like any open
//! file): unbound sockets, bound ones, listeners (bound again with SO_REUSEADDR for the time of
//! the bind, as connections of the old listener may linger in TIME_WAIT), and established
//! connections rebuilt in repair mode without a packet on the wire:
//! socket -> options that decide the bind -> TCP_REPAIR on -> the sequence number of each queue
//! -> bind, connect (in repair mode it only hashes the connection) -> the negotiated options
//! (MSS, window scales, SACK, timestamps) and the timestamp clock -> the receive queue and the
//! send queue refilled (every byte of the send queue counts as sent: what the peer had not
//! acknowledged, or not received yet, it gets by retransmission) -> the window -> the other
//! options -> the FINs of a closing connection: the program's by shutdown(SHUT_WR) with the
//! send queue selected (so it counts as sent, and is retransmitted if the peer had not
//! acknowledged it), the peer's, and the peer's acknowledgement of the program's FIN, by
//! segments forged from the peer ([`inject`]), in the order that leads to the dumped state.
//! The connections stay in repair mode until [`Repaired::resume`], right before the
//! tree is released: the network lock goes, then repair mode (whose end sends a window probe,
//! so the peer learns at once that the connection lives).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use crate::images::{TcpConnection, TcpPhase, TcpSocket, TcpState};

use super::{inject, lock, opts, sock};

/// TCP_REPAIR value that leaves repair mode without sending a window probe.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;

/// Largest chunk written into a queue at once (halved when the kernel cannot allocate it).
const CHUNK: usize = 256 * 1024;

/// The connections a restore rebuilt, still in repair mode, and the lock tables to delete.
#[derive(Default)]
pub struct Repaired {
    /// (who, socket, its SO_REUSEADDR, which repair mode overrides).
    sockets: Vec<(String, OwnedFd, i32)>,
    tables: BTreeSet<String>,
}

/// A restore error: what (naming pid, fd and socket) and the errno.
#[derive(Debug)]
pub struct TcpRestoreError {
    pub what: String,
    pub errno: Option<Errno>,
}

impl std::fmt::Display for TcpRestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}: {e}", self.what),
            None => write!(f, "{}", self.what),
        }
    }
}

impl Repaired {
    /// Deletes lock table `table` at [`Repaired::resume`] too (the lock of a connection made
    /// again closed, `restore --tcp-close`).
    pub fn unlock_at_resume(&mut self, table: &str) {
        self.tables.insert(table.to_string());
    }

    /// Whether any connection waits for [`Repaired::resume`].
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty() && self.tables.is_empty()
    }

    /// The sockets are in place in their processes: the lock goes, then repair mode.
    pub fn resume(self) -> Result<(), TcpRestoreError> {
        for t in &self.tables {
            lock::unlock(t).map_err(|e| TcpRestoreError {
                what: e.to_string(),
                errno: None,
            })?;
        }
        for (who, s, reuse) in &self.sockets {
            sock::set_int(s.as_fd(), libc::IPPROTO_TCP, sock::TCP_REPAIR, 0)
                .and_then(|()| {
                    sock::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, *reuse)
                })
                .map_err(|e| TcpRestoreError {
                    what: format!("{who}: leaving repair mode (TCP_REPAIR off)"),
                    errno: Some(e),
                })?;
        }
        Ok(())
    }
}

/// Creates the socket `t` with the file status flags `status_flags` of its description; `who`
/// names it in messages (pid, fd). The descriptor is close-on-exec.
pub fn create(
    t: &TcpSocket,
    status_flags: u32,
    who: &str,
    repaired: &mut Repaired,
) -> Result<OwnedFd, TcpRestoreError> {
    let err = |what: String| {
        move |e: Errno| TcpRestoreError {
            what: format!("{who}: {what}"),
            errno: Some(e),
        }
    };
    let msg = |what: String| TcpRestoreError {
        what: format!("{who}: {what}"),
        errno: None,
    };
    let s = sock::tcp_socket(t.family as i32).map_err(err("creating a TCP socket".into()))?;
    let fd = s.as_fd();
    match &t.state {
        TcpState::Unbound => {
            opts::apply(fd, &t.options, |_| true).map_err(msg)?;
        }
        TcpState::Bound { local } => {
            opts::apply(fd, &t.options, |_| true).map_err(msg)?;
            sock::bind(fd, local).map_err(err(format!("binding a TCP socket to {local}")))?;
        }
        TcpState::Listening { local, backlog } => {
            opts::apply(fd, &t.options, |_| true).map_err(msg)?;
            listen(fd, local, *backlog).map_err(err(format!("listening on {local}")))?;
        }
        TcpState::Connecting {
            local,
            remote,
            send_seq,
            network_lock,
        } => {
            opts::apply(fd, &t.options, opts::before_bind).map_err(msg)?;
            connecting(fd, local, remote, *send_seq).map_err(|(step, e)| TcpRestoreError {
                what: format!("{who}: TCP socket {local} connecting to {remote}: {step}"),
                errno: Some(e),
            })?;
            sock::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse_addr(t))
                .map_err(err("setting SO_REUSEADDR".into()))?;
            opts::apply(fd, &t.options, |o| !opts::before_bind(o)).map_err(msg)?;
            repaired.tables.insert(network_lock.clone());
        }
        TcpState::Closed {
            local,
            remote,
            recv_queue,
        } => {
            opts::apply(fd, &t.options, opts::before_bind).map_err(msg)?;
            closed(fd, local, remote, recv_queue).map_err(|(step, e)| TcpRestoreError {
                what: format!(
                    "{who}: TCP socket {local} -> {remote} closed after a connection: {step}"
                ),
                errno: Some(e),
            })?;
            // Repair mode overrode it.
            sock::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse_addr(t))
                .map_err(err("setting SO_REUSEADDR".into()))?;
            opts::apply(fd, &t.options, |o| !opts::before_bind(o)).map_err(msg)?;
        }
        TcpState::Established(c) => {
            let what = format!("TCP connection {} -> {}", c.local, c.remote);
            opts::apply(fd, &t.options, opts::before_bind).map_err(msg)?;
            connection(fd, c).map_err(|(step, e)| TcpRestoreError {
                what: format!("{who}: {what}: {step}"),
                errno: Some(e),
            })?;
            opts::apply(fd, &t.options, |o| !opts::before_bind(o)).map_err(msg)?;
            let copy = s.try_clone().map_err(|e| TcpRestoreError {
                what: format!("{who}: duplicating the {what}: {e}"),
                errno: None,
            })?;
            let reuse = reuse_addr(t);
            repaired
                .sockets
                .push((format!("{who}: {what}"), copy, reuse));
            repaired.tables.insert(c.network_lock.clone());
        }
    }
    opts::apply_buf_lock(fd, t.buf_lock).map_err(msg)?;
    if status_flags as i32 & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(err("making the socket non-blocking".into())(Errno::last()));
        }
    }
    Ok(s)
}

/// The SO_REUSEADDR the program had set on `t` (repair mode overrides it).
fn reuse_addr(t: &TcpSocket) -> i32 {
    t.options
        .iter()
        .find(|o| (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_REUSEADDR))
        .and_then(|o| o.value.get(..4))
        .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Binds (with SO_REUSEADDR for the bind only) and listens.
fn listen(fd: BorrowedFd, local: &std::net::SocketAddr, backlog: u32) -> Result<(), Errno> {
    let reuse = sock::get_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    sock::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let backlog = backlog.min(i32::MAX as u32) as i32;
    let bind_and_listen = || -> Result<(), Errno> {
        if sock::local_addr(fd)?.port() == 0 {
            sock::bind(fd, local)?;
        }
        // SAFETY: listen(2) on a socket we own.
        if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    };
    if let Err(e) = bind_and_listen() {
        // Listeners of a SO_REUSEPORT group that turned the option off since stay in the
        // group; crest's own listeners on the address (restored a moment ago) and this one
        // join it again with the option on for the bind and listen, then get their values
        // back. Sockets of anyone else are left alone: they still conflict.
        let ours = crest_listeners_on(local);
        if e != Errno::EADDRINUSE || ours.is_empty() {
            return Err(e);
        }
        let mut saved = Vec::new();
        for &raw in ours.iter().chain(std::iter::once(&fd.as_raw_fd())) {
            // SAFETY: raw is open in crest while this function runs; only its options change.
            let other = unsafe { BorrowedFd::borrow_raw(raw) };
            saved.push((
                raw,
                sock::get_int(other, libc::SOL_SOCKET, libc::SO_REUSEPORT)?,
            ));
            sock::set_int(other, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        let again = bind_and_listen();
        // Backwards: crest may hold one socket under two fds, whose second save saw the 1.
        for (raw, v) in saved.into_iter().rev() {
            // SAFETY: as above.
            let other = unsafe { BorrowedFd::borrow_raw(raw) };
            sock::set_int(other, libc::SOL_SOCKET, libc::SO_REUSEPORT, v)?;
        }
        again?;
    }
    sock::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse)
}

/// The TCP sockets crest itself holds listening on `local`: ones it restored a moment ago.
fn crest_listeners_on(local: &std::net::SocketAddr) -> Vec<std::os::fd::RawFd> {
    let Ok(me) = crate::proc::Proc::open(std::process::id() as i32) else {
        return Vec::new();
    };
    let Ok(fds) = me.fds() else {
        return Vec::new();
    };
    fds.iter()
        .map(|f| f.fd)
        .filter(|&raw| {
            // SAFETY: the fd is open in crest for the duration of this look; it is only queried.
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            let int = |level, name| sock::get_int(fd, level, name).ok();
            int(libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
                && int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
                && sock::local_addr(fd).ok().as_ref() == Some(local)
        })
        .collect()
}

/// Connects again, from the same initial sequence number: bound in repair mode (past the
/// old connection's leftovers), then an ordinary non-blocking connect, whose SYN the lock
/// drops until the restore is over (the kernel sends it again after a second); the error
/// names the step.
fn connecting(
    fd: BorrowedFd,
    local: &std::net::SocketAddr,
    remote: &std::net::SocketAddr,
    send_seq: u32,
) -> Result<(), (&'static str, Errno)> {
    let tcp = |name: i32, v: i32, step: &'static str| {
        sock::set_int(fd, libc::IPPROTO_TCP, name, v).map_err(|e| (step, e))
    };
    tcp(sock::TCP_REPAIR, 1, "TCP_REPAIR (needs CAP_NET_ADMIN)")?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    // The SYN takes the initial sequence number; connect uses the one set.
    tcp(
        sock::TCP_QUEUE_SEQ,
        send_seq.wrapping_sub(1) as i32,
        "TCP_QUEUE_SEQ (send)",
    )?;
    sock::bind(fd, local).map_err(|e| ("bind", e))?;
    tcp(
        sock::TCP_REPAIR,
        TCP_REPAIR_OFF_NO_WP,
        "TCP_REPAIR off (without window probe)",
    )?;
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor crest owns.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(("making the socket non-blocking to connect", Errno::last()));
    }
    let r = sock::connect(fd, remote);
    // SAFETY: as above; the caller sets O_NONBLOCK again if the program had it.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags) } < 0 {
        return Err(("making the socket blocking again", Errno::last()));
    }
    match r {
        Err(Errno::EINPROGRESS) => Ok(()),
        Ok(()) => Err(("connect (done at once, not in progress)", Errno::EISCONN)),
        Err(e) => Err(("connect", e)),
    }
}

/// Rebuilds a socket closed after the connection `local` -> `remote`, with `recv_queue` left
/// to read: connected in repair mode (which sends nothing), its receive queue refilled, then
/// closed by a RST forged from the peer, whose error is taken away at once (the program had
/// read it, or there was none); the error names the step. The sequence numbers are crest's
/// own: the peer is gone.
fn closed(
    fd: BorrowedFd,
    local: &std::net::SocketAddr,
    remote: &std::net::SocketAddr,
    recv_queue: &[u8],
) -> Result<(), (&'static str, Errno)> {
    let tcp = |name: i32, v: i32, step: &'static str| {
        sock::set_int(fd, libc::IPPROTO_TCP, name, v).map_err(|e| (step, e))
    };
    const BASE: u32 = 0x4352_0000;
    sock::set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        ((recv_queue.len() + (1 << 20)).min(i32::MAX as usize / 2)) as i32,
    )
    .map_err(|e| ("SO_RCVBUFFORCE", e))?;
    tcp(sock::TCP_REPAIR, 1, "TCP_REPAIR (needs CAP_NET_ADMIN)")?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    tcp(sock::TCP_QUEUE_SEQ, BASE as i32, "TCP_QUEUE_SEQ (receive)")?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    tcp(sock::TCP_QUEUE_SEQ, BASE as i32, "TCP_QUEUE_SEQ (send)")?;
    sock::bind(fd, local).map_err(|e| ("bind", e))?;
    // The original's end of this connection may still be in TIME_WAIT (the process was killed
    // with the connection open, `dump --tcp-close`): the kernel lets a connect take over such
    // an address pair only a second after the last timestamp seen on it (tcp_tw_reuse).
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    loop {
        match sock::connect(fd, remote) {
            Err(Errno::EADDRNOTAVAIL) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r.map_err(|e| ("connect", e))?,
        }
    }
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    sock::send_chunked(fd, recv_queue, CHUNK).map_err(|e| ("refilling the receive queue", e))?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_NO_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    inject::Segment {
        from: *remote,
        to: *local,
        seq: BASE.wrapping_add(recv_queue.len() as u32),
        ack: 0,
        flags: inject::RST,
        window: 0,
    }
    .send()?;
    wait_state(fd, sock::TCP_CLOSE)?;
    // The reset's error (ECONNRESET); reading it takes it away.
    sock::get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).map_err(|e| ("SO_ERROR", e))?;
    tcp(sock::TCP_REPAIR, 0, "TCP_REPAIR off")?;
    Ok(())
}

/// Rebuilds an established connection in repair mode; the error names the step.
fn connection(fd: BorrowedFd, c: &TcpConnection) -> Result<(), (&'static str, Errno)> {
    let tcp = |name: i32, v: i32, step: &'static str| {
        sock::set_int(fd, libc::IPPROTO_TCP, name, v).map_err(|e| (step, e))
    };
    // Room for both queues whatever the defaults; SO_BUF_LOCK is put back afterwards.
    // (Twice the bytes: the unsent ones go in small segments when the peer's MSS is small.)
    let room = |n: usize| ((2 * n + (1 << 20)).min(i32::MAX as usize / 2)) as i32;
    sock::set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        room(c.send_queue.len()),
    )
    .map_err(|e| ("SO_SNDBUFFORCE", e))?;
    sock::set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        room(c.recv_queue.len()),
    )
    .map_err(|e| ("SO_RCVBUFFORCE", e))?;
    tcp(sock::TCP_REPAIR, 1, "TCP_REPAIR (needs CAP_NET_ADMIN)")?;
    // The sequence numbers count the FINs, which come back at the end.
    let fin_in = u32::from(c.phase.fin_received());
    let fin_out = u32::from(c.phase.fin_sent());
    let rcv_nxt = c.recv_seq.wrapping_sub(fin_in);
    let snd_una = c
        .send_seq
        .wrapping_sub(fin_out)
        .wrapping_sub(c.send_queue.len() as u32);
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    tcp(
        sock::TCP_QUEUE_SEQ,
        rcv_nxt.wrapping_sub(c.recv_queue.len() as u32) as i32,
        "TCP_QUEUE_SEQ (receive)",
    )?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    tcp(sock::TCP_QUEUE_SEQ, snd_una as i32, "TCP_QUEUE_SEQ (send)")?;
    // The connect computes the segment size the connection sends with from the peer's MSS as
    // it knows it then; the repair options below set that MSS, but nothing computes the
    // segment size again, which would stay at the 536-byte default (less the timestamps):
    // tiny segments whose overhead fills the peer's receive buffer long before its window,
    // so that it drops them. TCP_MAXSEG before the connect gives the connect the peer's
    // MSS; the program's own TCP_MAXSEG (none is recorded for a connection) is none again
    // after it.
    sock::bind(fd, &c.local).map_err(|e| ("bind", e))?;
    sock::connect(fd, &c.remote).map_err(|e| ("connect", e))?;

    let mut ropts: Vec<(u32, u32)> = vec![(2, c.mss)]; // TCPOPT_MSS
    if c.tcp_options & sock::TCPI_OPT_WSCALE != 0 {
        ropts.push((3, u32::from(c.snd_wscale) | u32::from(c.rcv_wscale) << 16));
        // TCPOPT_WINDOW
    }
    if c.tcp_options & sock::TCPI_OPT_SACK != 0 {
        ropts.push((4, 0)); // TCPOPT_SACK_PERM
    }
    if c.tcp_options & sock::TCPI_OPT_TIMESTAMPS != 0 {
        ropts.push((8, 0)); // TCPOPT_TIMESTAMP
    }
    let bytes: Vec<u8> = ropts
        .iter()
        .flat_map(|(code, v)| code.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    sock::set_bytes(fd, libc::IPPROTO_TCP, sock::TCP_REPAIR_OPTIONS, &bytes)
        .map_err(|e| ("TCP_REPAIR_OPTIONS", e))?;
    if c.tcp_options & sock::TCPI_OPT_TIMESTAMPS != 0 {
        tcp(sock::TCP_TIMESTAMP, c.timestamp as i32, "TCP_TIMESTAMP")?;
    }
    resync_mss(fd, &c.local)?;

    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    sock::send_chunked(fd, &c.recv_queue, CHUNK).map_err(|e| ("refilling the receive queue", e))?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    // What the peer may have received counts as sent (retransmitted if it had not); what was
    // never sent is written the ordinary way, out of repair mode (without the window probe
    // leaving it sends), so that it leaves as the peer's window allows, like any unsent data.
    let unsent = (c.unsent as usize).min(c.send_queue.len());
    let (sent, not_sent) = c.send_queue.split_at(c.send_queue.len() - unsent);
    sock::send_chunked(fd, sent, CHUNK).map_err(|e| ("refilling the send queue", e))?;
    tcp(
        sock::TCP_REPAIR_QUEUE,
        sock::TCP_NO_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    if !not_sent.is_empty() {
        tcp(
            sock::TCP_REPAIR,
            TCP_REPAIR_OFF_NO_WP,
            "TCP_REPAIR off (without window probe)",
        )?;
        sock::send_all_nonblocking(fd, not_sent)
            .map_err(|e| ("writing the bytes not sent yet", e))?;
        tcp(sock::TCP_REPAIR, 1, "TCP_REPAIR")?;
    }

    let mut window = c.window;
    if fin_in == 1 {
        // The window was last advertised with the FIN counted, which is not in yet: one
        // sequence number earlier, as far to the right.
        window[4] = window[4].wrapping_sub(1);
        window[3] = window[3].wrapping_add(1);
    }
    let window: Vec<u8> = window.iter().flat_map(|v| v.to_ne_bytes()).collect();
    sock::set_bytes(fd, libc::IPPROTO_TCP, sock::TCP_REPAIR_WINDOW, &window)
        .map_err(|e| ("TCP_REPAIR_WINDOW", e))?;
    // Again, now that the peer's largest window is known (a segment is at most half of it).
    resync_mss(fd, &c.local)?;
    if c.phase != TcpPhase::Established {
        fins(fd, c, rcv_nxt, snd_una)?;
    }
    Ok(())
}

/// Makes the kernel compute again the size of the segments the connection sends, from the
/// peer's MSS that TCP_REPAIR_OPTIONS set (and the peer's largest window, once set).
///
/// The connect in repair mode computes it from the peer's MSS as known then: the 536-byte
/// default. TCP_REPAIR_OPTIONS changes the MSS but not that size, which the kernel computes
/// again only when the path MTU, the IP options or the peer's largest window change; left
/// alone, the connection sends segments of 524 bytes (1208 over IPv6) where the original sent
/// up to 64 KiB on loopback. So many tiny segments overrun the peer's receive buffer long
/// before its window (each costs far more memory than its bytes): the peer drops and prunes,
/// and a connection with full buffers in both directions can stall for good.
///
/// Setting the IP options (IPv4: IP_OPTIONS; IPv6: a sticky IPV6_2292PKTOPTIONS) is the
/// call that computes it again; both are set empty, and the IPv6 one is taken away again
/// (which leaves the size alone), so no header changes. `local` tells the socket's family.
fn resync_mss(fd: BorrowedFd, local: &std::net::SocketAddr) -> Result<(), (&'static str, Errno)> {
    if local.is_ipv4() {
        return sock::set_bytes(fd, libc::IPPROTO_IP, libc::IP_OPTIONS, &[])
            .map_err(|e| ("IP_OPTIONS (empty, to compute the segment size again)", e));
    }
    // A control buffer shorter than one cmsghdr holds no control message: an empty set of
    // options, but a set (no buffer at all would mean none, and compute nothing).
    let step = "IPV6_2292PKTOPTIONS (empty, to compute the segment size again)";
    sock::set_bytes(fd, libc::IPPROTO_IPV6, libc::IPV6_2292PKTOPTIONS, &[0; 4])
        .map_err(|e| (step, e))?;
    sock::set_bytes(fd, libc::IPPROTO_IPV6, libc::IPV6_2292PKTOPTIONS, &[]).map_err(|e| (step, e))
}

/// Brings the connection (ESTABLISHED in repair mode, its queues refilled, `rcv_nxt` and
/// `snd_una` as the peer last saw them) to its closing state `c.phase`.
fn fins(
    fd: BorrowedFd,
    c: &TcpConnection,
    rcv_nxt: u32,
    snd_una: u32,
) -> Result<(), (&'static str, Errno)> {
    let window = if c.tcp_options & sock::TCPI_OPT_WSCALE != 0 {
        c.window[1] >> c.snd_wscale
    } else {
        c.window[1]
    }
    .min(u32::from(u16::MAX)) as u16;
    let segment = |seq: u32, ack: u32, flags: u8| inject::Segment {
        from: c.remote,
        to: c.local,
        seq,
        ack,
        flags,
        window,
    };
    let peer_fin = || -> Result<(), (&'static str, Errno)> {
        segment(rcv_nxt, snd_una, inject::FIN | inject::ACK).send()
    };
    let our_fin = || -> Result<(), (&'static str, Errno)> {
        // With the send queue selected the FIN counts as sent and nothing leaves; but that
        // would count the bytes not sent yet as sent too: behind them, the FIN waits its
        // turn (whatever leaves meanwhile the lock drops, and TCP sends again).
        let queue = if c.unsent == 0 {
            sock::TCP_SEND_QUEUE
        } else {
            sock::TCP_NO_QUEUE
        };
        sock::set_int(fd, libc::IPPROTO_TCP, sock::TCP_REPAIR_QUEUE, queue)
            .map_err(|e| ("TCP_REPAIR_QUEUE", e))?;
        // SAFETY: shutdown(2) on a socket crest owns.
        if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Err(("shutdown for writing (the program's FIN)", Errno::last()));
        }
        sock::set_int(
            fd,
            libc::IPPROTO_TCP,
            sock::TCP_REPAIR_QUEUE,
            sock::TCP_NO_QUEUE,
        )
        .map_err(|e| ("TCP_REPAIR_QUEUE", e))
    };
    match c.phase {
        TcpPhase::Established => return Ok(()),
        TcpPhase::CloseWait => peer_fin()?,
        TcpPhase::LastAck => {
            peer_fin()?;
            wait_state(fd, 8)?;
            our_fin()?;
        }
        TcpPhase::FinWait1 => our_fin()?,
        TcpPhase::Closing => {
            our_fin()?;
            peer_fin()?;
        }
        TcpPhase::FinWait2 => {
            our_fin()?;
            // The peer's acknowledgement of everything, the FIN included.
            segment(rcv_nxt, c.send_seq, inject::ACK).send()?;
        }
    }
    wait_state(fd, phase_state(c.phase))
}

/// The kernel's number of the TCP state `phase`.
fn phase_state(phase: TcpPhase) -> u8 {
    (0..=12)
        .find(|&s| sock::tcp_phase(s) == Some(phase))
        .unwrap_or(sock::TCP_ESTABLISHED)
}

/// Waits (a little: the forged segments are taken in as they are sent, on loopback) until
/// the connection is in the TCP state `want`.
fn wait_state(fd: BorrowedFd, want: u8) -> Result<(), (&'static str, Errno)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let state = sock::tcp_info(fd).map_err(|e| ("TCP_INFO", e))?.state;
        if state == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err((
                "the segments crest forges from the peer did not bring the connection to \
                 its state (a firewall rule dropping packets to this port drops them too)",
                Errno::ETIMEDOUT,
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tcp_dump;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::FromRawFd;

    /// Dumps `s` (our own socket) the way a dump does, closes it silently, restores it.
    fn cycle(s: OwnedFd) -> (TcpSocket, OwnedFd) {
        let session = tcp_dump::Session::begin(-1, &[], false, false).unwrap();
        let copy = s.try_clone().unwrap();
        let t = tcp_dump::record(std::process::id() as i32, s.as_raw_fd(), copy).unwrap();
        drop(s);
        let table = session.killed();
        if let TcpState::Established(c) = &t.state {
            assert_eq!(table.as_deref(), Some(c.network_lock.as_str()));
            assert!(lock::exists(&c.network_lock));
        }
        // A process another test thread spawns (nft) holds copies of our descriptors until
        // it execs, so the old socket may linger for a moment.
        let mut tries = 0;
        let (fd, repaired) = loop {
            let mut repaired = Repaired::default();
            match create(&t, 0, "test", &mut repaired) {
                Err(e) if e.errno == Some(Errno::EADDRNOTAVAIL) && tries < 1000 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                r => break (r.unwrap(), repaired),
            }
        };
        repaired.resume().unwrap();
        (t, fd)
    }

    fn stream(fd: OwnedFd) -> TcpStream {
        // SAFETY: the descriptor is ours; ownership moves into the stream.
        unsafe { TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
    }

    #[test]
    fn listeners_of_a_reuseport_group_one_of_which_turned_it_off_come_back_together() {
        // A free port, and the two listeners the program had there: the first turned
        // SO_REUSEPORT off after listening, so only the second records it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let local: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let listener = |reuseport: bool| TcpSocket {
            family: libc::AF_INET as u32,
            state: TcpState::Listening { local, backlog: 4 },
            options: if reuseport {
                vec![crate::images::SockOpt {
                    level: libc::SOL_SOCKET,
                    name: libc::SO_REUSEPORT,
                    value: 1i32.to_ne_bytes().to_vec(),
                }]
            } else {
                vec![]
            },
            buf_lock: 0,
        };
        let mut repaired = Repaired::default();
        let off = create(&listener(false), 0, "test", &mut repaired).unwrap();
        let on = create(&listener(true), 0, "test", &mut repaired).unwrap();
        let reuseport =
            |fd: &OwnedFd| sock::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT);
        assert_eq!((reuseport(&off), reuseport(&on)), (Ok(0), Ok(1)));
        for fd in [&off, &on] {
            assert_eq!(sock::local_addr(fd.as_fd()), Ok(local));
            assert_eq!(
                sock::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN),
                Ok(1)
            );
        }
        TcpStream::connect(local).unwrap();
    }

    #[test]
    fn an_established_connection_carries_on_with_both_queues() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(addr).unwrap();
            let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut server, _) = l.accept().unwrap();
            server.set_nodelay(true).unwrap();
            client.write_all(b"unread by the server").unwrap();
            server.write_all(b"unread by the client").unwrap();
            // Wait until the bytes are in the receive queue.
            let mut n = 0;
            while n < 20 {
                n = sock::ioctl_int(server.as_fd(), libc::FIONREAD as libc::c_ulong).unwrap();
            }
            let (t, fd) = cycle(OwnedFd::from(server));
            let TcpState::Established(c) = &t.state else {
                panic!("{t:?}")
            };
            assert_eq!(c.recv_queue, b"unread by the server");
            let mut server = stream(fd);
            assert!(server.nodelay().unwrap());
            let mut buf = [0u8; 20];
            server.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"unread by the server");
            client.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"unread by the client");
            server.write_all(b"after").unwrap();
            client.write_all(b"again").unwrap();
            let mut five = [0u8; 5];
            client.read_exact(&mut five).unwrap();
            assert_eq!(&five, b"after");
            server.read_exact(&mut five).unwrap();
            assert_eq!(&five, b"again");
            drop(l);
        }
    }

    #[test]
    fn a_full_send_queue_reaches_the_peer_after_restore() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        sock::set_int(client.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
        let (mut server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut sent = 0usize;
        let pattern = |i: usize| (i * 7 % 251) as u8;
        loop {
            let chunk: Vec<u8> = (sent..sent + 4096).map(pattern).collect();
            match server.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let (t, fd) = cycle(OwnedFd::from(server));
        let TcpState::Established(c) = &t.state else {
            panic!("{t:?}")
        };
        assert!(!c.send_queue.is_empty());
        let mut client = client;
        let mut got = vec![0u8; sent];
        client.read_exact(&mut got).unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        drop(fd);
    }

    #[test]
    fn a_listener_listens_again_with_its_options() {
        let l = TcpListener::bind("[::1]:0").unwrap();
        let at = l.local_addr().unwrap();
        sock::set_int(l.as_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 5).unwrap();
        let (t, fd) = cycle(OwnedFd::from(l));
        assert!(matches!(t.state, TcpState::Listening { local, .. } if local == at));
        assert!(sock::get_int(fd.as_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT).unwrap() > 0);
        // SAFETY: the descriptor is ours; ownership moves into the listener.
        let l = unsafe { TcpListener::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        let mut c = TcpStream::connect(at).unwrap();
        c.write_all(b"x").unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }

    /// A connection pair on loopback (client, server) with `b"c->s"` unread by the server and
    /// `b"s->c"` unread by the client.
    fn pair(addr: &str) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind(addr).unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut server, _) = l.accept().unwrap();
        client.write_all(b"c->s").unwrap();
        server.write_all(b"s->c").unwrap();
        for s in [&server, &client] {
            while sock::ioctl_int(s.as_fd(), libc::FIONREAD as libc::c_ulong).unwrap() < 4 {
                std::thread::yield_now();
            }
        }
        (client, server)
    }

    fn state(s: &impl AsFd) -> u8 {
        sock::tcp_info(s.as_fd()).unwrap().state
    }

    fn wait_state(s: &impl AsFd, want: u8) {
        for _ in 0..100_000 {
            if state(s) == want {
                return;
            }
            std::thread::yield_now();
        }
        assert_eq!(sock::state_name(state(s)), sock::state_name(want));
    }

    #[test]
    fn closing_connections_come_back_in_their_state_with_their_queues() {
        use std::net::Shutdown;
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            // CLOSE_WAIT: the client shut down; the server still has its bytes to read, then
            // end of file, and can still send.
            let (mut client, server) = pair(addr);
            client.shutdown(Shutdown::Write).unwrap();
            wait_state(&server, 8);
            let (t, fd) = cycle(OwnedFd::from(server));
            assert!(matches!(&t.state, TcpState::Established(c) if c.phase == TcpPhase::CloseWait));
            let mut server = stream(fd);
            assert_eq!(state(&server), 8);
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"c->s");
            server.write_all(b"late").unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            got.clear();
            client.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"s->clate");

            // FIN_WAIT2: the server shut down, the client acknowledged; the client can still
            // send, the server reads it, then the client's FIN.
            let (mut client, server) = pair(addr);
            server.shutdown(Shutdown::Write).unwrap();
            wait_state(&server, 5);
            let (t, fd) = cycle(OwnedFd::from(server));
            assert!(matches!(&t.state, TcpState::Established(c) if c.phase == TcpPhase::FinWait2));
            let mut server = stream(fd);
            assert_eq!(state(&server), 5);
            client.write_all(b" more").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"c->s more");
            got.clear();
            client.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"s->c");

            // LAST_ACK (the server's FIN after the client's, kept from the client by a lock)
            // and FIN_WAIT1 (the client's FIN, unacknowledged).
            let (mut client, mut server) = pair(addr);
            client.shutdown(Shutdown::Write).unwrap();
            wait_state(&server, 8);
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            let mut lock = lock::NetLock::new(-2);
            lock.add(&[(server.local_addr().unwrap(), server.peer_addr().unwrap())])
                .unwrap();
            server.write_all(b"unacked").unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            wait_state(&server, 9);
            // The lock stays until the restore, so the state cannot move on meanwhile.
            let (t, fd) = cycle(OwnedFd::from(server));
            drop(lock);
            let TcpState::Established(c) = &t.state else {
                panic!("{t:?}")
            };
            assert_eq!(
                (c.phase, c.send_queue.as_slice()),
                (TcpPhase::LastAck, &b"unacked"[..])
            );
            got.clear();
            client.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"s->cunacked");
            let server = stream(fd);
            wait_state(&server, sock::TCP_CLOSE);
        }
    }

    #[test]
    fn a_closed_connection_comes_back_closed_with_its_unread_bytes_and_its_peer() {
        use std::net::Shutdown;
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let (client, mut server) = pair(addr);
            server.write_all(b" and more").unwrap();
            // Both FINs: the client, which shut down first, goes through TIME_WAIT (the
            // kernel keeps a twin of its connection), the server through LAST_ACK.
            client.shutdown(Shutdown::Write).unwrap();
            wait_state(&server, 8);
            server.shutdown(Shutdown::Write).unwrap();
            wait_state(&client, sock::TCP_CLOSE);
            wait_state(&server, sock::TCP_CLOSE);
            let (local, remote) = (
                client.local_addr().unwrap(),
                sock::kept_peer_addr(client.as_fd()).unwrap(),
            );
            let (t, fd) = cycle(OwnedFd::from(client));
            assert!(
                matches!(&t.state, TcpState::Closed { recv_queue, .. } if recv_queue == b"s->c and more"),
                "{t:?}"
            );
            assert_eq!(state(&fd), sock::TCP_CLOSE);
            assert_eq!(sock::local_addr(fd.as_fd()), Ok(local));
            assert_eq!(sock::kept_peer_addr(fd.as_fd()), Ok(remote));
            assert_eq!(
                sock::get_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_ERROR),
                Ok(0)
            );
            let mut client = stream(fd);
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"s->c and more");
            assert_eq!(client.read(&mut [0u8; 4]).unwrap(), 0);
            // SAFETY: signal(2) is not involved: MSG_NOSIGNAL keeps SIGPIPE away.
            let r = unsafe {
                libc::send(
                    client.as_raw_fd(),
                    b"x".as_ptr().cast(),
                    1,
                    libc::MSG_NOSIGNAL,
                )
            };
            assert_eq!((r, Errno::last()), (-1, Errno::EPIPE));

            let (t, fd) = cycle(OwnedFd::from(server));
            assert!(
                matches!(&t.state, TcpState::Closed { recv_queue, .. } if recv_queue == b"c->s"),
                "{t:?}"
            );
            let mut got = Vec::new();
            stream(fd).read_to_end(&mut got).unwrap();
            assert_eq!(got, b"c->s");
        }
    }

    #[test]
    fn a_connection_waiting_for_its_syn_to_be_answered_connects_after_restore() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(addr).unwrap();
            let at = l.local_addr().unwrap();
            let family = if at.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let s = sock::tcp_socket(family).unwrap();
            sock::bind(s.as_fd(), &std::net::SocketAddr::new(at.ip(), 0)).unwrap();
            let local = sock::local_addr(s.as_fd()).unwrap();
            // Its SYNs go nowhere until the restore is over.
            let mut lock = lock::NetLock::new(-3);
            lock.add(&[(local, at)]).unwrap();
            // SAFETY: fcntl(2) on our own socket.
            unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            assert_eq!(sock::connect(s.as_fd(), &at), Err(Errno::EINPROGRESS));
            assert_eq!(state(&s), sock::TCP_SYN_SENT);
            let (t, fd) = cycle(s);
            assert!(
                matches!(&t.state, TcpState::Connecting { remote, .. } if *remote == at),
                "{t:?}"
            );
            assert_eq!(state(&fd), sock::TCP_SYN_SENT);
            assert_eq!(sock::local_addr(fd.as_fd()), Ok(local));
            drop(lock);
            // The kernel sends the SYN again (after a second or more), now answered.
            let (mut server, from) = l.accept().unwrap();
            assert_eq!(from, local);
            let mut client = stream(fd);
            client.set_nonblocking(false).unwrap();
            client.write_all(b"hello").unwrap();
            let mut got = [0u8; 5];
            server.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        }
    }
}
