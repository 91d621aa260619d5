//! A minimal HTTP/1.1 client for the tests of servers: one keep-alive connection, GET only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a server may take to answer one request (a JVM just restored on a loaded machine).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A minimal HTTP/1.1 client on one keep-alive connection: what a load balancer or a browser
/// holds open against a server.
pub struct HttpConnection {
    stream: TcpStream,
}

impl HttpConnection {
    pub fn open(addr: SocketAddr) -> HttpConnection {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        HttpConnection { stream }
    }

    /// `GET path` on this connection; the status code and the body.
    pub fn get(&mut self, path: &str) -> Result<(u32, String), String> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send GET {path}: {e}"))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err(format!("GET {path}: the server closed the connection")),
                Err(e) => return Err(format!("GET {path}: read the answer: {e}")),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("GET {path}: no Content-length in {head:?}"))?;
        let mut body = vec![0u8; length];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("GET {path}: read the body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).to_string()))
    }

    /// `GET /hello`, which must answer 200 `hello N pid PID`; returns N.
    pub fn hello(&mut self, pid: i32, ctx: &str) -> u64 {
        let (status, body) = self.get("/hello").unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(status, 200, "{ctx}: GET /hello answered {body:?}");
        let rest = body
            .strip_prefix("hello ")
            .unwrap_or_else(|| panic!("{ctx}: GET /hello answered {body:?}"));
        let (n, from) = rest.split_once(" pid ").expect("hello N pid PID");
        assert_eq!(from, pid.to_string(), "{ctx}: answered by another process");
        n.parse().expect("request count")
    }
}
