//! Argument parsing for the `crest` binary. Spellings follow CRIU's where the meaning is the
//! same (`-t/--tree`, `-D/--images-dir`, `-R/--leave-running`, `-d/--restore-detached`,
//! `--pidfile`, `-v`), so a CRIU user feels at home.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "crest",
    version,
    about = "Checkpoint/restore for Linux processes, built first for JVMs"
)]
struct Cli {
    /// Say more about what crest is doing (repeat for more).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `crest restore --pages`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PageSource {
    Copy,
    Map,
    Lazy,
}

/// `crest restore --clocks`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Clocks {
    CarryOn,
    Host,
}

#[derive(Subcommand)]
enum Command {
    /// List the kernel features and privileges crest relies on; exit 0 when dump and restore can work.
    Check,
    /// Checkpoint a process and its descendants into an image directory; this ENDS them unless -R.
    ///
    /// The tree is frozen, written to the image directory, and killed once the image is
    /// complete, so that `crest restore` can bring it back under the same pids. With
    /// -R (--leave-running) it runs on instead. A dump that fails or refuses something it cannot
    /// take leaves every process running exactly as before.
    Dump {
        /// Pid of the process to dump, with all its descendants.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory to write (replaced atomically if it exists).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the processes running after the dump (without it they are killed).
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
        /// Do not ask a HotSpot JVM for a full GC before freezing it.
        #[arg(long)]
        no_gc_hint: bool,
        /// Seconds the GC hint may take before the dump goes on without it.
        #[arg(long, value_name = "SECS", default_value_t = crest::dump::DEFAULT_GC_HINT_TIMEOUT.as_secs_f64())]
        gc_hint_timeout: f64,
        /// Also write the dump statistics to this file as JSON.
        #[arg(long, value_name = "FILE")]
        stats_json: Option<PathBuf>,
        /// Allow a tree attached to the terminal of the shell crest runs in (crest's standard
        /// input): its fds on that terminal and its controlling terminal are recorded as the
        /// shell's terminal, and `crest restore --shell-job` attaches them to its own.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Dump UNIX sockets connected to a named socket outside the tree (a server such as
        /// /dev/log) instead of refusing them; the restore (also given --ext-unix-sk) connects
        /// them to that name again.
        #[arg(long = "ext-unix-sk")]
        ext_unix_sk: bool,
        /// Leave out TCP connections still waiting in a listener's accept queue (their clients
        /// find them reset) instead of refusing the dump.
        #[arg(long = "skip-in-flight")]
        skip_in_flight: bool,
        /// Do not capture TCP connections (no network lock, no repair mode): record them as
        /// closed, for an image whose connections are not going to be restored; the restore
        /// makes them closed sockets (reads give end of file, writes EPIPE).
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// The most data one deleted (unlinked) file the tree holds open or mapped may have
        /// for its content to be stored in the image (holes do not count); a larger one is
        /// refused. Bytes, or with a K, M or G suffix (powers of 1024).
        #[arg(long = "ghost-limit", value_name = "SIZE", default_value = "16M",
              value_parser = crest::files::ghost::parse_size)]
        ghost_limit: u64,
    },
    /// Restore a process from an image directory, under its original pid.
    Restore {
        /// Image directory to read.
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Exit once the restored process runs instead of waiting for it.
        #[arg(short = 'd', long = "restore-detached")]
        detached: bool,
        /// Write the restored process's pid to this file.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Also check the page data against its checksums before restoring.
        #[arg(long)]
        verify: bool,
        /// Restore into a fresh pid namespace, where the tree keeps its pids, so several
        /// copies of one image can run at once (the pid file gets the root's pid as seen here).
        #[arg(long)]
        pidns: bool,
        /// Give the restored tree crest's descriptor N in place of the file the image names
        /// RESOURCE: a path as `crest show` lists it, or pipe:[INODE] / socket:[INODE].
        #[arg(long = "inherit-fd", value_name = "fd[N]:RESOURCE")]
        inherit_fd: Vec<crest::restore::InheritFd>,
        /// Restore a tree dumped with --shell-job onto the terminal crest runs on (its standard
        /// input): as the fds' terminal, as controlling terminal, in the foreground when the
        /// tree was.
        #[arg(short = 'j', long = "shell-job")]
        shell_job: bool,
        /// Allow an image whose UNIX sockets were connected to a socket outside the tree (dumped
        /// with --ext-unix-sk): they are connected to that name again.
        #[arg(long = "ext-unix-sk")]
        ext_unix_sk: bool,
        /// Make the image's TCP connections closed sockets (reads give their unread bytes, then
        /// end of file; writes fail with EPIPE) instead of connecting them again.
        #[arg(long = "tcp-close")]
        tcp_close: bool,
        /// Also write the restore statistics (time per phase until the tree ran) to this file
        /// as JSON.
        #[arg(long, value_name = "FILE")]
        stats_json: Option<PathBuf>,
        /// Run the tree before its private memory is read: a page server (userfaultfd) fills
        /// pages on fault and in the background: crest restore itself, or with -d a daemon
        /// that exits once every page is in (with -d, --stats-json is written then).
        #[arg(long = "lazy-pages", conflicts_with = "pages")]
        lazy_pages: bool,
        /// Where private memory comes from. copy (default): read into the process before it
        /// runs. map: mapped copy-on-write from the page files, nothing read before it runs;
        /// caveats: MADV_DONTNEED there brings back the image's content instead of zeros (an
        /// allocator relying on zero-fill after a purge would see stale data), mremap growing
        /// such memory does not give zeros, /proc/PID/maps shows the page file, and the image
        /// is used for as long as the process runs (a later dump into the same directory, or
        /// deleting it, is safe). lazy: same as --lazy-pages.
        #[arg(long = "pages", value_enum, value_name = "SOURCE")]
        pages: Option<PageSource>,
        /// Record which pages the restored processes touch in their first MS milliseconds
        /// (default 1000) and store them beside the image (working-set.img; the image itself
        /// is not changed), so later lazy and mapped restores bring them in first. Needs
        /// --pages lazy or --pages map; crest stays until the window is over.
        #[arg(
            long = "record-working-set",
            value_name = "MS",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "1000"
        )]
        record_working_set: Option<u64>,
        /// Ignore the image's recorded working set (lazy and mapped restores bring it in
        /// first otherwise), and do not record one (the first mapped restore of an image
        /// records its first 100 ms otherwise).
        #[arg(long = "no-prefetch")]
        no_prefetch: bool,
        /// The restored tree's monotonic and boot-time clocks: carry-on gives it a time
        /// namespace whose clocks carry on from where they stood at the dump, as after a
        /// suspend, so its timers and timeouts do not all expire at once; host shows it the
        /// host's, moved on by the time since the dump. The wall clock moves on either way.
        /// Default: carry-on on x86_64, host on aarch64 (not settled there yet).
        #[arg(long = "clocks", value_enum, value_name = "HOW")]
        clocks: Option<Clocks>,
        /// Same as --clocks host.
        #[arg(long = "host-clocks", conflicts_with = "clocks")]
        host_clocks: bool,
    },
    /// Internal: the guard of a lazy restore, started by crest restore (see crest::lazy).
    #[command(name = "lazy-watchdog", hide = true)]
    LazyWatchdog { socket: i32, pids: Vec<i32> },
    /// Measure restore -> ready against a cold start (and CRIU, the JDK's archives), round by
    /// round, and report the table, JSON, CSV, Markdown and an SVG chart.
    Bench(Box<BenchArgs>),
    /// Show an image in readable form.
    Show {
        /// Image directory.
        dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an image completely, page data included, without restoring it.
    Verify {
        /// Image directory.
        dir: PathBuf,
    },
}

