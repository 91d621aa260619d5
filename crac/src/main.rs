//! `crestengine`: crest as a CRaC executable engine (the protocol of JDK 17/21 CRaC builds,
//! `-XX:CREngine=/path/to/crestengine`), and the helper the library engine
//! (`libcrestengine.so`) starts. See [`crest::crac`] for what each mode does.
//!
//! ```text
//! crestengine checkpoint [OPTIONS] DIR [OPTIONS]   (env CRAC_CRIU_LEAVE_RUNNING: keep running)
//! crestengine restore [OPTIONS] DIR [OPTIONS]      (env CRAC_NEW_ARGS_ID: the restore data)
//! OPTIONS: --pages=copy|map|lazy  --pidns  --tid=TID  -v
//! ```

use std::path::PathBuf;

use crest::crac::{CheckpointRequest, Pages, RestoreRequest};

fn main() {
    std::process::exit(run(std::env::args().skip(1).collect()));
}

/// What the command line says besides the mode.
#[derive(Debug, Default, PartialEq)]
struct Args {
    dir: Option<PathBuf>,
    pages: Option<Pages>,
    pidns: bool,
    tid: Option<i32>,
    verbose: u8,
}

/// Options may come before or after the directory (JDK 17 puts the directory last); the first
/// word that is not an option is the directory.
fn parse(words: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let (name, inline) = match w.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (w, None),
        };
        let value = |i: &mut usize| -> Result<String, String> {
            if let Some(v) = &inline {
                return Ok(v.clone());
            }
            *i += 1;
            words
                .get(*i)
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--pages" => a.pages = Some(value(&mut i)?.parse()?),
            "--pidns" => a.pidns = true,
            "--tid" => {
                let v = value(&mut i)?;
                a.tid = Some(
                    v.parse()
                        .map_err(|_| format!("--tid {v:?} is not a thread id"))?,
                );
            }
            "-v" | "--verbose" => a.verbose += 1,
            "" => {}
            o if o.starts_with('-') => {
                return Err(format!(
                    "unknown option {o:?} (crestengine takes --pages=copy|map|lazy, --pidns, \
                     --tid=TID, -v)"
                ))
            }
            d if a.dir.is_none() => a.dir = Some(PathBuf::from(d)),
            extra => return Err(format!("unexpected argument {extra:?} after the directory")),
        }
        i += 1;
    }
    Ok(a)
}

fn run(argv: Vec<String>) -> i32 {
    let Some(mode) = argv.first() else {
        // Run as a CRIU action script: crest restore signals the JVM itself.
        if std::env::var_os("CRTOOLS_SCRIPT_ACTION").is_some() {
            return 0;
        }
        eprintln!("usage: crestengine checkpoint|restore [OPTIONS] DIR");
        return 2;
    };
    if mode == "lazy-watchdog" {
        // The guard a lazy restore starts from its own executable (crest::lazy::watchdog).
        let nums: Option<Vec<i32>> = argv[1..].iter().map(|a| a.parse().ok()).collect();
        return match nums.as_deref() {
            Some([sock, pids @ ..]) => crest::lazy::watchdog::run(*sock, pids),
            _ => 2,
        };
    }
    let args = match parse(&argv[1..]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crestengine: {e}");
            return 2;
        }
    };
    crest::log::set_verbosity(args.verbose);
    let Some(dir) = args.dir.clone() else {
        eprintln!("crestengine: {mode} needs the image directory");
        return 2;
    };
    match mode.as_str() {
        "checkpoint" => {
            let req = CheckpointRequest {
                dir,
                leave_running: std::env::var_os("CRAC_CRIU_LEAVE_RUNNING").is_some(),
                tid: args.tid,
            };
            match crest::crac::checkpoint(&req) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!(
                        "crestengine: checkpoint into {} failed: {e}",
                        req.dir.display()
                    );
                    // The library engine (it names its thread) also learns it by the signal,
                    // in case it cannot see this exit status (SIGCHLD ignored).
                    if let Some(tid) = req.tid {
                        // SAFETY: getppid has no preconditions.
                        let jvm = unsafe { libc::getppid() };
                        let _ = crest::crac::send_restore_data(jvm, Some(tid), -1);
                    }
                    1
                }
            }
        }
        "restore" => {
            let data = match std::env::var("CRAC_NEW_ARGS_ID") {
                Err(_) => 0,
                Ok(v) => match v.trim().parse::<i32>() {
                    Ok(n) => n,
                    Err(_) => {
                        eprintln!("crestengine: CRAC_NEW_ARGS_ID={v:?} is not an int");
                        return 1;
                    }
                },
            };
            // Like the CRaC CRIU's --mmap-page-image, on unless the JVM says direct_map=false.
            let no_map = std::env::var("CRAC_CRIU_OPTS")
                .is_ok_and(|o| o.split_whitespace().any(|w| w == "--no-mmap-page-image"));
            let pages = args
                .pages
                .unwrap_or(if no_map { Pages::Copy } else { Pages::Map });
            let req = RestoreRequest {
                dir,
                data,
                pages,
                pidns: args.pidns,
            };
            match crest::crac::restore(&req) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("crestengine: {e}");
                    1
                }
            }
        }
        "restorewait" => {
            eprintln!("crestengine: restorewait is not needed: crestengine restore waits itself");
            2
        }
        other => {
            eprintln!("crestengine: unknown mode {other:?} (checkpoint or restore)");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn directory_first_or_last() {
        let a = parse(&words("/img --pidns --pages=copy")).unwrap();
        assert_eq!(a.dir, Some(PathBuf::from("/img")));
        assert!(a.pidns);
        assert_eq!(a.pages, Some(Pages::Copy));
        let b = parse(&words("--tid 12 -v /img")).unwrap();
        assert_eq!(
            (b.dir, b.tid, b.verbose),
            (Some(PathBuf::from("/img")), Some(12), 1)
        );
    }

    #[test]
    fn unknown_options_are_refused() {
        assert!(parse(&words("/img --shell-job"))
            .unwrap_err()
            .contains("--shell-job"));
        assert!(parse(&words("/img /other")).is_err());
        assert!(parse(&words("--pages=mmap /img")).is_err());
    }
}
