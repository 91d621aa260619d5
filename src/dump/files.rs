//! The process's table of files (`ProcessImage::files`): every file it maps or has open, its
//! cwd and its exe, each once, keyed by (device, inode).

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::images::{FileIdentity, FileKind};

/// Files seen so far, deduplicated by (st_dev, st_ino).
#[derive(Debug, Default)]
pub struct FileTable {
    files: Vec<FileIdentity>,
    by_inode: HashMap<(u64, u64), u32>,
    /// `--ghost-limit` (None: [`crate::files::ghost::DEFAULT_LIMIT`]).
    ghost_limit: Option<u64>,
}

/// Why a file cannot go into the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRefusal {
    /// Not a regular file, directory or character device; the string names the type.
    Kind(&'static str),
    /// The path is not valid UTF-8 (the image stores paths as strings).
    NotUtf8,
    /// The path is not absolute.
    Relative,
}

impl std::fmt::Display for FileRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileRefusal::Kind(k) => write!(f, "it is {k}"),
            FileRefusal::NotUtf8 => write!(f, "its path is not valid UTF-8"),
            FileRefusal::Relative => write!(f, "its path is not absolute"),
        }
    }
}

/// The kind of file `md` describes, or what it is instead when crest cannot reopen it.
pub fn file_kind(md: &Metadata) -> Result<FileKind, FileRefusal> {
    let t = md.file_type();
    if t.is_file() {
        Ok(FileKind::Regular)
    } else if t.is_dir() {
        Ok(FileKind::Directory)
    } else if t.is_char_device() {
        Ok(FileKind::CharDevice { rdev: md.rdev() })
    } else if t.is_block_device() {
        Err(FileRefusal::Kind("a block device"))
    } else if t.is_fifo() {
        Err(FileRefusal::Kind("a FIFO (named pipe)"))
    } else if t.is_socket() {
        Err(FileRefusal::Kind("a socket"))
    } else if t.is_symlink() {
        Ok(FileKind::Symlink)
    } else {
        Err(FileRefusal::Kind("of an unknown file type"))
    }
}

/// Whether `a` and `b` are the same inode.
pub fn same_inode(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

impl FileTable {
    /// An empty table whose unlinked files may hold up to `limit` bytes of data each.
    pub fn with_ghost_limit(limit: u64) -> FileTable {
        FileTable {
            ghost_limit: Some(limit),
            ..FileTable::default()
        }
    }

    /// The most data an unlinked file may hold for the dump to store it (`--ghost-limit`).
    pub fn ghost_limit(&self) -> u64 {
        self.ghost_limit
            .unwrap_or(crate::files::ghost::DEFAULT_LIMIT)
    }

    /// Every file so far, by index.
    pub fn all(&self) -> &[FileIdentity] {
        &self.files
    }

    /// Index of the file `md` (seen at `path`), adding it if new.
    pub fn add(&mut self, path: &Path, md: &Metadata) -> Result<u32, FileRefusal> {
        let key = (md.dev(), md.ino());
        if let Some(&idx) = self.by_inode.get(&key) {
            return Ok(idx);
        }
        let kind = file_kind(md)?;
        let path = path.to_str().ok_or(FileRefusal::NotUtf8)?;
        if !path.starts_with('/') {
            return Err(FileRefusal::Relative);
        }
        let idx = self.files.len() as u32;
        self.files
            .push(crate::files::stat_identity(path.to_string(), kind, md));
        self.by_inode.insert(key, idx);
        Ok(idx)
    }

    /// Index of the file with inode `(dev, ino)`, adding `make()` if new: for what the table
    /// cannot describe from a path and stat alone (sockets).
    pub fn add_identity<E>(
        &mut self,
        dev: u64,
        ino: u64,
        make: impl FnOnce() -> Result<FileIdentity, E>,
    ) -> Result<u32, E> {
        if let Some(&idx) = self.by_inode.get(&(dev, ino)) {
            return Ok(idx);
        }
        let idx = self.files.len() as u32;
        self.files.push(make()?);
        self.by_inode.insert((dev, ino), idx);
        Ok(idx)
    }

    /// Index of the regular file `md` (seen at `path`) whose content the image stores
    /// ([`FileKind::ContentInImage`]); a file already listed becomes one.
    pub fn add_content_in_image(&mut self, path: &Path, md: &Metadata) -> Result<u32, FileRefusal> {
        let kind = file_kind(md)?;
        if kind != FileKind::Regular {
            return Err(FileRefusal::Kind("not a regular file"));
        }
        let idx = self.add(path, md)?;
        self.files[idx as usize].kind = FileKind::ContentInImage;
        Ok(idx)
    }

    /// The file at `idx`, which the table returned.
    pub fn get(&self, idx: u32) -> &FileIdentity {
        &self.files[idx as usize]
    }

    /// The file at `idx`, which the table returned, to change.
    pub fn get_mut(&mut self, idx: u32) -> &mut FileIdentity {
        &mut self.files[idx as usize]
    }

    /// Adds `identity` as a file of its own, whatever its inode: an event fd's anonymous inode
    /// is one for every such fd, each with its own state.
    pub fn push(&mut self, identity: FileIdentity) -> u32 {
        self.files.push(identity);
        (self.files.len() - 1) as u32
    }

    /// Changes what the file with inode `(dev, ino)` is, if the table lists it.
    pub fn set_kind_of(&mut self, dev: u64, ino: u64, kind: FileKind) {
        if let Some(&idx) = self.by_inode.get(&(dev, ino)) {
            self.files[idx as usize].kind = kind;
        }
    }

    pub fn into_files(self) -> Vec<FileIdentity> {
        self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_inode_whatever_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        let b = dir.path().join("b");
        std::fs::hard_link(&a, &b).unwrap();
        let mut t = FileTable::default();
        let ia = t.add(&a, &std::fs::metadata(&a).unwrap()).unwrap();
        let ib = t.add(&b, &std::fs::metadata(&b).unwrap()).unwrap();
        let id = t
            .add(dir.path(), &std::fs::metadata(dir.path()).unwrap())
            .unwrap();
        let inull = t
            .add(
                Path::new("/dev/null"),
                &std::fs::metadata("/dev/null").unwrap(),
            )
            .unwrap();
        assert_eq!(ia, ib);
        assert_ne!(ia, id);
        let files = t.into_files();
        assert_eq!(files.len(), 3);
        assert_eq!(files[ia as usize].kind, FileKind::Regular);
        assert_eq!(files[ia as usize].size, 1);
        assert_eq!(files[id as usize].kind, FileKind::Directory);
        assert!(matches!(files[inull as usize].kind, FileKind::CharDevice { rdev } if rdev != 0));
    }

    /// FIFOs go through `fifos::add` (fds only: a FIFO is never a mapping, cwd or exe).
    #[test]
    fn fifos_are_not_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut t = FileTable::default();
        assert_eq!(
            t.add(&p, &std::fs::metadata(&p).unwrap()),
            Err(FileRefusal::Kind("a FIFO (named pipe)"))
        );
    }
}
