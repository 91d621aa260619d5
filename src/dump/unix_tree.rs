//! The AF_UNIX sockets of a whole tree, resolved once every process is collected: which
//! connections have both ends in the tree, which wait in a listener's accept queue, which go to
//! a socket outside the tree, and whether every queued datagram's sender can send it again.
//!
//! - A connected socket whose peer the tree holds stays `Connected` (a restore makes the pair).
//! - A stream or seqpacket client whose peer is an embryo in the accept queue of a listener of
//!   the tree becomes `Queued` on that listener, which lists its clients in queue order; a
//!   restore connects them to the restored listener again. Bytes a waiting client already sent
//!   sit in the embryo, which no fd reaches: such a connection is refused, as is a queue holding
//!   connections whose client is outside the tree (or closed).
//! - A socket connected to a socket outside the tree is refused, naming the peer's name, unless
//!   the dump runs with `--ext-unix-sk` and the peer has a name: it is then `External` and the
//!   restore connects to that name again (a new connection). Unread data it holds came from the
//!   old connection and is refused even then.
//! - A queued datagram from a named sender outside the tree cannot be sent again from that
//!   name: refused, with the count.

use std::collections::{BTreeMap, HashSet};

use crate::images::{FileKind, UnixName, UnixSocket, UnixSocketState};

use super::process::CollectedProcess;
use super::sockdiag::{self, name_text};
use super::DumpError;

/// One socket of the tree, as its first holder has it.
struct Held {
    pid: i32,
    fd: i32,
    dev: u64,
    sock: UnixSocket,
}

/// Resolves the UNIX sockets of `procs` (see the module comment); `ext_unix_sk` allows
/// connections to named sockets outside the tree.
pub fn resolve(procs: &mut [CollectedProcess], ext_unix_sk: bool) -> Result<(), DumpError> {
    let mut held: BTreeMap<u64, Held> = BTreeMap::new();
    for p in procs.iter() {
        // A socket that only a queue holds (SCM_RIGHTS) is in the tree too; it has no fd (-1).
        let carried = p.fd_table.in_flight.iter().map(|&(d, _)| (d, -1));
        let fds = p.fd_table.fds.iter().map(|f| (f.description, f.fd));
        for (d, fd) in fds.chain(carried) {
            let ident = p.description_file(d);
            if let FileKind::UnixSocket(s) = &ident.kind {
                held.entry(ident.ino).or_insert_with(|| Held {
                    pid: p.pid(),
                    fd,
                    dev: ident.dev,
                    sock: s.clone(),
                });
            }
        }
    }
    let (changed, problems) = resolve_held(&held, ext_unix_sk, &|ino| {
        sockdiag::query(ino)
            .ok()
            .map(|d| (d.name.unwrap_or_default(), d.wqueue))
    });
    DumpError::refused(problems)?;
    for (ino, sock) in changed {
        let dev = held[&ino].dev;
        for p in procs.iter_mut() {
            p.files
                .set_kind_of(dev, ino, FileKind::UnixSocket(sock.clone()));
        }
    }
    Ok(())
}

