//! The methods a bench compares, and how each one is prepared (a checkpoint, a training run)
//! and run once (spawn -> ready).
//!
//! crest methods run this very binary (std::env::current_exe) as child processes, CRIU methods
//! the given criu binary; the JDK's methods add their options to the java command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::probe::{Probe, Watch};
use super::procs;
use super::report::{Cache, DumpFigures};
use super::workload::{with_jvm_options, Jdk};

/// Every method, in the order of the report.
pub const ALL: [&str; 10] = [
    "cold",
    "crest-copy",
    "crest-map",
    "crest-map-prefetch",
    "crest-lazy",
    "crest-lazy-prefetch",
    "criu",
    "criu-lazy",
    "aot-cache",
    "cds",
];

/// Whether a method restores a checkpoint (and so has an evicted variant and dump figures).
pub fn restores(method: &str) -> bool {
    method.starts_with("crest-") || method.starts_with("criu")
}

/// What every method needs to know.
pub struct Ctx {
    pub argv: Vec<String>,
    pub probe: Probe,
    pub work: PathBuf,
    pub cwd: Option<PathBuf>,
    pub crest: PathBuf,
    /// The criu binary, or why there is none.
    pub criu: Result<PathBuf, String>,
    pub jdk: Option<Jdk>,
    pub warmup: Duration,
    pub warmup_requests: u32,
    pub timeout: Duration,
    /// Files the workload writes besides its stdout and stderr (restored to their dump-time
    /// size before each restore).
    pub written: Vec<PathBuf>,
    /// `crest restore` knows --no-prefetch (the working set has landed).
    pub crest_has_no_prefetch: bool,
    /// When the command is not java itself but starts a JVM (a script): JVM options go through
    /// JDK_JAVA_OPTIONS, starting with these (the variable's value in the bench's environment
    /// and the common options); None: they are inserted after the java program.
    pub jvm_env: Option<Vec<String>>,
}

/// A checkpoint to restore again and again.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub pid: i32,
    pub figures: DumpFigures,
    /// Files the workload writes, with their size and modification time at dump time.
    pub sizes: Vec<(PathBuf, u64, std::time::SystemTime)>,
    pub stdout: PathBuf,
}

/// What a method prepared before its first timed run.
pub enum Prepared {
    Nothing,
    Checkpoint(Checkpoint),
    /// The command line with the JDK's archive options.
    Launch(Launch),
}