/// `crest bench`: time to ready per method.
///
/// With no COMMAND it runs a bundled workload (the demo JVM or the server JVM with --live-mib
/// MiB of live data, compiled from the bundled source with the JDK's javac), probed by its first
/// HTTP 200. Every run is timed from spawning the starting or restoring command to ready.
#[derive(clap::Args)]
struct BenchArgs {
    /// Timed runs of each method (interleaved round by round).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds the workload runs once ready before it is checkpointed (or trained).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Also send this many requests to --ready-url before the checkpoint.
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup_requests: u32,
    /// Ready: a GET on URL answers 2xx (http:// only).
    #[arg(long, value_name = "URL")]
    ready_url: Option<String>,
    /// Ready: a TCP connect to [HOST:]PORT succeeds (HOST defaults to 127.0.0.1).
    #[arg(long, value_name = "PORT")]
    ready_port: Option<String>,
    /// Ready: a new line matching REGEX in FILE (a restored process must write it again).
    #[arg(long, value_name = "FILE:REGEX")]
    ready_log: Option<String>,
    /// Ready: a new line matching REGEX on the workload's standard output.
    #[arg(long, value_name = "REGEX")]
    ready_stdout: Option<String>,
    /// Ready: the process has exited (checkpoints are taken --warmup seconds after the start).
    #[arg(long)]
    ready_exit: bool,
    /// Methods, comma-separated: cold, crest-copy, crest-map, crest-map-prefetch, crest-lazy,
    /// crest-lazy-prefetch, criu, criu-lazy, aot-cache, cds [default: all that apply to the
    /// workload].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    modes: Option<Vec<String>>,
    /// The criu binary (default: criu on PATH).
    #[arg(long, value_name = "PATH")]
    criu: Option<PathBuf>,
    /// Also run every restore method with its image dropped from the page cache first
    /// (posix_fadvise DONTNEED on the image files): rows with cache "evicted".
    #[arg(long)]
    evict: bool,
    /// Seconds a start or restore may take to get ready before it counts as failed.
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    timeout: f64,
    /// Bundled workload when no COMMAND is given.
    #[arg(long, value_enum, default_value = "server")]
    workload: BundledWorkload,
    /// MiB of live data of the bundled server workload.
    #[arg(long, value_name = "MIB", default_value_t = 200)]
    live_mib: u32,
    /// The java binary of the bundled workloads (default: JAVA_HOME/bin/java, else PATH).
    #[arg(long, value_name = "PATH")]
    java: Option<PathBuf>,
    /// Directory for the images and logs (a new directory is made in it; default: TMPDIR).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the images and logs.
    #[arg(long)]
    keep: bool,
    #[arg(long, value_name = "FILE")]
    export_json: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    export_csv: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    export_markdown: Option<PathBuf>,
    /// Write an SVG chart of the ready times.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,
    /// The workload's command line.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BundledWorkload {
    Demo,
    Server,
}

