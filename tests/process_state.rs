//! Per-process settings survive dump and restore, or the dump (or restore) refuses them with a
//! message naming the pid and the setting. The pstate victim (tests/victims/pstate.c) sets
//! oom_score_adj 500, a login uid, PR_SET_THP_DISABLE, a timer slack, the machine-check kill
//! policy, membarrier registrations, nice 7 and a one-CPU affinity; maps memory with six
//! madvise advices, with MADV_RANDOM|NOHUGEPAGE, locked on fault and sealed; maps two files
//! MAP_SHARED writable (one mprotect'ed read-only since); names a private and a shared
//! anonymous mapping (PR_SET_VMA_ANON_NAME, when the kernel has it); and holds an O_PATH fd. It checks all
//! of that from the inside on request; the tests compare what /proc shows from the outside
//! before the dump and after the restore, and that writes through the shared mappings reach
//! the files after a restore.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

use common::*;

/// `CAP_AUDIT_CONTROL` (include/uapi/linux/capability.h).
const CAP_AUDIT_CONTROL: libc::c_ulong = 30;

/// What /proc shows of the victim's settings from the outside.
fn outside_view(pid: i32) -> BTreeMap<&'static str, String> {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/{f}: {e}"))
            .trim()
            .to_string()
    };
    let status = read("status");
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    };
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .unwrap_or_else(|e| panic!("stat of {pid}: {e}"));
    BTreeMap::from([
        ("oom_score_adj", read("oom_score_adj")),
        ("loginuid", read("loginuid")),
        ("timerslack_ns", read("timerslack_ns")),
        ("THP_enabled", line("THP_enabled")),
        ("Cpus_allowed_list", line("Cpus_allowed_list")),
        ("nice", stat.nice.to_string()),
        ("policy", stat.policy.unwrap_or(0).to_string()),
    ])
}

/// The `[anon:NAME]` and `[anon_shmem:NAME]` names of /proc/PID/maps with their address ranges.
fn anon_names(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/maps: {e}"))
        .lines()
        .filter(|l| l.contains("[anon:") || l.contains("[anon_shmem:"))
        .map(|l| {
            let range = l.split_whitespace().next().unwrap_or_default();
            let name = &l[l.find('[').unwrap()..];
            format!("{range} {name}")
        })
        .collect()
}

/// Whether the victim could name its memory (`names 1` in CTL/info: the kernel has
/// CONFIG_ANON_VMA_NAME).
fn victim_named_memory(v: &Victim) -> bool {
    let info = std::fs::read_to_string(v.ctl.join("info")).expect("pstate info");
    info.lines().any(|l| l == "names 1")
}

/// The first 8 bytes of a file, as the victim writes its counter there.
fn file_counter(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    u64::from_ne_bytes(bytes[..8].try_into().unwrap())
}

/// The victim verifies, and its writes through both shared mappings reached the files.
fn verify_and_check_files(v: &Victim, context: &str) -> u64 {
    let n = v.verify().unwrap_or_else(|e| panic!("{context}: {e}"));
    for f in ["shared.dat", "shared-ro.dat"] {
        assert_eq!(
            file_counter(&v.work.join(f)),
            n,
            "{context}: the write through the shared mapping of {f} did not reach the file"
        );
    }
    n
}

/// The victim's MAP_DROPPABLE mapping (address in CTL/info, 0 when the kernel lacks it) is in
/// the image as a mapping with no page stored: its contents may be dropped at any time, and
/// are, by a dump (as CRIU does); the victim accepts zeros there.
fn assert_droppable_not_stored(v: &Victim, image: &serde_json::Value, ctx: &str) {
    let info = std::fs::read_to_string(v.ctl.join("info")).expect("read pstate info");
    let addr: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("droppable "))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no droppable line in {info:?}"));
    if addr == 0 {
        return;
    }
    let process = &image["processes"][0];
    let vma = process["vmas"]
        .as_array()
        .expect("vmas")
        .iter()
        .find(|m| m["start"].as_u64() == Some(addr))
        .unwrap_or_else(|| panic!("{ctx}: no VMA at the droppable mapping {addr:#x}"));
    assert_eq!(vma["flags"]["droppable"], true, "{ctx}: {vma}");
    let end = vma["end"].as_u64().expect("end");
    for run in process["page_runs"].as_array().expect("page_runs") {
        let start = run["vaddr"].as_u64().expect("vaddr");
        let stop = start + run["npages"].as_u64().expect("npages") * 4096;
        assert!(
            stop <= addr || start >= end,
            "{ctx}: page run {run} stores droppable memory {addr:#x}-{end:#x}"
        );
    }
}

