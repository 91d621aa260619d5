//! Argument parsing for the `crest` binary. Spellings follow CRIU's where the meaning is the
//! same (`-t/--tree`, `-D/--images-dir`, `-R/--leave-running`, `-d/--restore-detached`,
//! `--pidfile`, `-v`), so a CRIU user feels at home.

use std::path::PathBuf;

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

#[derive(Subcommand)]
enum Command {
    /// List the kernel features and privileges crest relies on; exit 0 when dump and restore can work.
    Check,
    /// Checkpoint a process into an image directory.
    Dump {
        /// Pid of the process to dump.
        #[arg(short = 't', long = "tree")]
        pid: i32,
        /// Image directory to write (replaced atomically if it exists).
        #[arg(short = 'D', long = "images-dir")]
        dir: PathBuf,
        /// Leave the process running after the dump instead of killing it.
        #[arg(short = 'R', long = "leave-running")]
        leave_running: bool,
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
    },
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
        } => {
            let opts = crest::dump::DumpOptions {
                pid,
                dir: dir.clone(),
                leave_running,
            };
            let report = crest::dump::dump(&opts)
                .with_context(|| format!("dump of pid {pid} into {} failed", dir.display()))?;
            eprint!("{}", report.render());
            Ok(0)
        }
        Command::Restore {
            dir,
            detached,
            pidfile,
            verify,
        } => {
            let opts = crest::restore::RestoreOptions {
                dir: dir.clone(),
                verify,
                detached,
            };
            let restored = crest::restore::restore(&opts)
                .with_context(|| format!("restore from {} failed", dir.display()))?;
            if let Some(path) = pidfile {
                std::fs::write(&path, format!("{}\n", restored.pid()))
                    .with_context(|| format!("cannot write pid file {}", path.display()))?;
            }
            if detached {
                restored.detach();
                Ok(0)
            } else {
                Ok(restored.wait_forwarding_signals()?)
            }
        }
        Command::Show { dir, json } => {
            let image = crest::images::open_image(&dir)
                .with_context(|| format!("cannot read image {}", dir.display()))?;
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
