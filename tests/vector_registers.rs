//! Vector registers survive a dump that leaves the process running and a dump and restore. The
//! vregs victim (tests/victims/vregs.c) holds known values in every xmm, ymm or zmm register
//! and the AVX-512 mask registers, as this CPU has them (on aarch64: v0..v31 and FPCR), from
//! the moment it logs a round until the test asks it to check them; the dump always catches it
//! in that window.
//!
//! On a CPU with AMX the kernel's NT_X86_XSTATE area (for every supported component) is larger
//! than the signal frame a process without AMX permission may rt_sigreturn from; a frame built
//! from the whole area made the kernel restore x87/SSE alone, so every restored process came
//! back with the upper halves of its ymm/zmm registers cleared.

mod common;

use common::*;

/// The mode the victim must pick on this machine, from the CPU flags the kernel reports.
#[cfg(target_arch = "x86_64")]
fn expected_mode() -> &'static str {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    if flags.contains(&"avx512f") {
        "avx512"
    } else if flags.contains(&"avx") {
        "avx"
    } else {
        "sse"
    }
}

/// On aarch64 the victim holds the NEON registers v0..v31 and FPCR, which every arm64 CPU has.
#[cfg(target_arch = "aarch64")]
fn expected_mode() -> &'static str {
    "neon"
}

#[test]
fn vector_registers_survive_dump_and_restore() {
    let mut v = Victim::start(Kind::Vregs);
    let info = std::fs::read_to_string(v.ctl.join("info")).expect("read the victim's info");
    assert_eq!(info.trim(), format!("mode {}", expected_mode()));
    let first = v.verify().expect("the fresh victim keeps its registers");

    // Dump and leave running: crest puts back the registers it changed to run the parasite.
    let held = v.wait_logging_after(first);
    dump(v.pid, &v.work.join("img-running"), true).assert_ok();
    let n = v
        .verify()
        .unwrap_or_else(|e| panic!("after a dump with --leave-running: {e}"));
    assert_eq!(n, held, "the victim left the round it was in");

    // Dump, kill, restore: the leader gets them from its rt_sigreturn frame, the victim's second
    // thread (which holds a pattern of its own) by ptrace at its breakpoint in the restorer.
    let held = v.wait_logging_after(n);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    let n = v
        .verify()
        .unwrap_or_else(|e| panic!("after the restore: {e}"));
    assert_eq!(
        n, held,
        "the restored victim is not in the round it was dumped in"
    );
    // The restored process goes on loading and checking its registers.
    v.wait_logging_after(n);
    v.verify().expect("a second round after the restore");
}
