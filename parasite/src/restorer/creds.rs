//! Switching the calling thread to the image's credentials (`CredsArg`), in an order that
//! keeps the capabilities each call needs until the call that drops them:
//!
//! 1. securebits = SECBIT_NO_SETUID_FIXUP, so the uid changes below leave the capability sets
//!    alone (capabilities(7), "Effect of user ID changes on capabilities");
//! 2. setgroups, setresgid, setfsgid, setresuid, setfsuid (CAP_SETGID / CAP_SETUID), each
//!    filesystem id read back, since setfs[ug]id reports no error;
//! 3. capset with the image's inheritable set, effective and permitted unchanged (the new
//!    inheritable set must lie within the old inheritable set and bounding set, so before the
//!    bounding set shrinks);
//! 4. ambient set cleared, then raised bit by bit (each bit must be permitted and inheritable,
//!    and SECBIT_NO_CAP_AMBIENT_RAISE not yet set);
//! 5. PR_CAPBSET_DROP for every bit the image's bounding set lacks (CAP_SETPCAP);
//! 6. securebits = the image's (CAP_SETPCAP);
//! 7. capset with the image's effective, permitted and inheritable sets: the last call, the
//!    one that gives up crest's capabilities.

use crate::abi::*;
use crate::arch::{self, nr};

const PR_CAPBSET_DROP: usize = 24;
const PR_SET_SECUREBITS: usize = 28;
const PR_CAP_AMBIENT: usize = 47;
const PR_CAP_AMBIENT_RAISE: usize = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: usize = 4;
const SECBIT_NO_SETUID_FIXUP: usize = 1 << 2;
/// _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const EPERM: i32 = 1;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(step: u64, ret: isize) -> Result<usize, (u64, i32)> {
    if (-4095..0).contains(&ret) {
        Err((step, ret as i32))
    } else {
        Ok(ret as usize)
    }
}

fn prctl(step: u64, option: usize, a2: usize) -> Result<usize, (u64, i32)> {
    // SAFETY: every prctl used here takes integers only.
    check(step, unsafe {
        arch::syscall5(nr::PRCTL, option, a2, 0, 0, 0)
    })
}

fn caps(effective: u64, permitted: u64, inheritable: u64) -> [CapData; 2] {
    let word = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let mut d = [CapData::default(); 2];
    for (i, slot) in d.iter_mut().enumerate() {
        *slot = CapData {
            effective: word(effective, i as u32),
            permitted: word(permitted, i as u32),
            inheritable: word(inheritable, i as u32),
        };
    }
    d
}

fn capget(step: u64) -> Result<(u64, u64), (u64, i32)> {
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: the header and two data words are valid for the kernel to read and write.
    check(step, unsafe {
        arch::syscall2(
            nr::CAPGET,
            &mut hdr as *mut CapHeader as usize,
            d.as_mut_ptr() as usize,
        )
    })?;
    let join = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    Ok((
        join(d[0].effective, d[1].effective),
        join(d[0].permitted, d[1].permitted),
    ))
}

fn capset(step: u64, data: [CapData; 2]) -> Result<(), (u64, i32)> {
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: the header and two data words are valid; the kernel only reads the data.
    check(step, unsafe {
        arch::syscall2(
            nr::CAPSET,
            &mut hdr as *mut CapHeader as usize,
            data.as_ptr() as usize,
        )
    })?;
    Ok(())
}

/// setfsuid/setfsgid return the previous id and never fail; calling again with -1 (an invalid
/// id, which changes nothing) reads the current one back.
fn set_fs_id(step: u64, call: usize, id: u32) -> Result<(), (u64, i32)> {
    // SAFETY: integer arguments only.
    unsafe { arch::syscall1(call, id as usize) };
    // SAFETY: as above.
    let now = unsafe { arch::syscall1(call, u32::MAX as usize) } as u32;
    if now != id {
        return Err((step, -EPERM));
    }
    Ok(())
}

/// Switches the calling thread; on failure returns the CREDS_STEP_* that failed and its
/// negative errno.
pub fn switch(c: &CredsArg) -> Result<(), (u64, i32)> {
    if c.present == 0 {
        return Ok(());
    }
    prctl(
        CREDS_STEP_KEEP_CAPS,
        PR_SET_SECUREBITS,
        SECBIT_NO_SETUID_FIXUP,
    )?;
    // SAFETY: `groups` points at nr_groups u32s in the bootstrap region (crest's layout).
    check(CREDS_STEP_SETGROUPS, unsafe {
        arch::syscall2(nr::SETGROUPS, c.nr_groups as usize, c.groups as usize)
    })?;
    // SAFETY: integer arguments only.
    check(CREDS_STEP_SETRESGID, unsafe {
        arch::syscall3(
            nr::SETRESGID,
            c.gid[0] as usize,
            c.gid[1] as usize,
            c.gid[2] as usize,
        )
    })?;
    set_fs_id(CREDS_STEP_SETFSGID, nr::SETFSGID, c.gid[3])?;
    // SAFETY: integer arguments only.
    check(CREDS_STEP_SETRESUID, unsafe {
        arch::syscall3(
            nr::SETRESUID,
            c.uid[0] as usize,
            c.uid[1] as usize,
            c.uid[2] as usize,
        )
    })?;
    set_fs_id(CREDS_STEP_SETFSUID, nr::SETFSUID, c.uid[3])?;

    let (eff, prm) = capget(CREDS_STEP_CAPSET_INHERITABLE)?;
    capset(
        CREDS_STEP_CAPSET_INHERITABLE,
        caps(eff, prm, c.cap_inheritable),
    )?;
    prctl(CREDS_STEP_AMBIENT, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)?;
    for cap in 0..=c.last_cap.min(63) {
        if c.cap_ambient & (1 << cap) != 0 {
            // SAFETY: integer arguments only.
            check(CREDS_STEP_AMBIENT, unsafe {
                arch::syscall5(
                    nr::PRCTL,
                    PR_CAP_AMBIENT,
                    PR_CAP_AMBIENT_RAISE,
                    cap as usize,
                    0,
                    0,
                )
            })?;
        }
    }
    for cap in 0..=c.last_cap.min(63) {
        if c.cap_bounding & (1 << cap) == 0 {
            prctl(CREDS_STEP_BOUNDING, PR_CAPBSET_DROP, cap as usize)?;
        }
    }
    prctl(
        CREDS_STEP_SECUREBITS,
        PR_SET_SECUREBITS,
        c.securebits as usize,
    )?;
    capset(
        CREDS_STEP_CAPSET,
        caps(c.cap_effective, c.cap_permitted, c.cap_inheritable),
    )
}
