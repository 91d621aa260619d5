//! One module per kind of kernel object attached to files, each holding both how it is
//! collected at dump and how it is recreated at restore; `dump/` and `restore/` call them.

pub mod aio;
pub mod codeid;
pub mod deleted_symlink;
pub mod devnode;
pub mod fown;
pub mod ghost;
pub mod locks;
pub mod mqueue;
pub mod peercred;
pub mod root;
pub mod sockfilter;
pub mod sockopts;

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::images::{FileIdentity, FileKind};

/// The image's description of a file of kind `kind` at `path`, with its stat `md`.
pub fn stat_identity(path: String, kind: FileKind, md: &Metadata) -> FileIdentity {
    FileIdentity {
        path,
        kind,
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        mode: md.mode(),
    }
}

/// The image's description of a kernel object with no content of its own (a socket, a pipe,
/// an event fd ...) of kind `kind`, known by its inode `(dev, ino)`: no size, times or mode.
pub fn object_identity(path: String, kind: FileKind, dev: u64, ino: u64) -> FileIdentity {
    FileIdentity {
        path,
        kind,
        dev,
        ino,
        size: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        mode: 0,
    }
}

/// A random 64-bit value for names no one uses yet (getrandom; the time and crest's pid if
/// that fails: only uniqueness matters).
pub fn unique_suffix() -> u64 {
    let mut r = [0u8; 8];
    // SAFETY: getrandom writes at most r.len() bytes into r.
    let got = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    if got == r.len() as isize {
        return u64::from_le_bytes(r);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(40)
}

/// Where a removed file at `old` is made again for a moment (and removed again once opened):
/// its old name when nothing took it since, else a fresh `.crest-KIND-…` name in the same
/// directory, on the same filesystem. Returns that name and the directory, or says that the
/// path has none.
pub fn remake_name<'a>(
    old: &'a std::path::Path,
    kind: &str,
) -> Result<(std::path::PathBuf, &'a std::path::Path), String> {
    let dir = old.parent().ok_or("has no directory to be made again in")?;
    let name = if std::fs::symlink_metadata(old).is_err() {
        old.to_path_buf()
    } else {
        dir.join(format!(".crest-{kind}-{:016x}", unique_suffix()))
    };
    Ok((name, dir))
}