/// The victim's guard regions (the middle two pages of its "guarded" mapping; address in
/// CTL/info, 0 when the kernel lacks MADV_GUARD_INSTALL) are in the image; after the restore
/// the victim checks they still fault.
fn assert_guard_regions_recorded(v: &Victim, image: &serde_json::Value, ctx: &str) {
    let info = std::fs::read_to_string(v.ctl.join("info")).expect("read pstate info");
    let addr: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("guarded "))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no guarded line in {info:?}"));
    if addr == 0 {
        return;
    }
    let vma = image["processes"][0]["vmas"]
        .as_array()
        .expect("vmas")
        .iter()
        .find(|m| m["start"].as_u64() == Some(addr))
        .unwrap_or_else(|| panic!("{ctx}: no VMA at the guarded mapping {addr:#x}"));
    assert_eq!(
        vma["guard_ranges"],
        serde_json::json!([[addr + 4096, addr + 3 * 4096]]),
        "{ctx}: {vma}"
    );
}

#[test]
fn the_victim_checks_its_own_settings_and_notices_a_change() {
    let v = Victim::start(Kind::Pstate);
    let view = outside_view(v.pid);
    assert_eq!(view["oom_score_adj"], "500");
    assert_eq!(view["timerslack_ns"], "123456");
    assert_eq!(view["nice"], "7");
    assert_eq!(view["THP_enabled"], "0");
    verify_and_check_files(&v, "fresh victim");
    // Changed from the outside, the victim must notice: or the restore test proves nothing.
    std::fs::write(format!("/proc/{}/oom_score_adj", v.pid), "600").unwrap();
    let err = v
        .verify()
        .expect_err("a changed oom_score_adj went unnoticed");
    assert!(err.contains("oom_score_adj"), "unexpected complaint: {err}");
}

#[test]
fn settings_mappings_and_fds_survive_two_dump_restore_cycles() {
    let mut v = Victim::start(Kind::Pstate);
    let view = outside_view(v.pid);
    let fds = v.fd_table();
    let names = anon_names(v.pid);
    if victim_named_memory(&v) {
        let joined = names.join("\n");
        assert!(joined.contains("[anon:crest private]"), "{joined}");
        assert!(joined.contains("[anon_shmem:crest shared]"), "{joined}");
    } else {
        eprintln!("this kernel does not name anonymous memory (no CONFIG_ANON_VMA_NAME)");
    }
    let mut last = verify_and_check_files(&v, "before any dump");
    for cycle in 1..=2 {
        let ctx = format!("cycle {cycle}");
        let dir = v.work.join(format!("img{cycle}"));
        let before = v.last_logged();
        dump(v.pid, &dir, false).assert_ok();
        v.reap();
        let image = show_json(&dir);
        let settings = &image["processes"][0]["task"]["settings"];
        assert_eq!(settings["oom_score_adj"], 500, "{ctx}: {settings}");
        assert_eq!(settings["thp_disable"], 1, "{ctx}: {settings}");
        assert_droppable_not_stored(&v, &image, &ctx);
        assert_guard_regions_recorded(&v, &image, &ctx);
        let info = std::fs::read_to_string(v.ctl.join("info")).expect("read pstate info");
        let membarrier: i64 = info
            .lines()
            .find_map(|l| l.strip_prefix("membarrier "))
            .and_then(|m| m.trim().parse().ok())
            .expect("membarrier line in the pstate info");
        if membarrier >= 0 {
            assert_eq!(settings["membarrier"], membarrier, "{ctx}: {settings}");
        }

        restore_detached(&dir, &[]).assert_ok();
        v.mark_restored();
        v.wait_logging_after(before);
        v.assert_running();
        let n = verify_and_check_files(&v, &ctx);
        assert!(n > last, "{ctx}: counter {n} did not move past {last}");
        last = n;
        assert_eq!(outside_view(v.pid), view, "{ctx}: settings seen from /proc");
        assert_eq!(v.fd_table(), fds, "{ctx}: fd table");
        assert_eq!(anon_names(v.pid), names, "{ctx}: named anonymous memory");
    }
    v.assert_log_consecutive();
}

