//! `crest bench`: how restoring a checkpoint compares with starting, on this machine and this
//! workload, side by side with CRIU and the JDK's own fast-start options.
//!
//! One run: the workload is prepared for each method (a checkpoint taken once it is ready and
//! warmed up, a JDK archive from a training run), then measured round by round — each round
//! runs every method once, in an order rotated from round to round, so that machine noise hits
//! every method alike. A run is timed from spawning the starting or restoring command to the
//! readiness probe saying ready; the process is then ended by pid (the bench is a child
//! subreaper, so restored processes whose tool exited are its children and are reaped). A
//! method that fails keeps its row with the message.
//!
//! Modules: [`probe`] readiness, [`procs`] processes (spawn, reap, end, evict), [`methods`] what
//! each method does, [`workload`] Java detection and the bundled workloads, [`stats`] the
//! summary of samples, [`report`] the table, JSON, CSV and Markdown, [`chart`] the SVG chart,
//! [`env`] the environment recorded.

pub mod chart;
pub mod env;
pub mod methods;
pub mod probe;
pub mod procs;
pub mod report;
pub mod stats;
pub mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use methods::{Ctx, Prepared};
use probe::Probe;
use report::{Cache, MethodResult, Report};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Process(String),
    #[error("interrupted: every process the bench started was ended")]
    Interrupted,
    #[error("cannot write {path}: {why}")]
    Output { path: String, why: String },
}

/// A bundled workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bundled {
    /// The demo JVM (48 MiB of live data).
    Demo,
    /// The same HTTP server with `--live-mib` MiB of live data.
    Server,
}

/// How the readiness probe was given.
#[derive(Debug, Clone, Default)]
pub struct ProbeArgs {
    pub url: Option<String>,
    pub port: Option<String>,
    pub log: Option<String>,
    pub stdout: Option<String>,
    pub exit: bool,
}

/// Everything `crest bench` was asked.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub runs: usize,
    pub warmup: Duration,
    pub warmup_requests: u32,
    pub probe: ProbeArgs,
    pub modes: Option<Vec<String>>,
    pub criu: Option<PathBuf>,
    pub evict: bool,
    pub timeout: Duration,
    pub workload: Bundled,
    pub live_mib: u32,
    pub java: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub keep: bool,
    /// The workload's command line; empty for a bundled one.
    pub command: Vec<String>,
}

fn probe_of(p: &ProbeArgs) -> Result<Option<Probe>, BenchError> {
    let given = [
        p.url.is_some(),
        p.port.is_some(),
        p.log.is_some(),
        p.stdout.is_some(),
        p.exit,
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(BenchError::Usage(
            "give one readiness probe: --ready-url, --ready-port, --ready-log, --ready-stdout or \
             --ready-exit"
                .into(),
        ));
    }
    Ok(if let Some(u) = &p.url {
        Some(Probe::url(u)?)
    } else if let Some(port) = &p.port {
        Some(Probe::port(port)?)
    } else if let Some(l) = &p.log {
        Some(Probe::log(l)?)
    } else if let Some(s) = &p.stdout {
        Some(Probe::stdout(s)?)
    } else if p.exit {
        Some(Probe::Exit)
    } else {
        None
    })
}

/// The criu binary: --criu, else criu on PATH; or why there is none.
fn find_criu(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(p) => {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(p) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p.clone()),
                _ => Err(format!("--criu {}: not an executable file", p.display())),
            }
        }
        None => workload::which("criu")
            .ok_or_else(|| "no criu on PATH (give --criu PATH to compare with CRIU)".to_string()),
    }
}

