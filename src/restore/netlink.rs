//! Recreating netlink sockets ([`NetlinkSocket`]) in crest before the fork: a socket of the
//! same protocol and type, its options, bound to the same port id, subscribed to the same
//! groups, connected to the same default destination.
//!
//! The port id is kept: programs compare it with the nlmsg_pid of the replies they read
//! (libmnl's mnl_cb_run, iproute2's libnetlink skip or reject replies for another port id) and
//! the kernel addresses its replies to it. A port id the kernel chose (autobind: the process's
//! pid, which the restored process has again, or a negative number) is free once the dumped
//! process is gone; if another socket holds it (the dumped process still running, `-R`), the
//! restore fails rather than give the program a port id it does not expect.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::files::sockopts;
use crate::images::NetlinkSocket;

use super::RestoreError;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

/// Creates the netlink socket `n` with the file status flags `status_flags`; close-on-exec.
pub fn create(n: &NetlinkSocket, status_flags: u32) -> Result<OwnedFd, RestoreError> {
    let text = sockopts::netlink_text(n);
    let fail = |what: String| RestoreError::Os {
        what: format!("the {text}: {what}"),
        source: std::io::Error::last_os_error(),
    };
    let sock = sockopts::socket(libc::AF_NETLINK, n.sock_type as i32, n.protocol as i32)
        .map_err(|_| fail("socket".into()))?;
    sockopts::apply(sock.as_fd(), &n.options).map_err(|e| RestoreError::Os {
        what: format!("the {text}: {e}"),
        source: std::io::Error::last_os_error(),
    })?;
    if n.port_id != 0 {
        if let Err(source) = address_call(&sock, n.port_id, 0, libc::bind) {
            let hint = if source.raw_os_error() == Some(libc::EADDRINUSE) {
                " (another netlink socket of this protocol holds that port id: the dumped \
                 process still running, or a copy restored already; programs check replies \
                 against their port id, so crest does not choose another: stop that process \
                 first)"
            } else {
                ""
            };
            return Err(RestoreError::Os {
                what: format!("the {text}: bind to port id {}{hint}", n.port_id),
                source,
            });
        }
    }
    for &g in &n.groups {
        sockopts::set(
            sock.as_fd(),
            SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            &g.to_ne_bytes(),
        )
        .map_err(|e| RestoreError::Os {
            what: format!("the {text}: joining group {g}"),
            source: std::io::Error::from(e),
        })?;
    }
    if n.dst_port_id != 0 || n.dst_group != 0 {
        let mask = match n.dst_group {
            0 => 0,
            g @ 1..=32 => 1u32 << (g - 1),
            g => {
                return Err(RestoreError::BadImage(format!(
                    "a netlink socket connected to group {g} (connect reaches groups 1 to 32)"
                )))
            }
        };
        address_call(&sock, n.dst_port_id, mask, libc::connect).map_err(|source| {
            RestoreError::Os {
                what: format!("the {text}: connect"),
                source,
            }
        })?;
    }
    if status_flags as i32 & libc::O_NONBLOCK != 0 {
        // SAFETY: F_SETFL on a descriptor we own.
        if unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(fail("making it non-blocking".into()));
        }
    }
    Ok(sock)
}

type AddressCall = unsafe extern "C" fn(i32, *const libc::sockaddr, libc::socklen_t) -> i32;

/// bind or connect with `{nl_pid: port, nl_groups: groups}`.
fn address_call(
    sock: &OwnedFd,
    port: u32,
    groups: u32,
    call: AddressCall,
) -> Result<(), std::io::Error> {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a.nl_pid = port;
    a.nl_groups = groups;
    // SAFETY: a is a valid sockaddr_nl of the size given; call is bind or connect.
    let r = unsafe {
        call(
            sock.as_raw_fd(),
            (&a as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(port_id: u32, groups: Vec<u32>) -> NetlinkSocket {
        NetlinkSocket {
            sock_type: libc::SOCK_RAW as u32,
            protocol: libc::NETLINK_ROUTE as u32,
            port_id,
            groups,
            dst_port_id: 0,
            dst_group: 0,
            options: vec![],
        }
    }

    fn port_of(s: &OwnedFd) -> (u32, u32) {
        // SAFETY: sockaddr_nl is plain old data.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&a) as libc::socklen_t;
        // SAFETY: a and len are valid.
        assert_eq!(
            unsafe {
                libc::getsockname(
                    s.as_raw_fd(),
                    (&mut a as *mut libc::sockaddr_nl).cast(),
                    &mut len,
                )
            },
            0
        );
        (a.nl_pid, a.nl_groups)
    }

    #[test]
    fn uevent_monitor_comes_back_subscribed_and_connected_socket_keeps_its_destination() {
        // What udev monitors hold: NETLINK_KOBJECT_UEVENT, group 1 (the kernel's events),
        // SOCK_DGRAM, with a port id the kernel chose when it bound.
        let mut n = route(0, vec![1]);
        n.protocol = 15;
        n.sock_type = libc::SOCK_DGRAM as u32;
        n.options = vec![crate::images::SetSockOpt {
            level: libc::SOL_SOCKET,
            name: libc::SO_PASSCRED,
            value: 1i32.to_ne_bytes().to_vec(),
        }];
        let s = create(&n, libc::O_NONBLOCK as u32).unwrap();
        assert_eq!(port_of(&s).1, 1);
        assert_eq!(
            sockopts::get_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL),
            Ok(15)
        );
        assert_eq!(
            sockopts::get_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED),
            Ok(1)
        );
        // SAFETY: F_GETFL on a descriptor we own.
        assert_ne!(
            unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) } & libc::O_NONBLOCK,
            0
        );

        let mut c = route(0, vec![]);
        c.dst_port_id = 0;
        c.dst_group = 1;
        let s = create(&c, 0).unwrap();
        // SAFETY: sockaddr_nl is plain old data.
        let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&a) as libc::socklen_t;
        // SAFETY: a and len are valid.
        let r = unsafe {
            libc::getpeername(
                s.as_raw_fd(),
                (&mut a as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        assert_eq!((r, a.nl_groups), (0, 1));
    }

    #[test]
    fn port_id_and_groups_come_back_and_a_taken_port_id_is_refused() {
        // A port id nobody uses: one the kernel hands out, released again.
        let probe = sockopts::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0).unwrap();
        address_call(&probe, 0, 0, libc::bind).unwrap();
        let (port, _) = port_of(&probe);
        drop(probe);
        let s = create(&route(port, vec![1, 5, 33]), 0).unwrap();
        assert_eq!(port_of(&s), (port, 1 | 1 << 4));
        let again = create(&route(port, vec![]), 0).unwrap_err().to_string();
        assert!(again.contains("holds that port id"), "{again}");
    }
}
