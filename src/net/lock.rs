//! The network lock: while a dumped connection has no socket (from the dump's kill until the
//! restore has recreated it), a packet of that connection would reach a kernel that answers
//! it with a RST, and while crest reads a connection's queues new data must not change them.
//! So the dumped connections' packets are dropped, both ways, by an nftables table crest owns:
//! `inet crest-<pid>-<ms>`, with input and output chains dropping every 4-tuple (source address
//! and port, destination address and port) in its sets — which covers loopback, where both
//! hooks see the packets. TCP retransmits what was dropped once the table is gone. Packets
//! marked [`super::inject::MARK`] pass: the segments a restore forges for a connection
//! ([`super::inject`]).
//!
//! The table is made only for a dump that has connections, before the tree is frozen, and
//! grows if the collection finds one made since. A failed dump, or one that leaves the tree
//! running (`-R`), deletes it; a dump that kills the tree leaves it (its name is in each
//! connection's record) for `crest restore` to delete once the sockets are back.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use super::sock::on_the_wire;

/// Errors of the network lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the network lock needs nftables: {0} (install the nftables package; crest runs `nft`)"
    )]
    Unavailable(String),
    #[error("nft failed to {what} the network lock table {table}: {detail}")]
    Nft {
        what: &'static str,
        table: String,
        detail: String,
    },
}

/// The nft program: on PATH, or where Debian puts it.
fn nft_path() -> Option<std::path::PathBuf> {
    let dirs = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].iter().map(std::path::PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// Runs `nft -f -` with `script`.
fn nft(script: &str) -> Result<(), String> {
    let path = nft_path().ok_or_else(|| "no nft program found".to_string())?;
    let mut child = Command::new(&path)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

/// Whether a table named `table` exists.
pub fn exists(table: &str) -> bool {
    let Some(path) = nft_path() else { return false };
    Command::new(path)
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `crest check`: makes and deletes a lock table, as a dump would.
pub fn probe() -> Result<String, String> {
    let table = format!("crest-check-{}", std::process::id());
    nft(&create_script(&table))?;
    nft(&format!("delete table inet {table}\n"))?;
    Ok(format!(
        "nftables tables can be created ({})",
        nft_path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    ))
}

fn create_script(table: &str) -> String {
    let mut s = format!("table inet {table} {{\n");
    s += "  set conns4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }\n";
    s += "  set conns6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }\n";
    for (chain, hook) in [("input", "input"), ("output", "output")] {
        s += &format!(
            "  chain {chain} {{ type filter hook {hook} priority -150; policy accept;\n    \
             meta mark {mark:#x} accept\n    \
             ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop\n    \
             ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop\n  }}\n",
            mark = super::inject::MARK
        );
    }
    s += "}\n";
    s
}

/// The lock of one dump.
pub struct NetLock {
    table: String,
    created: bool,
    locked: HashSet<(SocketAddr, SocketAddr)>,
    kept: bool,
}

impl NetLock {
    /// A lock named after the dump of `root`; nothing is installed until [`NetLock::add`].
    pub fn new(root: i32) -> NetLock {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        NetLock {
            table: format!("crest-{root}-{ms}"),
            created: false,
            locked: HashSet::new(),
            kept: false,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether the lock holds any connection (so the table exists).
    pub fn active(&self) -> bool {
        self.created
    }

    /// Whether the connection local -> remote is locked.
    pub fn holds(&self, local: &SocketAddr, remote: &SocketAddr) -> bool {
        self.locked
            .contains(&(on_the_wire(local), on_the_wire(remote)))
    }

    /// Drops the packets of the connections `conns` (local, remote) both ways from now on.
    pub fn add(&mut self, conns: &[(SocketAddr, SocketAddr)]) -> Result<(), LockError> {
        let new: Vec<(SocketAddr, SocketAddr)> = conns
            .iter()
            .map(|(l, r)| (on_the_wire(l), on_the_wire(r)))
            .filter(|c| !self.locked.contains(c))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut script = String::new();
        if !self.created {
            if nft_path().is_none() {
                return Err(LockError::Unavailable("no nft program found".into()));
            }
            script += &create_script(&self.table);
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (l, r) in &new {
            for (a, b) in [(l, r), (r, l)] {
                let e = format!("{} . {} . {} . {}", a.ip(), a.port(), b.ip(), b.port());
                if a.is_ipv4() {
                    v4.push(e);
                } else {
                    v6.push(e);
                }
            }
        }
        for (set, elems) in [("conns4", v4), ("conns6", v6)] {
            if !elems.is_empty() {
                script += &format!(
                    "add element inet {} {set} {{ {} }}\n",
                    self.table,
                    elems.join(", ")
                );
            }
        }
        nft(&script).map_err(|detail| LockError::Nft {
            what: if self.created { "extend" } else { "create" },
            table: self.table.clone(),
            detail,
        })?;
        self.created = true;
        self.locked.extend(new);
        Ok(())
    }

    /// The dump is complete and the tree killed: the table stays for the restore to delete.
    pub fn keep(mut self) -> Option<String> {
        self.kept = true;
        self.created.then(|| self.table.clone())
    }

    /// Deletes the table now.
    pub fn remove(&mut self) -> Result<(), LockError> {
        if self.created && !self.kept {
            self.created = false;
            unlock(&self.table)?;
        }
        Ok(())
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            crate::warn!("{e}; delete it with `nft delete table inet {}`", self.table);
        }
    }
}

/// Deletes the lock table `table` (restore, once the sockets are back). A table that is gone
/// already (deleted by hand, or by an earlier restore of the same image) is fine.
pub fn unlock(table: &str) -> Result<(), LockError> {
    if !exists(table) {
        return Ok(());
    }
    nft(&format!("delete table inet {table}\n")).map_err(|detail| LockError::Nft {
        what: "delete",
        table: table.to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_table_is_made_on_first_connection_and_gone_when_dropped() {
        let mut lock = NetLock::new(-(std::process::id() as i32));
        let table = lock.table().to_string();
        assert!(!lock.active());
        lock.add(&[]).unwrap();
        assert!(!exists(&table));
        let l: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let r: SocketAddr = "[::ffff:127.0.0.1]:2".parse().unwrap();
        let l6: SocketAddr = "[::1]:3".parse().unwrap();
        let r6: SocketAddr = "[::1]:4".parse().unwrap();
        lock.add(&[(l, r), (l6, r6)]).unwrap();
        assert!(exists(&table));
        assert!(lock.holds(&l, &"127.0.0.1:2".parse().unwrap()));
        lock.add(&[(l, r)]).unwrap();
        drop(lock);
        assert!(!exists(&table));
        unlock(&table).unwrap();
    }
}