fn bench(a: BenchArgs) -> Result<i32> {
    let secs = |what: &str, v: f64| {
        Duration::try_from_secs_f64(v).with_context(|| format!("{what} wants a number of seconds"))
    };
    let opts = crest::bench::BenchOptions {
        runs: a.runs,
        warmup: secs("--warmup", a.warmup)?,
        warmup_requests: a.warmup_requests,
        probe: crest::bench::ProbeArgs {
            url: a.ready_url,
            port: a.ready_port,
            log: a.ready_log,
            stdout: a.ready_stdout,
            exit: a.ready_exit,
        },
        modes: a.modes,
        criu: a.criu,
        evict: a.evict,
        timeout: secs("--timeout", a.timeout)?,
        workload: match a.workload {
            BundledWorkload::Demo => crest::bench::Bundled::Demo,
            BundledWorkload::Server => crest::bench::Bundled::Server,
        },
        live_mib: a.live_mib,
        java: a.java,
        work_dir: a.work_dir,
        keep: a.keep,
        command: a.command,
    };
    let report = crest::bench::run(&opts)?;
    print!("{}", report.table());
    if let Some(p) = &a.export_json {
        let text = serde_json::to_string_pretty(&report.to_json())? + "\n";
        crest::bench::write_output(p, &text)?;
    }
    if let Some(p) = &a.export_csv {
        crest::bench::write_output(p, &report.to_csv())?;
    }
    if let Some(p) = &a.export_markdown {
        crest::bench::write_output(p, &report.to_markdown())?;
    }
    if let Some(p) = &a.chart {
        crest::bench::write_output(p, &crest::bench::chart::render(&report))?;
    }
    Ok(0)
}