#[test]
fn a_login_uid_other_than_crest_s_is_set_and_one_that_cannot_be_fails_the_restore() {
    let mut v = Victim::start(Kind::Pstate);
    let want = outside_view(v.pid)["loginuid"].clone();
    v.verify().expect("victim verifies before the dump");
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();

    // crest without CAP_AUDIT_CONTROL, holding another login uid: the restored task inherits
    // crest's and cannot change it, so the restore must fail and say so.
    let restore_args = [
        "restore".as_ref(),
        "-D".as_ref(),
        dir.as_os_str(),
        "-d".as_ref(),
    ];
    let out = spawn_crest_with(restore_args, |cmd| {
        // SAFETY: the hook runs in the forked child before exec and only makes system calls
        // (open/write/close through std::fs on a fresh process, and prctl).
        unsafe {
            cmd.pre_exec(|| {
                std::fs::write("/proc/self/loginuid", "777")?;
                if libc::prctl(libc::PR_CAPBSET_DROP, CAP_AUDIT_CONTROL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .wait(CREST_TIMEOUT);
    assert_no_process(v.pid, "restore without CAP_AUDIT_CONTROL");
    // The victim (started as root) held CAP_AUDIT_CONTROL itself, which crest without it
    // cannot give back either: refused for that first, or for the login uid.
    out.assert_failed().assert_stderr_mentions(&v.pid_str());
    assert!(
        out.stderr.contains("audit login uid") || out.stderr.contains("CAP_AUDIT_CONTROL"),
        "{out}"
    );

    // With the capability, crest's own login uid is no obstacle: the image's comes back.
    let before = v.last_logged();
    let out = spawn_crest_with(restore_args, |cmd| {
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(|| std::fs::write("/proc/self/loginuid", "777"));
        }
    })
    .wait(CREST_TIMEOUT);
    out.assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    assert_eq!(outside_view(v.pid)["loginuid"], want);
    verify_and_check_files(&v, "restored by a crest with another login uid");
}

/// Starts the victim with `flag`, checks that a dump refuses it with a message naming the pid
/// and containing `mentions`, and that the victim runs on unharmed.
fn assert_refused_and_left_running(flag: &str, mentions: &str) {
    let v = Victim::start_with(Kind::Pstate, |cmd| {
        cmd.arg(flag);
    });
    let dir = v.work.join("img");
    let out = dump(v.pid, &dir, false);
    out.assert_failed()
        .assert_stderr_mentions(&format!("process {}", v.pid))
        .assert_stderr_mentions(mentions);
    assert!(!dir.exists(), "a refused dump left an image");
    wait_for("the tracer to let go", TIMEOUT, || {
        (tracer_pid(v.pid) == Some(0)).then_some(())
    });
    let at = v.last_logged();
    v.wait_logging_after(at + 2);
    v.verify()
        .expect("the victim verifies after the refused dump");
}

#[test]
fn memory_deny_write_execute_is_refused_and_the_process_left_running() {
    assert_refused_and_left_running("--mdwe", "memory-deny-write-execute");
}

#[test]
fn syscall_user_dispatch_is_refused_and_the_process_left_running() {
    // Single-threaded: the thread named is the process's only one.
    assert_refused_and_left_running("--sud", "PR_SET_SYSCALL_USER_DISPATCH");
}

/// Every thread's nice value, timer slack and CPU affinity, read from the outside, by tid.
fn thread_sched_view(pid: i32) -> BTreeMap<i32, (i32, String, Vec<usize>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: getpriority reads one thread's nice value; errno is cleared first because -1
        // is a valid nice value.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
        };
        let slack = std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns"))
            .unwrap()
            .trim()
            .to_string();
        // SAFETY: a zeroed cpu_set_t, filled by the kernel for thread `tid`.
        let cpus = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        };
        out.insert(tid, (nice, slack, cpus));
    }
    out
}

/// Threads with a scheduling state of their own keep it, and the others keep theirs (the
/// restore leaves alone the threads whose state the leader's clone gave them already).
#[test]
fn per_thread_nice_timer_slack_and_affinity_survive() {
    let mut v = Victim::start(Kind::MThreads);
    v.verify().expect("victim verifies before the dump");
    let tids: Vec<i32> = thread_sched_view(v.pid)
        .into_keys()
        .filter(|&t| t != v.pid)
        .collect();
    assert!(tids.len() >= 4, "mthreads has threads: {tids:?}");
    // SAFETY: setpriority and sched_setaffinity on threads of our own victim.
    unsafe {
        assert_eq!(
            libc::setpriority(libc::PRIO_PROCESS, tids[0] as libc::id_t, 5),
            0
        );
        assert_eq!(
            libc::setpriority(libc::PRIO_PROCESS, v.pid as libc::id_t, 3),
            0
        );
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        assert_eq!(
            libc::sched_setaffinity(tids[2], std::mem::size_of::<libc::cpu_set_t>(), &one),
            0
        );
    }
    std::fs::write(format!("/proc/{}/timerslack_ns", tids[1]), "77777").unwrap();
    let before = thread_sched_view(v.pid);
    assert_eq!(before[&tids[0]].0, 5);
    assert_eq!(before[&v.pid].0, 3);
    assert_eq!(before[&tids[1]].1, "77777");
    assert_eq!(before[&tids[2]].2, vec![0]);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let mark = v.last_logged();
    restore_detached(&dir, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(mark);
    assert_eq!(
        thread_sched_view(v.pid),
        before,
        "every thread's nice, timer slack and affinity, by tid"
    );
    v.verify().expect("victim verifies after the restore");
}
