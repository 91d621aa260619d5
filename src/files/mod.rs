//! One module per kind of kernel object attached to files, each holding both how it is
//! collected at dump and how it is recreated at restore; `dump/` and `restore/` call them.

pub mod codeid;
pub mod deleted_symlink;
pub mod devnode;
pub mod fown;
pub mod ghost;
pub mod locks;
pub mod mqueue;
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
