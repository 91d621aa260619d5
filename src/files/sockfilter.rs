//! Classic BPF socket filters (SO_ATTACH_FILTER), both sides: a dump reads the program back
//! with SO_GET_FILTER and whether it is locked (SO_LOCK_FILTER); a restore attaches the same
//! instructions again, then locks it. An eBPF program (SO_ATTACH_BPF) cannot be read back as
//! instructions: the kernel refuses SO_GET_FILTER for it, and so does the dump.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use crate::images::BpfInsn;

/// SO_GET_FILTER (= SO_ATTACH_FILTER).
const SO_GET_FILTER: i32 = 26;
const SO_ATTACH_FILTER: i32 = 26;
const SO_LOCK_FILTER: i32 = 44;
/// BPF_MAXINSNS: the longest classic program the kernel accepts.
pub const BPF_MAXINSNS: usize = 4096;

/// The socket's classic BPF filter (empty: none) and SO_LOCK_FILTER. The error says what
/// cannot be read, for a refusal.
pub fn read(sock: BorrowedFd<'_>) -> Result<(Vec<BpfInsn>, bool), String> {
    let locked = crate::files::sockopts::get_int(sock, libc::SOL_SOCKET, SO_LOCK_FILTER)
        .map(|v| v != 0)
        .unwrap_or(false);
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a length of 0 the kernel only reports the program's length in len.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(format!(
            "with a socket filter crest cannot read (SO_GET_FILTER: {}; an eBPF program \
             attached with SO_ATTACH_BPF?)",
            Errno::last()
        ));
    }
    if len == 0 {
        return Ok((Vec::new(), locked));
    }
    let n = len as usize;
    if n > BPF_MAXINSNS {
        return Err(format!(
            "with a socket filter of {n} instructions, more than the kernel's {BPF_MAXINSNS}"
        ));
    }
    let mut raw = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0,
        };
        n
    ];
    let mut got = len;
    // SAFETY: raw has room for `len` sock_filter entries, which is what len asks for (the
    // kernel counts this option's length in instructions, not bytes).
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            raw.as_mut_ptr().cast(),
            &mut got,
        )
    };
    if r < 0 || got as usize != n {
        return Err(format!(
            "with a socket filter of {n} instructions that cannot be read back (SO_GET_FILTER: \
             {})",
            if r < 0 {
                Errno::last().to_string()
            } else {
                format!("{got} instructions")
            }
        ));
    }
    Ok((
        raw.iter()
            .map(|i| BpfInsn {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect(),
        locked,
    ))
}

/// Attaches `insns` (when there are any), then sets SO_LOCK_FILTER when `locked`.
pub fn attach(sock: BorrowedFd<'_>, insns: &[BpfInsn], locked: bool) -> Result<(), String> {
    if !insns.is_empty() {
        let mut raw: Vec<libc::sock_filter> = insns
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let prog = libc::sock_fprog {
            len: raw.len() as u16,
            filter: raw.as_mut_ptr(),
        };
        // SAFETY: prog points to raw, which lives until the call returns; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(format!(
                "attaching its socket filter of {} instructions (SO_ATTACH_FILTER): {}",
                insns.len(),
                Errno::last()
            ));
        }
    }
    if locked {
        crate::files::sockopts::set(sock, libc::SOL_SOCKET, SO_LOCK_FILTER, &1i32.to_ne_bytes())
            .map_err(|e| format!("locking its socket filter (SO_LOCK_FILTER): {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_filter_and_its_lock_come_back_instruction_for_instruction() {
        let a = crate::files::sockopts::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        assert_eq!(read(a.as_fd()).unwrap(), (vec![], false));
        // Accept IPv4 packets only, up to 0xffff bytes (ld [proto]; jeq 0x800; ret; ret 0).
        let prog = vec![
            BpfInsn {
                code: 0x28,
                jt: 0,
                jf: 0,
                k: 0xfffff000,
            },
            BpfInsn {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: 0x800,
            },
            BpfInsn {
                code: 0x6,
                jt: 0,
                jf: 0,
                k: 0xffff,
            },
            BpfInsn {
                code: 0x6,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        attach(a.as_fd(), &prog, true).unwrap();
        let got = read(a.as_fd()).unwrap();
        assert_eq!(got, (prog.clone(), true));
        let b = crate::files::sockopts::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).unwrap();
        attach(b.as_fd(), &got.0, got.1).unwrap();
        assert_eq!(read(b.as_fd()).unwrap(), (prog, true));
        // Locked: the program cannot be replaced any more.
        assert!(attach(
            b.as_fd(),
            &[BpfInsn {
                code: 0x6,
                jt: 0,
                jf: 0,
                k: 0
            }],
            false
        )
        .is_err());
    }
}