/// The sockets whose record changes, and the refusals. `ask(ino)` gives the name and the
/// bytes sent but unread of a socket no process holds (sock_diag), when the kernel knows it.
fn resolve_held(
    held: &BTreeMap<u64, Held>,
    ext_unix_sk: bool,
    ask: &dyn Fn(u64) -> Option<(Vec<u8>, u32)>,
) -> (BTreeMap<u64, UnixSocket>, Vec<DumpError>) {
    let mut changed: BTreeMap<u64, UnixSocket> = BTreeMap::new();
    let mut problems = Vec::new();
    let refuse = |h: &Held, ino: u64, what: String| DumpError::UnsupportedFd {
        pid: h.pid,
        fd: h.fd,
        what: format!(
            "a UNIX {} socket (inode {ino}) {what}",
            type_text(h.sock.sock_type)
        ),
    };
    // sock_diag lists a listener's waiting connections by their clients' inodes; a client sees
    // its peer (the connection no fd holds yet) as a socket outside, named by the listener.
    let queued_clients: HashSet<u64> = held
        .values()
        .flat_map(|h| match &h.sock.state {
            UnixSocketState::Listening { pending, .. } => pending.clone(),
            _ => Vec::new(),
        })
        .collect();
    for (&ino, h) in held {
        let UnixSocketState::Listening { backlog, pending } = &h.sock.state else {
            continue;
        };
        let name = name_text(&h.sock.name.raw());
        let clients: Vec<Option<u64>> = pending
            .iter()
            .map(|c| held.contains_key(c).then_some(*c))
            .collect();
        let outside = clients.iter().filter(|c| c.is_none()).count();
        if outside > 0 {
            problems.push(refuse(
                h,
                ino,
                format!(
                    "listening on {name} with {} connection(s) waiting to be accepted, {outside} \
                     of them from a process outside the tree (or closed since), which a restore \
                     cannot connect again; dump it when they are accepted",
                    pending.len()
                ),
            ));
            continue;
        }
        let clients: Vec<u64> = clients.into_iter().flatten().collect();
        let mut ok = true;
        for &c in &clients {
            let client = &held[&c];
            match ask(c) {
                Some((_, 0)) => {}
                Some((_, unsent)) => {
                    ok = false;
                    problems.push(refuse(
                        client,
                        c,
                        format!(
                            "whose connection to {name} waits to be accepted with data already \
                             sent ({unsent} bytes of its send buffer in use), which crest cannot \
                             read back (it is in the connection no fd holds yet); dump it when \
                             it is accepted"
                        ),
                    ));
                }
                None => {
                    ok = false;
                    problems.push(refuse(
                        client,
                        c,
                        format!(
                            "whose connection to {name} waits to be accepted, and the kernel \
                             no longer reports it"
                        ),
                    ));
                }
            }
        }
        if !ok {
            continue;
        }
        for &c in &clients {
            let mut s = held[&c].sock.clone();
            s.state = UnixSocketState::Queued { listener: ino };
            changed.insert(c, s);
        }
        let mut s = h.sock.clone();
        s.state = UnixSocketState::Listening {
            backlog: *backlog,
            pending: clients,
        };
        changed.insert(ino, s);
    }

    let names: HashSet<Vec<u8>> = held
        .values()
        .map(|h| h.sock.name.raw())
        .filter(|n| !n.is_empty())
        .collect();
    for (&ino, h) in held {
        let dgram = h.sock.sock_type == libc::SOCK_DGRAM as u32;
        if let UnixSocketState::External { peer_name } = &h.sock.state {
            if !queued_clients.contains(&ino) {
                let unread: usize = h.sock.queue.iter().map(|m| m.data.len()).sum();
                if let Some(p) = outside_peer(h, ino, peer_name.clone(), unread, ext_unix_sk) {
                    problems.push(refuse(h, ino, p));
                }
            }
        }
        if let UnixSocketState::Connected { peer } = h.sock.state {
            if let Some(other) = held.get(&peer) {
                // A datagram socket connected to an unnamed one is half of a socketpair: the
                // other half must be connected back (it can be reached no other way).
                let back = other.sock.state == UnixSocketState::Connected { peer: ino };
                if (!dgram || other.sock.name == UnixName::Unnamed) && !back {
                    problems.push(refuse(
                        h,
                        ino,
                        format!(
                            "connected to the unnamed socket inode {peer} (pid {} fd {}), which \
                             is connected elsewhere since; a restore cannot make that pair",
                            other.pid, other.fd
                        ),
                    ));
                }
            } else {
                let peer_name = ask(peer).map(|(n, _)| n).unwrap_or_default();
                let unread: usize = h.sock.queue.iter().map(|m| m.data.len()).sum();
                match outside_peer(h, peer, peer_name.clone(), unread, ext_unix_sk) {
                    Some(p) => problems.push(refuse(h, ino, p)),
                    None => {
                        let mut s = h.sock.clone();
                        s.state = UnixSocketState::External { peer_name };
                        changed.insert(ino, s);
                    }
                }
            }
        }
        let foreign: Vec<&Vec<u8>> = h
            .sock
            .queue
            .iter()
            .map(|m| &m.from)
            .filter(|f| !f.is_empty() && !names.contains(*f))
            .collect();
        if let Some(first) = foreign.first() {
            problems.push(refuse(
                h,
                ino,
                format!(
                    "holding {} queued datagram(s), {} of them from {} (a socket outside the \
                     tree), which a restore cannot send again from that name",
                    h.sock.queue.len(),
                    foreign.len(),
                    name_text(first)
                ),
            ));
        }
    }
    (changed, problems)
}

/// Why a connection to a socket outside the tree (named `peer_name`; `peer`: its inode, or
/// this socket's when unknown) cannot be dumped; None when `--ext-unix-sk` allows it.
fn outside_peer(
    _h: &Held,
    peer: u64,
    peer_name: Vec<u8>,
    unread: usize,
    ext_unix_sk: bool,
) -> Option<String> {
    if peer_name.is_empty() {
        return Some(format!(
            "connected to an unnamed socket (inode {peer}) that no process of the tree holds (a \
             process outside the tree); it cannot be connected again"
        ));
    }
    let name = name_text(&peer_name);
    if !ext_unix_sk {
        return Some(format!(
            "connected to {name}, which no process of the tree holds (a server outside the \
             tree); dump and restore with --ext-unix-sk to connect it to that name again"
        ));
    }
    if unread > 0 {
        return Some(format!(
            "connected to {name} outside the tree (--ext-unix-sk) with {unread} unread byte(s) \
             from it, which a new connection cannot give back"
        ));
    }
    None
}