/// Runs the command line and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    crest::log::set_verbosity(cli.verbose);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("crest: error: {err:#}");
            1
        }
    }
}

/// `crest restore -d --lazy-pages`: the restore runs in a daemon that goes on serving pages
/// once the tree runs; this process exits then ([`crest::lazy::daemon`]).
fn restore_with_page_daemon(
    opts: &crest::restore::RestoreOptions,
    pidfile: Option<PathBuf>,
    stats_json: Option<PathBuf>,
) -> Result<i32> {
    let mut daemon = crest::lazy::daemon::Daemon::split()?;
    let restored = crest::restore::restore(opts)
        .with_context(|| format!("restore from {} failed", opts.dir.display()))
        .and_then(|r| {
            if let Some(path) = &pidfile {
                std::fs::write(path, format!("{}\n", r.pid()))
                    .with_context(|| format!("cannot write pid file {}", path.display()))?;
            }
            Ok(r)
        });
    let mut restored = match restored {
        Ok(r) => r,
        Err(e) => {
            daemon.report_failure(&format!("crest: error: {e:#}\n"));
            return Ok(1);
        }
    };
    let text = restored
        .stats()
        .map(|s| format!("{}\n", s.text(restored.pid())))
        .unwrap_or_default();
    daemon.report_running(&text);
    let lazy = match restored.wait_lazy() {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!(
                "crest: lazy pages failed: {e}; the restored tree was killed so that it does not \
                 run on with missing memory"
            );
            return Ok(1);
        }
        None => None,
    };
    // Written once every page is in, with the page server's figures.
    if let (Some(path), Some(stats)) = (&stats_json, restored.stats()) {
        let mut json = stats.to_json(restored.pid());
        if let Some(l) = &lazy {
            json["lazy"] = l.to_json();
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("cannot write the statistics file {}", path.display()))?;
    }
    restored.detach();
    Ok(0)
}

