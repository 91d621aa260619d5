//! The one error type of the image crate. Every variant names the file (or directory) and says
//! what is wrong in words a user can act on: most image problems end in "dump again".

use std::path::PathBuf;

/// Why an image cannot be read, trusted or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O call on an image file failed. (The OS error is part of the message and not a
    /// `source`, so an error chain printed with `{:#}` does not repeat it.)
    #[error("cannot {action} {}: {err}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },

    /// The directory holds no inventory: it is not an image (writes are atomic, so a
    /// half-written image never shows up under its final name).
    #[error("{} is not a crest image directory (it has no {file})", dir.display(), file = crate::INVENTORY_FILE)]
    NotAnImageDir { dir: PathBuf },

    /// The file does not start with the crest magic.
    #[error("{} is not a crest image file (bad magic)", path.display())]
    NotAnImage { path: PathBuf },

    /// The file was written by a crest with another format version.
    #[error(
        "{} has image format version {found}, this crest reads version {supported}{}",
        path.display(),
        if *checksum_ok { "; dump again with this crest" } else { " (and its checksum does not match: the file may be corrupted)" }
    )]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
        /// Whether the file's own checksum matched (a genuine other-version file) or not.
        checksum_ok: bool,
    },

    /// The file is shorter than its header says.
    #[error(
        "image {} is truncated ({actual} bytes, expected {expected}): the image cannot be trusted; dump again",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// The file's content does not match its checksum or cannot be decoded.
    #[error("image {} is corrupted ({what}): the image cannot be trusted; dump again", path.display())]
    Corrupted { path: PathBuf, what: String },

    /// A listed file's size differs from what the inventory recorded.
    #[error(
        "image file {} has {actual} bytes but the inventory records {recorded}: the image was truncated or modified; dump again",
        path.display()
    )]
    SizeMismatch {
        path: PathBuf,
        recorded: u64,
        actual: u64,
    },

    /// A file the inventory lists is not in the directory.
    #[error("image file {} is missing: the image is incomplete; dump again", path.display())]
    MissingFile { path: PathBuf },

    /// The directory holds an image file the inventory does not list.
    #[error(
        "{} is not listed in the image's inventory: the directory mixes files of different dumps; dump again into an empty directory",
        path.display()
    )]
    UnlistedFile { path: PathBuf },

    /// A file name in the inventory could escape the image directory or is otherwise unusable.
    #[error("image {} lists an invalid file name {name:?}: the image cannot be trusted", dir.display())]
    BadFileName { dir: PathBuf, name: String },

    /// The image was taken on another architecture.
    #[error(
        "image {} was dumped on {image}, this machine is {host}: restore it on a {image} machine",
        dir.display()
    )]
    ArchMismatch {
        dir: PathBuf,
        image: &'static str,
        host: &'static str,
    },

    /// The image was taken with another page size.
    #[error(
        "image {} was dumped with {image}-byte pages, this machine uses {host}-byte pages: restore it on a machine with {image}-byte pages",
        dir.display()
    )]
    PageSizeMismatch { dir: PathBuf, image: u64, host: u64 },

    /// The inventory as a whole does not hang together.
    #[error("image {} is inconsistent: {what}; dump again", dir.display())]
    Inconsistent { dir: PathBuf, what: String },

    /// A process record fails its semantic checks.
    #[error("process {pid} in the image is invalid: {what}; the image cannot be restored")]
    InvalidProcess { pid: i32, what: String },

    /// A process file fails its semantic checks.
    #[error("image {} is invalid: process {pid}: {what}; the image cannot be restored", path.display())]
    InvalidProcessFile {
        path: PathBuf,
        pid: i32,
        what: String,
    },

    /// Page data does not match the checksum the inventory recorded.
    #[error(
        "image {} is corrupted (page data checksum mismatch): the image cannot be trusted; dump again",
        path.display()
    )]
    PageDataMismatch { path: PathBuf },

    /// The working-set file beside an image is damaged, stale or does not fit the image.
    #[error(
        "working-set file {} cannot be used ({what}); remove it, or restore with --no-prefetch",
        path.display()
    )]
    WorkingSet { path: PathBuf, what: String },

    /// The image directory cannot be put in place.
    #[error("cannot write image {}: {what}", dir.display())]
    Write { dir: PathBuf, what: String },

    /// The image a dump was about to put in place failed the reader's own checks: a crest bug.
    #[error(
        "the image about to be written to {} fails its own validation (this is a crest bug; nothing was replaced): {problem}",
        dir.display()
    )]
    SelfCheck {
        dir: PathBuf,
        problem: Box<ImageError>,
    },
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            err: source,
        }
    }
}