fn type_text(ty: u32) -> &'static str {
    match ty as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::UnixMessage;

    fn sock(ty: i32, name: UnixName, state: UnixSocketState) -> UnixSocket {
        UnixSocket {
            sock_type: ty as u32,
            state,
            name,
            queue: Vec::new(),
            shutdown: 0,
            passcred: false,
            sndbuf: 0,
            rcvbuf: 0,
            options: Vec::new(),
            peer_creds: None,
        }
    }

    fn held(fd: i32, s: UnixSocket) -> Held {
        Held {
            pid: 100,
            fd,
            dev: 9,
            sock: s,
        }
    }

    fn abs(n: &str) -> UnixName {
        UnixName::Abstract {
            name: n.as_bytes().to_vec(),
        }
    }

    fn texts(p: &[DumpError]) -> Vec<String> {
        p.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn waiting_clients_in_the_tree_become_queued_in_order() {
        use UnixSocketState::*;
        let mut m = BTreeMap::new();
        m.insert(
            1,
            held(
                3,
                sock(
                    libc::SOCK_STREAM,
                    abs("srv"),
                    Listening {
                        backlog: 4,
                        pending: vec![3, 2],
                    },
                ),
            ),
        );
        // A waiting client sees its peer as a socket no fd holds, named by the listener.
        let waiting = || External {
            peer_name: b"\0srv".to_vec(),
        };
        m.insert(
            2,
            held(4, sock(libc::SOCK_STREAM, UnixName::Unnamed, waiting())),
        );
        m.insert(
            3,
            held(5, sock(libc::SOCK_STREAM, UnixName::Unnamed, waiting())),
        );
        let (changed, problems) = resolve_held(&m, false, &|_| Some((b"\0srv".to_vec(), 0)));
        assert!(problems.is_empty(), "{:?}", texts(&problems));
        assert_eq!(
            changed[&1].state,
            Listening {
                backlog: 4,
                pending: vec![3, 2]
            }
        );
        assert_eq!(changed[&2].state, Queued { listener: 1 });
        // With bytes already sent by a waiting client: refused, naming it.
        let (_, problems) = resolve_held(&m, false, &|_| Some((b"\0srv".to_vec(), 7)));
        let t = texts(&problems);
        assert!(
            t.iter()
                .any(|e| e.contains("fd 4") && e.contains("data already sent (7 bytes")),
            "{t:?}"
        );
        // A waiting connection from outside: the listener is refused.
        m.remove(&3);
        let (_, problems) = resolve_held(&m, false, &|_| Some((b"\0srv".to_vec(), 0)));
        let t = texts(&problems);
        assert!(
            t.iter()
                .any(|e| e.contains("fd 3") && e.contains("2 connection(s)")),
            "{t:?}"
        );
    }

    #[test]
    fn outside_peers_are_refused_unless_named_and_allowed() {
        use UnixSocketState::*;
        let mut m = BTreeMap::new();
        m.insert(
            1,
            held(
                7,
                sock(libc::SOCK_STREAM, UnixName::Unnamed, Connected { peer: 90 }),
            ),
        );
        let named = |_| Some((b"/run/srv.sock".to_vec(), 0));
        let (_, problems) = resolve_held(&m, false, &named);
        let t = texts(&problems);
        assert!(
            t[0].contains("process 100") && t[0].contains("fd 7") && t[0].contains("/run/srv.sock"),
            "{t:?}"
        );
        let (changed, problems) = resolve_held(&m, true, &named);
        assert!(problems.is_empty());
        assert_eq!(
            changed[&1].state,
            External {
                peer_name: b"/run/srv.sock".to_vec()
            }
        );
        let (_, problems) = resolve_held(&m, true, &|_| Some((Vec::new(), 0)));
        assert!(texts(&problems)[0].contains("unnamed socket"));
        m.get_mut(&1).unwrap().sock.queue.push(UnixMessage {
            from: vec![],
            data: b"xy".to_vec(),
            fds: vec![],
            creds: None,
        });
        let (_, problems) = resolve_held(&m, true, &named);
        assert!(texts(&problems)[0].contains("2 unread byte(s)"));
    }

    #[test]
    fn datagrams_from_outside_names_are_refused_with_the_count() {
        let mut s = sock(libc::SOCK_DGRAM, abs("rx"), UnixSocketState::Unconnected);
        for from in [&b"\0tx"[..], b"\0elsewhere", b""] {
            s.queue.push(UnixMessage {
                from: from.to_vec(),
                data: b"d".to_vec(),
                fds: vec![],
                creds: None,
            });
        }
        let mut m = BTreeMap::new();
        m.insert(1, held(3, s));
        m.insert(
            2,
            held(
                4,
                sock(libc::SOCK_DGRAM, abs("tx"), UnixSocketState::Unconnected),
            ),
        );
        let (_, problems) = resolve_held(&m, false, &|_| None);
        let t = texts(&problems);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(
            t[0].contains("3 queued datagram(s), 1 of them from @elsewhere"),
            "{t:?}"
        );
    }
}