fn dispatch(command: Command) -> Result<i32> {
    match command {
        Command::Check => {
            let report = crest::check::run();
            print!("{}", report.render());
            Ok(if report.can_dump_and_restore() { 0 } else { 1 })
        }
        Command::Dump {
            pid,
            dir,
            leave_running,
            no_gc_hint,
            gc_hint_timeout,
            stats_json,
            shell_job,
            ext_unix_sk,
            skip_in_flight,
            tcp_close,
            ghost_limit,
        } => {
            let gc_hint_timeout = Duration::try_from_secs_f64(gc_hint_timeout)
                .context("--gc-hint-timeout wants a number of seconds, 0 or more")?;
            let opts = crest::dump::DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
                gc_hint: !no_gc_hint,
                gc_hint_timeout,
                shell_job,
                ext_unix_sk,
                ghost_limit,
                skip_in_flight,
                tcp_close,
            };
            let report = crest::dump::dump(&opts)
                .with_context(|| format!("dump of pid {pid} into {} failed", dir.display()))?;
            eprint!("{}", report.render());
            if let Some(path) = stats_json {
                let text = serde_json::to_string_pretty(&report.to_json())?;
                std::fs::write(&path, text + "\n").with_context(|| {
                    format!(
                        "the image is complete, but the statistics file {} could not be written",
                        path.display()
                    )
                })?;
            }
            Ok(0)
        }
        Command::Restore {
            dir,
            detached,
            pidfile,
            verify,
            pidns,
            inherit_fd,
            shell_job,
            ext_unix_sk,
            tcp_close,
            stats_json,
            lazy_pages,
            pages,
            record_working_set,
            no_prefetch,
            clocks,
            host_clocks,
        } => {
            let host_clocks = match clocks {
                Some(how) => how == Clocks::Host,
                None => host_clocks || !crest::arch::CLOCKS_CARRY_ON_BY_DEFAULT,
            };
            let lazy_pages = lazy_pages || pages == Some(PageSource::Lazy);
            let opts = crest::restore::RestoreOptions {
                dir: dir.clone(),
                verify,
                detached,
                pidns,
                inherit: inherit_fd,
                shell_job,
                ext_unix_sk,
                tcp_close,
                lazy_pages,
                map_pages: pages == Some(PageSource::Map),
                record_working_set: record_working_set.map(Duration::from_millis),
                no_prefetch,
                host_clocks,
            };
            if lazy_pages && detached {
                return restore_with_page_daemon(&opts, pidfile, stats_json);
            }
            let mut restored = crest::restore::restore(&opts)
                .with_context(|| format!("restore from {} failed", dir.display()))?;
            if let Some(path) = pidfile {
                std::fs::write(&path, format!("{}\n", restored.pid()))
                    .with_context(|| format!("cannot write pid file {}", path.display()))?;
            }
            let recording = restored.take_recording();
            let lazy = match restored.wait_lazy() {
                None => None,
                Some(Ok(l)) => Some(l),
                Some(Err(e)) => {
                    eprintln!(
                        "crest: lazy pages failed: {e}; the restored tree was killed so that \
                         it does not run on with missing memory"
                    );
                    None
                }
            };
            if let Some(stats) = restored.stats() {
                eprintln!("{}", stats.text(restored.pid()));
                if let Some(l) = &lazy {
                    eprintln!("{}", l.text());
                }
                if let Some(path) = &stats_json {
                    let mut json = stats.to_json(restored.pid());
                    if let Some(l) = &lazy {
                        json["lazy"] = l.to_json();
                    }
                    let text = serde_json::to_string_pretty(&json)?;
                    std::fs::write(path, text + "\n").with_context(|| {
                        format!(
                            "the tree runs, but the statistics file {} could not be written",
                            path.display()
                        )
                    })?;
                }
            }
            if let Some(rec) = recording {
                let automatic = rec.automatic;
                match rec.finish(lazy.as_ref()) {
                    Ok(r) if automatic => crest::info!(1, "{} (first mapped restore)", r.text()),
                    Ok(r) => eprintln!("crest: {}", r.text()),
                    Err(e) if automatic => {
                        crest::info!(1, "the working set was not recorded: {e}")
                    }
                    Err(e) => eprintln!("crest: warning: the working set was not recorded: {e}"),
                }
            }
            if detached {
                restored.detach();
                Ok(0)
            } else {
                Ok(restored.wait_forwarding_signals()?)
            }
        }
        Command::Bench(args) => bench(*args),
        Command::LazyWatchdog { socket, pids } => Ok(crest::lazy::watchdog::run(socket, &pids)),
        Command::Show { dir, json } => {
            // Only the metadata is shown: a damaged page file is reported, not fatal.
            let (image, damaged) = crest::images::open_image_metadata(&dir)
                .with_context(|| format!("cannot read image {}", dir.display()))?;
            for problem in &damaged {
                eprintln!(
                    "crest: warning: the page data is damaged ({problem}); the image cannot be \
                     restored, its metadata follows"
                );
            }
            if json {
                println!("{}", crest::show::render_json(&image)?);
            } else {
                print!("{}", crest::show::render_text(&image));
            }
            Ok(0)
        }
        Command::Verify { dir } => {
            let image = crest::images::open_image(&dir)
                .with_context(|| format!("cannot read image {}", dir.display()))?;
            crest::images::verify_pages(&dir, &image)
                .with_context(|| format!("image {} failed verification", dir.display()))?;
            println!(
                "{}: image is complete and every checksum matches",
                dir.display()
            );
            Ok(0)
        }
    }
}