/// How to start the workload: its command line and extra environment.
#[derive(Debug, Clone)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Extra JVM options every run of a Java workload gets: without the hsperfdata file, a JVM
/// starting between a dump and its restore cannot delete a file the dumped JVM mapped (which
/// CRIU needs to find again).
pub fn common_jvm_options() -> Vec<String> {
    vec!["-XX:+PerfDisableSharedMem".into()]
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A started workload instance (not timed): ready, warmed up.
struct Instance {
    pid: i32,
    stdout: PathBuf,
}

impl Ctx {
    /// A URL or port probe that already says ready before anything was started would time
    /// another process: refuse the run.
    fn probe_idle(&self) -> Result<(), String> {
        if matches!(self.probe, Probe::Url { .. } | Probe::Port { .. })
            && Watch::new(&self.probe, 0, Path::new("")).ready()
        {
            return Err(format!(
                "the probe ({}) already says ready before the workload was started or restored: \
                 another process answers there (end it, or pick another port)",
                self.probe.describe()
            ));
        }
        Ok(())
    }

    /// The workload's launch with these JVM options.
    pub fn launch(&self, opts: &[String]) -> Launch {
        match &self.jvm_env {
            None => Launch {
                argv: with_jvm_options(&self.argv, opts),
                env: Vec::new(),
            },
            Some(base) => {
                let all: Vec<String> = base.iter().chain(opts).cloned().collect();
                Launch {
                    argv: self.argv.clone(),
                    env: if all.is_empty() {
                        Vec::new()
                    } else {
                        vec![("JDK_JAVA_OPTIONS".to_string(), all.join(" "))]
                    },
                }
            }
        }
    }

    /// Waits until `watch` says ready; fails when `gone()` says the instance can no longer
    /// get ready, or on the timeout. Returns the time since `t0`.
    fn wait_ready(
        &self,
        watch: &mut Watch,
        t0: Instant,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<f64, String> {
        loop {
            if watch.ready() {
                return Ok(t0.elapsed().as_secs_f64() * 1000.0);
            }
            if let Some(why) = gone() {
                // One last look: it may have got ready just before.
                if watch.ready() {
                    return Ok(t0.elapsed().as_secs_f64() * 1000.0);
                }
                return Err(why);
            }
            if let Some(why) = self.wait_over(t0, "") {
                return Err(why);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Why a wait for readiness that began at `t0` ends now: the bench was interrupted, or the
    /// timeout passed (`what` says after what, e.g. " of starting `...`"). None: wait on.
    fn wait_over(&self, t0: Instant, what: &str) -> Option<String> {
        if procs::stopping() {
            return Some("interrupted".into());
        }
        (t0.elapsed() > self.timeout).then(|| {
            format!(
                "not ready within {} s{what} ({})",
                self.timeout.as_secs(),
                self.probe.describe()
            )
        })
    }

    /// Starts `argv` and times it to ready; the instance is left running (unless it exited).
    fn start(&self, launch: &Launch, tag: &str) -> Result<(Instance, f64), String> {
        self.probe_idle()?;
        let prefix = self.work.join(tag);
        let t0 = Instant::now();
        let s = procs::spawn_with_env(&launch.argv, &launch.env, &prefix, self.cwd.as_deref())
            .map_err(|e| e.to_string())?;
        let mut watch = Watch::new(&self.probe, s.pid, &s.stdout);
        let exit_probe = matches!(self.probe, Probe::Exit);
        let res = self.wait_ready(&mut watch, t0, || {
            (!exit_probe && !procs::running(s.pid)).then(|| {
                format!(
                    "the workload (pid {}) exited before it was ready: {}",
                    s.pid,
                    procs::tail_of(&[&s.stderr, &s.stdout])
                )
            })
        });
        match res {
            Ok(ms) => Ok((
                Instance {
                    pid: s.pid,
                    stdout: s.stdout,
                },
                ms,
            )),
            Err(e) => {
                let _ = procs::end(s.pid);
                Err(e)
            }
        }
    }

    /// Starts the workload once (untimed) and looks for a JVM among its processes: the java
    /// program one of them runs.
    pub fn find_jvm(&self) -> Result<Option<PathBuf>, String> {
        let (inst, _) = self.start(&self.launch(&[]), "first-start")?;
        let java = crate::proc::bench::group_members(inst.pid)
            .into_iter()
            .filter_map(crate::proc::bench::exe)
            .find(|exe| exe.file_name().is_some_and(|n| n == "java"));
        procs::end(inst.pid).map_err(|e| e.to_string())?;
        Ok(java)
    }

    /// How a method starts or restores the workload, for the report.
    pub fn describe(&self, method: &str, p: &Prepared) -> String {
        let show = |l: &Launch| {
            let env: String = l.env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
            format!("{env}{}", l.argv.join(" "))
        };
        match p {
            Prepared::Nothing => show(&self.launch(&[])),
            Prepared::Launch(l) => show(l),
            Prepared::Checkpoint(cp) => {
                let mut a = self.restore_argv(method, cp).join(" ");
                if method == "criu-lazy" {
                    a = format!("criu lazy-pages -D {} & {a}", cp.dir.display());
                }
                a
            }
        }
    }

    /// One timed start (cold, AOT cache, CDS): spawn -> ready, then ended.
    pub fn run_start(&self, launch: &Launch, tag: &str) -> Result<f64, String> {
        let (inst, ms) = self.start(launch, tag)?;
        procs::end(inst.pid).map_err(|e| e.to_string())?;
        Ok(ms)
    }

    /// Starts an instance and waits for it to be ready and warmed up (for a checkpoint or a
    /// training run). With --ready-exit, it is only given the warm-up time.
    fn warmed_instance(&self, launch: &Launch, tag: &str) -> Result<Instance, String> {
        if matches!(self.probe, Probe::Exit) {
            let s = procs::spawn_with_env(
                &launch.argv,
                &launch.env,
                &self.work.join(tag),
                self.cwd.as_deref(),
            )
            .map_err(|e| e.to_string())?;
            std::thread::sleep(self.warmup);
            if !procs::running(s.pid) {
                return Err(format!(
                    "the workload (pid {}) exited within the --warmup time, before it could be \
                     checkpointed (with --ready-exit the checkpoint is taken --warmup seconds \
                     after the start)",
                    s.pid
                ));
            }
            return Ok(Instance {
                pid: s.pid,
                stdout: s.stdout,
            });
        }
        let (inst, _) = self.start(launch, tag)?;
        std::thread::sleep(self.warmup);
        if let Probe::Url {
            addr, host, path, ..
        } = &self.probe
        {
            for _ in 0..self.warmup_requests {
                super::probe::http_2xx(addr, host, path);
            }
        }
        if !procs::running(inst.pid) {
            return Err(format!(
                "the workload (pid {}) exited during the warm-up",
                inst.pid
            ));
        }
        Ok(inst)
    }

    /// Prepares `method` (a checkpoint, an archive) before the timed runs.
    pub fn prepare(&self, method: &str) -> Result<Prepared, String> {
        match method {
            "cold" => Ok(Prepared::Nothing),
            "aot-cache" | "cds" => self.train(method).map(Prepared::Launch),
            m if m.starts_with("criu") => {
                let criu = self.criu.clone()?;
                self.checkpoint(m, &criu).map(Prepared::Checkpoint)
            }
            m => {
                let cp = self.checkpoint(m, &self.crest)?;
                if m.ends_with("-prefetch") {
                    self.record_working_set(m, &cp)?;
                }
                Ok(Prepared::Checkpoint(cp))
            }
        }
    }

    fn checkpoint(&self, method: &str, tool: &Path) -> Result<Checkpoint, String> {
        let inst = self.warmed_instance(&self.launch(&[]), &format!("{method}.dumped"))?;
        let dir = self.work.join(format!("{method}.img"));
        let _ = std::fs::remove_dir_all(&dir);
        // The instance's stdout and stderr (procs::spawn writes PREFIX.out and PREFIX.err).
        let mut written = vec![inst.stdout.clone(), inst.stdout.with_extension("err")];
        written.extend(self.written.iter().cloned());
        // And every regular file a process of the workload holds open for writing (its logs):
        // later starts may write to them, and a restore wants them as they were at the dump.
        for pid in crate::proc::bench::group_members(inst.pid) {
            written.extend(crate::proc::bench::files_open_for_writing(pid));
        }
        written.sort();
        written.dedup();
        let stats = self.work.join(format!("{method}.dump-stats.json"));
        let pid = inst.pid.to_string();
        let argv: Vec<String> = if method.starts_with("criu") {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let mut a = vec![arg(tool)];
            a.extend(strs(&[
                "dump",
                "-t",
                &pid,
                "-D",
                &arg(&dir),
                "--tcp-established",
                "--display-stats",
                "-o",
            ]));
            a.push(arg(&self.work.join(format!("{method}.dump.log"))));
            a
        } else {
            let mut a = vec![arg(tool)];
            a.extend(strs(&[
                "dump",
                "-t",
                &pid,
                "-D",
                &arg(&dir),
                "--stats-json",
                &arg(&stats),
            ]));
            a
        };
        let prefix = self.work.join(format!("{method}.dump"));
        let wall = procs::run(&argv, &prefix, self.timeout);
        let wall = match wall {
            Ok(w) => w,
            Err(e) => {
                let _ = procs::end(inst.pid);
                let log = self.work.join(format!("{method}.dump.log"));
                let log_tail = if log.exists() {
                    format!(" (log: {})", procs::tail_of(&[&log]))
                } else {
                    String::new()
                };
                return Err(format!("checkpoint failed: {e}{log_tail}"));
            }
        };
        // The dump ends the workload: wait until its pid is free for the restores.
        procs::wait_gone(inst.pid, Duration::from_secs(60))
            .and_then(|()| procs::wait_group_gone(inst.pid, false))
            .map_err(|e| e.to_string())?;
        // The workload is gone: what its files are now is their dump-time state (size and
        // modification time, which the restoring tools check).
        let sizes = written
            .iter()
            .filter_map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((p.clone(), m.len(), m.modified().ok()?))
            })
            .collect();
        let (frozen_ms, image_bytes) = if method.starts_with("criu") {
            let out = std::fs::read_to_string(procs::suffixed(&prefix, "out")).unwrap_or_default()
                + &std::fs::read_to_string(procs::suffixed(&prefix, "err")).unwrap_or_default();
            (criu_frozen_ms(&out), procs::dir_bytes(&dir))
        } else {
            let json: serde_json::Value = std::fs::read_to_string(&stats)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            (
                json["stats"]["frozen_us"].as_f64().map(|us| us / 1000.0),
                json["image_bytes"]
                    .as_u64()
                    .unwrap_or_else(|| procs::dir_bytes(&dir)),
            )
        };
        Ok(Checkpoint {
            dir,
            pid: inst.pid,
            figures: DumpFigures {
                wall_ms: wall.as_secs_f64() * 1000.0,
                frozen_ms,
                image_bytes,
            },
            sizes,
            stdout: inst.stdout,
        })
    }

    /// crest-lazy-prefetch, crest-map-prefetch: one restore that records the working set into
    /// the image (lazy: attached, crest is the page server; map: with -d, crest exits once the
    /// working set is written).
    fn record_working_set(&self, method: &str, cp: &Checkpoint) -> Result<(), String> {
        let mut argv = self.restore_argv(method, cp);
        argv.push("--record-working-set".into());
        let attached = !argv.iter().any(|a| a == "-d");
        self.restore_once(&argv, cp, &format!("{method}.record"), attached, None)
            .map_err(|e| format!("the recording restore (--record-working-set) failed: {e}"))?;
        let file = cp.dir.join("working-set.img");
        if !file.exists() {
            return Err(format!(
                "the recording restore (--record-working-set) left no {}",
                file.display()
            ));
        }
        Ok(())
    }

    fn restore_argv(&self, method: &str, cp: &Checkpoint) -> Vec<String> {
        let pidfile = arg(&self.work.join(format!("{method}.restored.pid")));
        let dir = arg(&cp.dir);
        let crest = arg(&self.crest);
        match method {
            "crest-copy" | "crest-map" | "crest-map-prefetch" => {
                let pages = if method == "crest-copy" {
                    "copy"
                } else {
                    "map"
                };
                let mut a = strs(&[
                    &crest,
                    "restore",
                    "-D",
                    &dir,
                    "-d",
                    "--pidfile",
                    &pidfile,
                    "--pages",
                    pages,
                ]);
                if method == "crest-map" && self.crest_has_no_prefetch {
                    a.push("--no-prefetch".into());
                }
                a
            }
            "crest-lazy" | "crest-lazy-prefetch" => {
                // Lazy pages need crest restore attached: it is the page server.
                let mut a = strs(&[
                    &crest,
                    "restore",
                    "-D",
                    &dir,
                    "--pidfile",
                    &pidfile,
                    "--pages",
                    "lazy",
                ]);
                if method == "crest-lazy" && self.crest_has_no_prefetch {
                    a.push("--no-prefetch".into());
                }
                a
            }
            _ => {
                let criu = self.criu.clone().map(|p| arg(&p)).unwrap_or_default();
                let log = arg(&self.work.join(format!("{method}.restore.log")));
                let mut a = strs(&[
                    &criu,
                    "restore",
                    "-D",
                    &dir,
                    "--tcp-established",
                    "-d",
                    "--pidfile",
                    &pidfile,
                    "-o",
                    &log,
                ]);
                if method == "criu-lazy" {
                    a.push("--lazy-pages".into());
                }
                a
            }
        }
    }

    /// One timed restore of `method`'s checkpoint.
    pub fn run_restore(&self, method: &str, cp: &Checkpoint, cache: Cache) -> Result<f64, String> {
        let argv = self.restore_argv(method, cp);
        let attached = method.starts_with("crest-lazy");
        let lazy_daemon = (method == "criu-lazy").then(|| {
            let criu = self.criu.clone().map(|p| arg(&p)).unwrap_or_default();
            let log = arg(&self.work.join(format!("{method}.lazy-pages.log")));
            strs(&[&criu, "lazy-pages", "-D", &arg(&cp.dir), "-o", &log])
        });
        let tag = format!("{method}-{}", cache.name());
        if cache == Cache::Evicted {
            procs::evict(&cp.dir).map_err(|e| e.to_string())?;
        }
        self.restore_once(&argv, cp, &tag, attached, lazy_daemon.as_deref())
    }

    /// Restores, times to ready, ends the restored tree (and the attached tool).
    fn restore_once(
        &self,
        argv: &[String],
        cp: &Checkpoint,
        tag: &str,
        attached: bool,
        daemon: Option<&[String]>,
    ) -> Result<f64, String> {
        // Files the workload writes go back to their dump-time size.
        for (path, size, mtime) in &cp.sizes {
            let restored = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(*size).and_then(|_| f.set_modified(*mtime)));
            if let Err(e) = restored {
                return Err(format!(
                    "cannot put {} back to its dump-time size and time: {e}",
                    path.display()
                ));
            }
        }
        let pidfile = argv
            .iter()
            .position(|a| a == "--pidfile")
            .map(|i| PathBuf::from(&argv[i + 1]))
            .expect("every restore writes a pid file");
        let _ = std::fs::remove_file(&pidfile);
        self.probe_idle()?;
        let prefix = self.work.join(tag);
        let t0 = Instant::now();
        let mut helper = None;
        if let Some(d) = daemon {
            // A socket file left by the previous run's daemon.
            let _ = std::fs::remove_file(cp.dir.join("lazy-pages.socket"));
            let s = procs::spawn(d, &procs::suffixed(&prefix, "lazy-pages"), None)
                .map_err(|e| e.to_string())?;
            helper = Some(s.pid);
            // CRIU's restore connects to the daemon's socket: wait until it listens.
            while !crate::proc::bench::unix_listening("lazy-pages.socket") {
                if !procs::running(s.pid) || t0.elapsed() > self.timeout || procs::stopping() {
                    let _ = procs::end(s.pid);
                    return Err(format!(
                        "criu lazy-pages did not start: {}",
                        procs::tail_of(&[&s.stderr, &self.work.join("criu-lazy.lazy-pages.log")])
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let tool = procs::spawn(argv, &procs::suffixed(&prefix, "restore"), None)
            .map_err(|e| e.to_string())?;
        // The restored tree comes back under the dumped pid.
        procs::track(cp.pid);
        let mut watch = Watch::new(&self.probe, cp.pid, &cp.stdout);
        let exit_probe = matches!(self.probe, Probe::Exit);
        let mut tool_status: Option<String> = None;
        let restored = |pidfile: &Path| {
            pidfile.exists()
                && std::fs::metadata(pidfile)
                    .map(|m| m.len() > 0)
                    .unwrap_or(false)
        };
        let starting = format!(" of starting `{}`", argv.join(" "));
        let res = loop {
            // The exit probe only counts once the restored process exists.
            if (!exit_probe || restored(&pidfile)) && watch.ready() {
                break Ok(t0.elapsed().as_secs_f64() * 1000.0);
            }
            if tool_status.is_none() {
                tool_status = procs::take_status(tool.pid);
            }
            let failed = match &tool_status {
                Some(s) if s != "exit status 0" => true,
                Some(_) if attached => !exit_probe,
                Some(_) => !restored(&pidfile),
                None => false,
            };
            if failed {
                if (!exit_probe || restored(&pidfile)) && watch.ready() {
                    break Ok(t0.elapsed().as_secs_f64() * 1000.0);
                }
                let log = PathBuf::from(
                    argv.iter()
                        .position(|a| a == "-o")
                        .map(|i| argv[i + 1].clone())
                        .unwrap_or_default(),
                );
                break Err(format!(
                    "{} failed ({}): {}; command: `{}`",
                    procs::short(argv),
                    tool_status.clone().unwrap_or_default(),
                    procs::tail_of(&[&tool.stderr, &tool.stdout, &log]),
                    argv.join(" ")
                ));
            }
            if tool_status.is_some() && restored(&pidfile) && !exit_probe && !procs::running(cp.pid)
            {
                break Err(format!(
                    "the restored workload (pid {}) exited before it was ready: {}",
                    cp.pid,
                    procs::tail_of(&[&tool.stderr])
                ));
            }
            if let Some(why) = self.wait_over(t0, &starting) {
                break Err(why);
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        // With the recording restore, let crest write the working set before ending it.
        if argv.iter().any(|a| a == "--record-working-set") && res.is_ok() {
            let file = cp.dir.join("working-set.img");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !file.exists() && Instant::now() < deadline && procs::running(tool.pid) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // End the restored tree by its pid, then the tools (an attached crest exits with it).
        // A tool that failed before writing the pid file killed what it had restored: the pid
        // is not the bench's to end then.
        if restored(&pidfile) || tool_status.is_none() {
            let _ = procs::end(cp.pid);
        } else {
            procs::untrack(cp.pid);
        }
        if tool_status.is_none() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while procs::running(tool.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = procs::end(tool.pid);
        }
        if let Some(h) = helper {
            let _ = procs::end(h);
        }
        res
    }

    /// The JDK's archive: a training run, then the command line that uses the archive.
    fn train(&self, method: &str) -> Result<Launch, String> {
        let jdk = self.jdk.as_ref().ok_or_else(|| {
            format!(
                "{method} applies to a Java workload only (no JVM among the command's processes)"
            )
        })?;
        let (train_opts, run_opts, archive, create): (
            Vec<String>,
            Vec<String>,
            PathBuf,
            Option<Vec<String>>,
        ) = match method {
            "cds" => {
                if jdk.major < 17 {
                    return Err(format!("cds needs JDK 17 or later ({})", jdk.version));
                }
                let a = self.work.join("app-cds.jsa");
                (
                    vec![format!("-XX:ArchiveClassesAtExit={}", arg(&a))],
                    vec![
                        "-Xshare:on".into(),
                        format!("-XX:SharedArchiveFile={}", arg(&a)),
                    ],
                    a,
                    None,
                )
            }
            _ => {
                if jdk.major < 24 {
                    return Err(format!(
                        "aot-cache needs JDK 24 or later ({}); cds is this JDK's archive",
                        jdk.version
                    ));
                }
                let a = self.work.join("app.aot");
                let run = vec!["-XX:AOTMode=on".into(), format!("-XX:AOTCache={}", arg(&a))];
                if jdk.major >= 25 {
                    (
                        vec![format!("-XX:AOTCacheOutput={}", arg(&a))],
                        run,
                        a,
                        None,
                    )
                } else {
                    let conf = self.work.join("app.aotconf");
                    (
                        vec![
                            "-XX:AOTMode=record".into(),
                            format!("-XX:AOTConfiguration={}", arg(&conf)),
                        ],
                        run,
                        a.clone(),
                        Some(vec![
                            "-XX:AOTMode=create".into(),
                            format!("-XX:AOTConfiguration={}", arg(&conf)),
                            format!("-XX:AOTCache={}", arg(&a)),
                        ]),
                    )
                }
            }
        };
        let _ = std::fs::remove_file(&archive);
        let inst =
            self.warmed_instance(&self.launch(&train_opts), &format!("{method}.training"))?;
        // The JVM writes its archive as it exits: SIGTERM runs its orderly shutdown. To the
        // workload's process group (the bench made it), for a script that started the JVM.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-inst.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + self.timeout.max(Duration::from_secs(300));
        // JDK 25 writes the cache in a child JVM it starts at exit: wait for the whole group.
        while procs::group_alive(inst.pid) && Instant::now() < deadline && !procs::stopping() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = procs::end(inst.pid);
        if let Some(create) = create {
            let l = self.launch(&create);
            procs::run_with_env(
                &l.argv,
                &l.env,
                &self.work.join(format!("{method}.create")),
                self.timeout,
            )
            .map_err(|e| format!("creating the AOT cache failed: {e}"))?;
        }
        if !archive.exists() {
            // The training run's output, as procs::spawn names it.
            let err = self.work.join(format!("{method}.training.err"));
            let out = self.work.join(format!("{method}.training.out"));
            return Err(format!(
                "the training run wrote no archive {}: {}",
                archive.display(),
                procs::tail_of(&[&err, &out])
            ));
        }
        Ok(self.launch(&run_opts))
    }
}

/// CRIU's `--display-stats` line "Frozen time: N us" in ms.
fn criu_frozen_ms(out: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.contains("Frozen time"))
        .and_then(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .find(|w| !w.is_empty())
                .and_then(|w| w.parse::<f64>().ok())
        })
        .map(|us| us / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_stats_frozen_time() {
        let out = "Displaying dump stats:\nFreezing time: 100 us\nFrozen time: 123456 us\n";
        assert_eq!(criu_frozen_ms(out), Some(123.456));
        assert_eq!(criu_frozen_ms("nothing"), None);
    }

    #[test]
    fn methods_that_restore() {
        assert!(restores("crest-map") && restores("criu-lazy"));
        assert!(!restores("cold") && !restores("cds") && !restores("aot-cache"));
    }
}
