//! `crest bench` end to end, on a small Python HTTP server (and the bundled JVM when a JDK is
//! here): every method is in the JSON with its n and sensible figures, the chart is well-formed
//! XML naming every method, a method that cannot run is reported with its error, the exit and
//! log/stdout probes work, and no process the bench started is left behind.
//! No assertion is made on any measured time.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

const PYTHON: &str = "/usr/bin/python3";

/// The workload: appends its pid to PIDS, then either runs ~3 s and exits (`exit`), or serves
/// HTTP on PORT and writes a "tick N" line to stdout and to LOG every 20 ms.
const VICTIM: &str = r#"
import http.server, os, sys, threading, time
port, pids, log, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with open(pids, "a") as f:
    f.write(f"{os.getpid()}\n")
if mode == "exit":
    for _ in range(300):
        time.sleep(0.01)
    sys.exit(0)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
n = 0
while True:
    print(f"tick {n}", flush=True)
    with open(log, "a") as f:
        f.write(f"tick {n}\n")
    n += 1
    time.sleep(0.02)
"#;

struct Setup {
    dir: TempDir,
    port: u16,
}

impl Setup {
    fn new() -> Option<Setup> {
        common::setup();
        if !Path::new(PYTHON).exists() {
            common::say_skipped(&format!("{PYTHON} is not installed"));
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("victim.py"), VICTIM).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some(Setup { dir, port })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, mode: &str) -> Vec<String> {
        vec![
            PYTHON.into(),
            self.path("victim.py").display().to_string(),
            self.port.to_string(),
            self.path("pids").display().to_string(),
            self.path("log").display().to_string(),
            mode.into(),
        ]
    }

    /// Runs `crest bench ARGS -- COMMAND` with a JSON export; returns the JSON and stdout.
    fn bench(&self, args: &[&str], command: &[String]) -> (Value, String) {
        let json = self.path("out.json");
        let _ = std::fs::remove_file(&json);
        let out = Command::new(env!("CARGO_BIN_EXE_crest"))
            .arg("bench")
            .args(args)
            .arg("--work-dir")
            .arg(self.dir.path())
            .arg("--export-json")
            .arg(&json)
            .arg("--")
            .args(command)
            .output()
            .expect("run crest bench");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "crest bench failed: {}\n{stdout}\n{stderr}",
            out.status
        );
        let text = std::fs::read_to_string(&json).unwrap();
        (serde_json::from_str(&text).unwrap(), stdout)
    }

    /// Every workload process the bench started is gone.
    fn assert_nothing_left(&self) {
        let pids = std::fs::read_to_string(self.path("pids")).unwrap_or_default();
        let pids: BTreeSet<i32> = pids.lines().filter_map(|l| l.parse().ok()).collect();
        assert!(!pids.is_empty(), "the workload never ran");
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "workload pid {pid} is still there after the bench"
            );
        }
    }
}

fn result<'a>(json: &'a Value, method: &str) -> &'a Value {
    json["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == method && r["cache"] == "warm")
        .unwrap_or_else(|| panic!("no result for {method} in {json:#}"))
}

/// n successful runs, no error, and figures that hang together.
fn assert_measured(json: &Value, method: &str, n: u64) {
    let r = result(json, method);
    assert!(r["error"].is_null(), "{method} failed: {}", r["error"]);
    assert_eq!(r["n"], n, "{method}: {r}");
    let f = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("{method}: no {k} in {r}"))
    };
    let (min, median, mean, max) = (f("min_ms"), f("median_ms"), f("mean_ms"), f("max_ms"));
    assert!(min > 0.0 && min <= median && median <= max, "{method}: {r}");
    assert!(min <= mean && mean <= max, "{method}: {r}");
    assert!(f("stddev_ms") >= 0.0);
    let cold = result(json, "cold")["median_ms"].as_f64().unwrap();
    assert!(
        (f("ratio_to_cold") - median / cold).abs() < 1e-9,
        "{method}: {r}"
    );
    if method != "cold" && method.starts_with("crest") {
        let d = &r["dump"];
        assert!(d["image_bytes"].as_u64().unwrap() > 0, "{method}: {r}");
        assert!(d["wall_ms"].as_f64().unwrap() > 0.0, "{method}: {r}");
        assert!(d["frozen_ms"].as_f64().unwrap() > 0.0, "{method}: {r}");
    }
}

#[test]
fn every_crest_mode_against_a_cold_start_with_every_export() {
    let Some(s) = Setup::new() else { return };
    let url = format!("http://127.0.0.1:{}/", s.port);
    let chart = s.path("chart.svg");
    let csv = s.path("out.csv");
    let md = s.path("out.md");
    let modes = [
        "cold",
        "crest-copy",
        "crest-map",
        "crest-map-prefetch",
        "crest-lazy",
    ];
    let (json, table) = s.bench(
        &[
            "--runs",
            "2",
            "--warmup",
            "0.3",
            "--modes",
            &modes.join(","),
            "--ready-url",
            &url,
            "--chart",
            chart.to_str().unwrap(),
            "--export-csv",
            csv.to_str().unwrap(),
            "--export-markdown",
            md.to_str().unwrap(),
            "--evict",
        ],
        &s.command("serve"),
    );
    s.assert_nothing_left();
    // Every restore method twice: image in the page cache, and evicted.
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * modes.len() - 1, "{json:#}");
    for m in modes {
        assert_measured(&json, m, 2);
        assert!(table.contains(m), "{m} not in the table:\n{table}");
        if m != "cold" {
            let evicted = results
                .iter()
                .find(|r| r["method"] == m && r["cache"] == "evicted")
                .unwrap_or_else(|| panic!("no evicted row for {m}"));
            assert_eq!(evicted["n"], 2, "{evicted}");
            assert!(evicted["error"].is_null(), "{evicted}");
            assert!(table.contains(&format!("{m} (evicted)")), "{table}");
        }
    }
    assert_eq!(result(&json, "cold")["ratio_to_cold"], 1.0);
    let env = &json["environment"];
    for k in ["kernel", "cpu_model", "cpus", "load_average_start", "cache"] {
        assert!(!env[k].is_null(), "environment has no {k}: {env}");
    }

    // The chart: well-formed XML, one labelled row per method, labelled axis.
    let svg = std::fs::read_to_string(&chart).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    for m in modes {
        assert!(
            texts.iter().any(|t| t == m),
            "{m} not labelled in the chart"
        );
    }
    assert!(
        texts.iter().any(|t| t.contains("(ms")),
        "no axis unit in {texts:?}"
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + results.len(), "{csv}");
    let md = std::fs::read_to_string(&md).unwrap();
    for m in modes {
        assert!(
            md.contains(&format!("| {m} |")),
            "{m} not in the Markdown:\n{md}"
        );
    }
}

