//! `CREST_FAIL_AT=<step>` makes the real `crest dump` fail at that step, and the victim runs on
//! exactly as before: same mappings, same fds, memory intact (it verifies itself), still
//! logging. The unit tests in src/dump/fault_tests.rs also compare registers and code bytes.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// Every step, in the order a dump reaches them (see src/fault.rs and src/infect/mod.rs).
const STEPS: &[&str] = &[
    "seize",
    "remote-syscall-1",
    "remote-syscall-2",
    "remote-syscall-3",
    "blob-mapped",
    "parasite-command",
    "remote-syscall-4",
    "before-cure",
    "remote-syscall-5",
    "pages",
];

/// `/proc/PID/maps` lines, as the kernel prints them.
fn maps(pid: i32) -> Vec<String> {
    procfs::process::Process::new(pid)
        .unwrap()
        .maps()
        .unwrap()
        .into_iter()
        .map(|m| format!("{m:?}"))
        .collect()
}

/// Runs `crest dump -t PID -D DIR` with CREST_FAIL_AT=step; returns (success, stderr).
fn dump_failing_at(step: &str, pid: i32, dir: &std::path::Path) -> (bool, String) {
    let err = tempfile::tempfile_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut child = Command::new(crest_bin())
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .env("CREST_FAIL_AT", step)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > CREST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crest dump with CREST_FAIL_AT={step} did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = err;
    let mut stderr = String::new();
    err.seek(SeekFrom::Start(0)).unwrap();
    err.read_to_string(&mut stderr).unwrap();
    (status.success(), stderr)
}

#[test]
fn every_injected_failure_leaves_the_victim_running_as_before() {
    let v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    for step in STEPS {
        let maps_before = maps(v.pid);
        let fds_before = v.fd_table();
        let lines = v.log_entries().len();

        let (ok, stderr) = dump_failing_at(step, v.pid, &dir);
        assert!(!ok, "{step}: the dump succeeded");
        assert!(
            stderr.contains(&format!("injected failure at {step} ")),
            "{step}: {stderr}"
        );
        assert!(!dir.exists(), "{step}: an image was left behind");

        wait_for("the tracer to let go", TIMEOUT, || {
            (tracer_pid(v.pid) == Some(0)).then_some(())
        });
        assert_eq!(maps(v.pid), maps_before, "{step}: mappings");
        assert_eq!(v.fd_table(), fds_before, "{step}: fds");
        v.wait_log_grows(lines);
        v.assert_running();
        v.assert_log_consecutive();
        v.verify()
            .unwrap_or_else(|e| panic!("{step}: the victim does not verify: {e}"));
    }
    // Without the variable the same victim dumps, and runs on with -R.
    dump(v.pid, &dir, true).assert_ok();
    v.verify().expect("the victim verifies after a real dump");
}