/// Removes the bench's work directory when dropped (unless kept).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs the bench; the report is complete even when methods failed (each with its message).
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::Usage("--runs must be at least 1".into()));
    }
    let probe = probe_of(&opts.probe)?;
    procs::become_subreaper()?;
    procs::end_all_on_signals()?;
    let base = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)
        .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", base.display())))?;
    let path = nix::unistd::mkdtemp(&base.join("crest-bench.XXXXXX")).map_err(|e| {
        BenchError::Setup(format!(
            "cannot create a directory in {}: {e}",
            base.display()
        ))
    })?;
    let work = WorkDir {
        path,
        keep: opts.keep,
    };
    if opts.keep {
        eprintln!("crest bench: working in {} (kept)", work.path.display());
    } else {
        procs::remove_on_signals(Some(work.path.clone()));
    }

    // The workload.
    let mut written = Vec::new();
    let (mut argv, probe, jdk) = if opts.command.is_empty() {
        let java = workload::bundled_java(opts.java.as_deref())?;
        let jdk = workload::jdk_of(&java)?;
        let live = match opts.workload {
            Bundled::Demo => 48,
            Bundled::Server => opts.live_mib,
        };
        let b = workload::build(&java, live, &work.path)?;
        written.push(b.log.clone());
        let probe = match probe {
            Some(p) => p,
            None => Probe::url(&b.url)?,
        };
        (b.argv, probe, Some(jdk))
    } else {
        let probe = probe.ok_or_else(|| {
            BenchError::Usage(
                "a command needs a readiness probe: --ready-url, --ready-port, --ready-log, \
                 --ready-stdout or --ready-exit"
                    .into(),
            )
        })?;
        (
            opts.command.clone(),
            probe,
            workload::detect_java(&opts.command),
        )
    };
    if let Probe::Log { file, .. } = &probe {
        written.push(file.clone());
    }
    if jdk.is_some() {
        let extra: Vec<String> = methods::common_jvm_options()
            .into_iter()
            .filter(|o| !argv.contains(o))
            .collect();
        argv = workload::with_jvm_options(&argv, &extra);
    }

    let crest = std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find crest's own binary: {e}")))?;
    let crest_has_no_prefetch = std::process::Command::new(&crest)
        .args(["restore", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--no-prefetch"))
        .unwrap_or(false);
    let criu = find_criu(opts.criu.as_ref());
    let criu_version = criu.as_ref().ok().and_then(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
    });
    let mut ctx = Ctx {
        argv: argv.clone(),
        probe: probe.clone(),
        work: work.path.clone(),
        cwd: None,
        crest,
        criu,
        jdk,
        warmup: opts.warmup,
        warmup_requests: opts.warmup_requests,
        timeout: opts.timeout,
        written,
        crest_has_no_prefetch,
        jvm_env: None,
    };
    let mut warmed_up = false;
    if !opts.command.is_empty() && ctx.jdk.is_none() {
        // The command may be a script that starts a JVM: one untimed start says (the programs
        // its processes run); it also brings the workload's files into the page cache.
        match ctx.find_jvm() {
            Ok(Some(java)) => {
                ctx.jdk = workload::jdk_of(&java).ok();
                // Its JVM options go through JDK_JAVA_OPTIONS, after any the bench was given.
                let mut base: Vec<String> = std::env::var("JDK_JAVA_OPTIONS")
                    .map(|v| v.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                base.extend(methods::common_jvm_options());
                ctx.jvm_env = Some(base);
            }
            Ok(None) => {}
            Err(e) => eprintln!("crest bench: the first (untimed) start failed: {e}"),
        }
        warmed_up = true;
    }
    if procs::stopping() {
        return Err(BenchError::Interrupted);
    }
    let jdk = ctx.jdk.clone();
    // The methods.
    let modes: Vec<String> = match &opts.modes {
        Some(list) => {
            for m in list {
                if !methods::ALL.contains(&m.as_str()) {
                    return Err(BenchError::Usage(format!(
                        "unknown method {m:?} in --modes (known: {})",
                        methods::ALL.join(", ")
                    )));
                }
            }
            list.clone()
        }
        None => methods::ALL
            .iter()
            .filter(|m| match **m {
                "cds" => jdk.as_ref().is_some_and(|j| j.major >= 17),
                "aot-cache" => jdk.as_ref().is_some_and(|j| j.major >= 24),
                _ => true,
            })
            .map(|m| m.to_string())
            .collect(),
    };
    let environment = env::collect(
        jdk.as_ref().map(|j| j.version.as_str()),
        opts.evict,
        criu_version.as_deref(),
    );

    let mut results: Vec<MethodResult> = Vec::new();
    for m in &modes {
        results.push(MethodResult::new(m, Cache::Warm));
        if opts.evict && methods::restores(m) {
            results.push(MethodResult::new(m, Cache::Evicted));
        }
    }
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(
            Some((modes.len() + opts.runs * results.len()) as u64),
            ProgressDrawTarget::stderr(),
        )
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let say = |text: String| bar.suspend(|| eprintln!("crest bench: {text}"));
    say(format!(
        "{} ({}); ready = {}; {} runs of: {}",
        argv.join(" "),
        env::loadavg(),
        probe.describe(),
        opts.runs,
        results
            .iter()
            .map(|r| r.label())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Prepare: checkpoints and archives, once per method.
    let mut prepared: Vec<(String, Result<Prepared, String>)> = Vec::new();
    for m in &modes {
        bar.set_message(format!("preparing {m}"));
        let p = ctx.prepare(m);
        match &p {
            Ok(Prepared::Checkpoint(cp)) => say(format!(
                "{m}: checkpoint of pid {} in {:.0} ms{}, image {:.1} MiB",
                cp.pid,
                cp.figures.wall_ms,
                cp.figures
                    .frozen_ms
                    .map(|f| format!(" (frozen {f:.0} ms)"))
                    .unwrap_or_default(),
                cp.figures.image_bytes as f64 / 1048576.0
            )),
            Ok(_) => {}
            Err(e) => say(format!("{m}: FAILED: {e}")),
        }
        bar.inc(1);
        prepared.push((m.clone(), p));
        if procs::stopping() {
            return Err(BenchError::Interrupted);
        }
    }
    for r in &mut results {
        match prepared
            .iter()
            .find(|(m, _)| *m == r.method)
            .map(|(_, p)| p)
        {
            Some(Err(e)) => r.fail(e.clone()),
            Some(Ok(p)) => {
                r.how = Some(ctx.describe(&r.method, p));
                if let Prepared::Checkpoint(cp) = p {
                    r.dump = Some(cp.figures.clone());
                }
            }
            None => {}
        }
    }
    if !prepared
        .iter()
        .any(|(_, p)| matches!(p, Ok(Prepared::Checkpoint(_)) | Ok(Prepared::Launch(_))))
        && !warmed_up
    {
        // Nothing started the workload yet: one untimed start brings its files into the cache.
        bar.set_message("warm-up start (not counted)");
        if let Err(e) = ctx.run_start(&ctx.launch(&[]), "warmup") {
            say(format!("the warm-up start failed: {e}"));
        }
    }

    // Rounds.
    let plain = ctx.launch(&[]);
    let n = results.len();
    for round in 0..opts.runs {
        for k in 0..n {
            let i = (k + round) % n;
            let r = &mut results[i];
            let Some((_, Ok(p))) = prepared.iter().find(|(m, _)| *m == r.method) else {
                bar.inc(1);
                continue;
            };
            bar.set_message(format!("round {}/{}: {}", round + 1, opts.runs, r.label()));
            let tag = format!("{}-{}", r.method, r.cache.name());
            let res = match p {
                Prepared::Nothing => ctx.run_start(&plain, &tag),
                Prepared::Launch(l) => ctx.run_start(l, &tag),
                Prepared::Checkpoint(cp) => ctx.run_restore(&r.method, cp, r.cache),
            };
            if procs::stopping() {
                return Err(BenchError::Interrupted);
            }
            r.attempted += 1;
            match res {
                Ok(ms) => {
                    say(format!(
                        "round {}/{} {}: {ms:.1} ms",
                        round + 1,
                        opts.runs,
                        r.label()
                    ));
                    r.samples_ms.push(ms);
                }
                Err(e) => {
                    say(format!(
                        "round {}/{} {}: FAILED: {e}",
                        round + 1,
                        opts.runs,
                        r.label()
                    ));
                    r.fail(e);
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let mut environment = environment;
    environment["load_average_end"] = serde_json::Value::String(env::loadavg());
    Ok(Report {
        command: argv,
        probe: probe.describe(),
        runs: opts.runs,
        warmup_secs: opts.warmup.as_secs_f64(),
        environment,
        results,
    })
}

/// Writes `text` to `path`.
pub fn write_output(path: &std::path::Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::Output {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}
