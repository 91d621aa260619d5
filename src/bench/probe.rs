//! Readiness probes: when a started or restored workload counts as ready.
//!
//! - `--ready-url URL`: a GET on a new connection answers 2xx (plain http only);
//! - `--ready-port [HOST:]PORT`: a TCP connect succeeds;
//! - `--ready-log FILE:REGEX` / `--ready-stdout REGEX`: a line matching REGEX appears in FILE /
//!   the workload's standard output, after what was there when the start or restore began (a
//!   restored process must print it again: a line printed once at start-up never comes back);
//! - `--ready-exit`: the process has exited.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

use super::procs;
use super::BenchError;

/// How a workload is known to be ready.
#[derive(Debug, Clone)]
pub enum Probe {
    Url {
        addr: SocketAddr,
        host: String,
        path: String,
        url: String,
    },
    Port {
        addr: SocketAddr,
    },
    Log {
        file: PathBuf,
        regex: Regex,
    },
    Stdout {
        regex: Regex,
    },
    Exit,
}

impl Probe {
    pub fn url(url: &str) -> Result<Probe, BenchError> {
        let bad = |why: &str| BenchError::Usage(format!("--ready-url {url}: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve {hostport}: {e}")))?
            .next()
            .ok_or_else(|| bad("the host resolves to no address"))?;
        Ok(Probe::Url {
            addr,
            host: hostport.to_string(),
            path: path.to_string(),
            url: url.to_string(),
        })
    }

    pub fn port(spec: &str) -> Result<Probe, BenchError> {
        let with_host = if spec.contains(':') {
            spec.to_string()
        } else {
            format!("127.0.0.1:{spec}")
        };
        let addr = with_host
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                BenchError::Usage(format!("--ready-port {spec}: not a port or HOST:PORT"))
            })?;
        Ok(Probe::Port { addr })
    }

    pub fn log(spec: &str) -> Result<Probe, BenchError> {
        let (file, re) = spec
            .split_once(':')
            .ok_or_else(|| BenchError::Usage(format!("--ready-log {spec}: wants FILE:REGEX")))?;
        Ok(Probe::Log {
            file: PathBuf::from(file),
            regex: regex(re)?,
        })
    }

    pub fn stdout(re: &str) -> Result<Probe, BenchError> {
        Ok(Probe::Stdout { regex: regex(re)? })
    }

    /// In words, for the report.
    pub fn describe(&self) -> String {
        match self {
            Probe::Url { url, .. } => format!("first HTTP 2xx from {url}"),
            Probe::Port { addr } => format!("TCP port {addr} accepting"),
            Probe::Log { file, regex } => {
                format!("a new line matching /{regex}/ in {}", file.display())
            }
            Probe::Stdout { regex } => format!("a new line matching /{regex}/ on stdout"),
            Probe::Exit => "the process exiting".to_string(),
        }
    }
}

fn regex(re: &str) -> Result<Regex, BenchError> {
    Regex::new(re).map_err(|e| BenchError::Usage(format!("bad regular expression {re:?}: {e}")))
}

/// One probed instance: the process, and where its output went.
pub struct Watch<'a> {
    pub probe: &'a Probe,
    pub pid: i32,
    /// The workload's standard output file (for --ready-stdout).
    pub stdout: PathBuf,
    /// Offset from which a log/stdout match counts (what was there before).
    scanned: u64,
}

impl<'a> Watch<'a> {
    /// Starts watching: log and stdout lines count from their current end.
    pub fn new(probe: &'a Probe, pid: i32, stdout: &Path) -> Watch<'a> {
        let scanned = match probe {
            Probe::Log { file, .. } => file_len(file),
            Probe::Stdout { .. } => file_len(stdout),
            _ => 0,
        };
        Watch {
            probe,
            pid,
            stdout: stdout.to_path_buf(),
            scanned,
        }
    }

    /// Whether the instance is ready now.
    pub fn ready(&mut self) -> bool {
        match self.probe {
            Probe::Url {
                addr, host, path, ..
            } => http_2xx(addr, host, path),
            Probe::Port { addr } => TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).is_ok(),
            Probe::Log { file, regex } => {
                let file = file.clone();
                self.scan(&file, regex)
            }
            Probe::Stdout { regex } => {
                let file = self.stdout.clone();
                self.scan(&file, regex)
            }
            Probe::Exit => !procs::running(self.pid),
        }
    }

    /// Looks for a matching complete line after `scanned`; moves `scanned` past complete lines.
    fn scan(&mut self, file: &Path, regex: &Regex) -> bool {
        let Ok(mut f) = std::fs::File::open(file) else {
            return false;
        };
        if f.seek(SeekFrom::Start(self.scanned)).is_err() {
            return false;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return false;
        }
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
            return false;
        };
        let complete = &buf[..=last_nl];
        self.scanned += complete.len() as u64;
        String::from_utf8_lossy(complete)
            .lines()
            .any(|l| regex.is_match(l))
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// GET `path` on a new connection; true on a 2xx status line.
pub fn http_2xx(addr: &SocketAddr, host: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_nodelay(true);
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    // "HTTP/1.x 2NN"
    head.starts_with(b"HTTP/") && head[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_ports_parse() {
        match Probe::url("http://127.0.0.1:8080/hello?x=1").unwrap() {
            Probe::Url { addr, path, .. } => {
                assert_eq!(addr.port(), 8080);
                assert_eq!(path, "/hello?x=1");
            }
            _ => panic!("not a url probe"),
        }
        assert!(Probe::url("https://127.0.0.1/").is_err());
        match Probe::port("9000").unwrap() {
            Probe::Port { addr } => assert_eq!(addr.to_string(), "127.0.0.1:9000"),
            _ => panic!("not a port probe"),
        }
        assert!(Probe::log("nocolon").is_err());
        assert!(Probe::log("/tmp/x:(unclosed").is_err());
    }

    #[test]
    fn log_lines_count_only_after_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        std::fs::write(&file, "ready 1\n").unwrap();
        let probe = Probe::log(&format!("{}:^ready", file.display())).unwrap();
        let mut w = Watch::new(&probe, 0, Path::new("/nonexistent"));
        assert!(!w.ready(), "an old line does not count");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"other\nrea")
            .unwrap();
        assert!(!w.ready(), "an incomplete line does not count");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"dy 2\n")
            .unwrap();
        assert!(w.ready());
    }
}