#[test]
fn a_method_that_cannot_run_is_reported_with_its_error() {
    let Some(s) = Setup::new() else { return };
    let url = format!("http://127.0.0.1:{}/", s.port);
    let common = ["--runs", "1", "--warmup", "0.2", "--ready-url", &url];
    // No CRIU there: both CRIU methods are in the results, failed, saying why.
    let mut args = common.to_vec();
    args.extend([
        "--modes",
        "cold,criu,criu-lazy",
        "--criu",
        "/nonexistent/criu",
    ]);
    let (json, table) = s.bench(&args, &s.command("serve"));
    assert_measured(&json, "cold", 1);
    for m in ["criu", "criu-lazy"] {
        let r = result(&json, m);
        assert_eq!(r["n"], 0);
        assert!(r["median_ms"].is_null());
        let e = r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{m} has no error: {r}"));
        assert!(e.contains("/nonexistent/criu"), "{m}: {e}");
        assert!(table.contains("FAILED"), "{table}");
    }
    // A "criu" that fails its dump.
    let mut args = common.to_vec();
    args.extend(["--modes", "cold,criu", "--criu", "/bin/false"]);
    let (json, _) = s.bench(&args, &s.command("serve"));
    let e = result(&json, "criu")["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("checkpoint failed") && e.contains("/bin/false"),
        "{e}"
    );
    // A workload that never gets ready (nothing listens on that port): a failed method with
    // the time-out, not a missing one.
    let (json, _) = s.bench(
        &[
            "--runs",
            "1",
            "--timeout",
            "2",
            "--modes",
            "cold",
            "--ready-port",
            "1",
        ],
        &s.command("serve"),
    );
    let e = result(&json, "cold")["error"].as_str().unwrap().to_string();
    assert!(e.contains("not ready within 2 s"), "{e}");
    s.assert_nothing_left();
}

#[test]
fn exit_log_and_stdout_probes() {
    let Some(s) = Setup::new() else { return };
    let log_probe = format!("{}:^tick [0-9]+$", s.path("log").display());
    for (probe, value, mode) in [
        ("--ready-exit", None, "exit"),
        ("--ready-log", Some(log_probe.as_str()), "serve"),
        ("--ready-stdout", Some("^tick"), "serve"),
    ] {
        let mut args = vec![
            "--runs",
            "1",
            "--warmup",
            "0.5",
            "--modes",
            "cold,crest-copy",
            probe,
        ];
        args.extend(value);
        let (json, _) = s.bench(&args, &s.command(mode));
        assert_measured(&json, "cold", 1);
        assert_measured(&json, "crest-copy", 1);
    }
    s.assert_nothing_left();
}

#[test]
fn the_bundled_jvm_against_its_cds_archive() {
    common::setup();
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|j| j.is_file())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("java"))
                .find(|p| p.is_file())
        });
    let Some(java) = java else {
        common::say_skipped("no JDK (java on PATH or JAVA_HOME)");
        return;
    };
    if !java.with_file_name("javac").is_file() {
        common::say_skipped(&format!("{} has no javac next to it", java.display()));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_crest"))
        .args([
            "bench",
            "--workload",
            "demo",
            "--runs",
            "1",
            "--warmup",
            "0.5",
        ])
        .args(["--modes", "cold,crest-copy,cds", "--java"])
        .arg(&java)
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--export-json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for m in ["cold", "crest-copy", "cds"] {
        assert_measured(&json, m, 1);
    }
    assert!(json["environment"]["jdk"]
        .as_str()
        .unwrap()
        .contains("version"));
}

#[test]
fn an_interrupted_bench_ends_what_it_started_and_removes_its_files() {
    let Some(s) = Setup::new() else { return };
    let url = format!("http://127.0.0.1:{}/", s.port);
    let work = s.path("work");
    std::fs::create_dir(&work).unwrap();
    let bench = Command::new(env!("CARGO_BIN_EXE_crest"))
        .args(["bench", "--runs", "200", "--warmup", "0.2"])
        .args([
            "--modes",
            "cold,crest-copy",
            "--ready-url",
            &url,
            "--work-dir",
        ])
        .arg(&work)
        .arg("--")
        .args(s.command("serve"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt it in the middle of its rounds (a few workloads started already).
    common::wait_for(
        "the bench to start its rounds",
        common::CREST_TIMEOUT,
        || {
            let n = std::fs::read_to_string(s.path("pids"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            (n >= 4).then_some(())
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bench.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = bench.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    s.assert_nothing_left();
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
    assert!(left.is_empty(), "the bench left {left:?}");
}
