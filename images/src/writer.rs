//! Writing an image directory atomically.
//!
//! Everything goes into a fresh temporary directory next to the destination; [`ImageWriter::commit`]
//! writes the inventory, fsyncs, re-reads the whole image with the same checks a restore uses,
//! and only then puts the directory in place with one rename (or `RENAME_EXCHANGE` when the
//! destination exists), so a reader sees either the old image or the new one, never a mix.
//! Dropping a writer without committing removes the temporary directory.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::codec::{self, MetaRole};
use crate::error::ImageError;
use crate::format::{open_image, process_file_name};
use crate::schema::*;
use crate::validate::check_file_name;
use crate::INVENTORY_FILE;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Finished page files: read-only (see `finish_page_file`).
const PAGE_FILE_MODE: u32 = 0o400;
/// Page data is gathered into chunks of this size before a write(2); larger writes go straight
/// to the file.
const CHUNK: usize = 4 << 20;

/// Builds an image in a temporary directory; see the module documentation.
#[derive(Debug)]
pub struct ImageWriter {
    final_dir: PathBuf,
    tmp_dir: PathBuf,
    files: Vec<FileEntry>,
    /// Every name handed out or written, so nothing is written twice.
    names: HashSet<String>,
    /// Page files handed out but not yet finished.
    pending: HashSet<String>,
    /// Set once the temporary directory no longer holds our unfinished image.
    done: bool,
}

/// A raw page file being written; hashed as it goes.
#[derive(Debug)]
pub struct PageFileWriter {
    name: String,
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    hasher: blake3::Hasher,
    offset: u64,
}

impl ImageWriter {
    /// Starts an image that will replace `final_dir`: makes `<final_dir>.tmp-<pid>` (mode 0700)
    /// after removing a stale one of that name left by a crashed run of the same pid.
    pub fn create(final_dir: &Path) -> Result<ImageWriter, ImageError> {
        let write_err = |what: String| ImageError::Write {
            dir: final_dir.to_path_buf(),
            what,
        };
        // Resolve a symlinked destination so the temporary directory sits on the same
        // filesystem as the real one (rename cannot cross filesystems).
        let final_dir = match std::fs::canonicalize(final_dir) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => final_dir.to_path_buf(),
            Err(e) => return Err(ImageError::io("resolve", final_dir, e)),
        };
        match std::fs::symlink_metadata(&final_dir) {
            Ok(m) if !m.is_dir() => {
                return Err(write_err("it exists and is not a directory".into()))
            }
            _ => {}
        }
        let Some(name) = final_dir.file_name() else {
            return Err(write_err(
                "the path has no final component to name the directory".into(),
            ));
        };
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp_dir = final_dir.with_file_name(tmp_name);
        match std::fs::remove_dir_all(&tmp_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ImageError::io(
                    "remove the stale temporary directory",
                    &tmp_dir,
                    e,
                ))
            }
        }
        std::fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&tmp_dir)
            .map_err(|e| ImageError::io("create the directory", &tmp_dir, e))?;
        let writer = ImageWriter {
            final_dir,
            tmp_dir,
            files: Vec::new(),
            names: HashSet::new(),
            pending: HashSet::new(),
            done: false,
        };
        // The umask may have taken bits away; the mode is 0700 whatever it is.
        std::fs::set_permissions(&writer.tmp_dir, Permissions::from_mode(DIR_MODE))
            .map_err(|e| ImageError::io("chmod", &writer.tmp_dir, e))?;
        Ok(writer)
    }

    /// The temporary directory being filled.
    pub fn dir(&self) -> &Path {
        &self.tmp_dir
    }

    /// Creates a raw page file `name` (mode 0600).
    pub fn page_file(&mut self, name: &str) -> Result<PageFileWriter, ImageError> {
        self.claim_name(name)?;
        let path = self.tmp_dir.join(name);
        let file = create_file(&path)?;
        self.pending.insert(name.to_string());
        Ok(PageFileWriter {
            name: name.to_string(),
            path,
            file,
            buf: Vec::with_capacity(CHUNK),
            hasher: blake3::Hasher::new(),
            offset: 0,
        })
    }

    /// Flushes and fsyncs a page file and records its size and hash for the inventory.
    pub fn finish_page_file(&mut self, mut w: PageFileWriter) -> Result<(), ImageError> {
        if !self.pending.remove(&w.name) {
            return Err(ImageError::Write {
                dir: self.final_dir.clone(),
                what: format!("page file {:?} does not belong to this image", w.name),
            });
        }
        w.flush()?;
        // Read-only from now on: a `--pages map` restore maps it into the restored process,
        // which must never see it change.
        w.file
            .set_permissions(Permissions::from_mode(PAGE_FILE_MODE))
            .map_err(|e| ImageError::io("chmod", &w.path, e))?;
        w.file
            .sync_all()
            .map_err(|e| ImageError::io("fsync", &w.path, e))?;
        self.files.push(FileEntry {
            name: w.name,
            role: FileRole::Pages,
            size: w.offset,
            blake3: *w.hasher.finalize().as_bytes(),
        });
        Ok(())
    }

    /// Writes `process-<pid>.img`.
    pub fn write_process(&mut self, p: &ProcessImage) -> Result<(), ImageError> {
        let name = process_file_name(p.pid);
        self.claim_name(&name)?;
        let bytes = codec::encode(MetaRole::Process, p).map_err(|e| ImageError::Write {
            dir: self.final_dir.clone(),
            what: format!("cannot encode process {}: {e}", p.pid),
        })?;
        self.write_metadata(&name, &bytes)?;
        self.files.push(FileEntry {
            name,
            role: FileRole::Process,
            size: bytes.len() as u64,
            blake3: *blake3::hash(&bytes).as_bytes(),
        });
        Ok(())
    }

    /// Writes the inventory (its `files` filled from what was written; whatever the caller put
    /// there is replaced), fsyncs, re-validates the image and puts it in place of the
    /// destination atomically.
    pub fn commit(mut self, mut inventory: Inventory) -> Result<(), ImageError> {
        if let Some(name) = self.pending.iter().next() {
            return Err(ImageError::Write {
                dir: self.final_dir.clone(),
                what: format!("page file {name:?} was never finished"),
            });
        }
        inventory.files = std::mem::take(&mut self.files);
        let bytes =
            codec::encode(MetaRole::Inventory, &inventory).map_err(|e| ImageError::Write {
                dir: self.final_dir.clone(),
                what: format!("cannot encode the inventory: {e}"),
            })?;
        self.claim_name(INVENTORY_FILE)?;
        self.write_metadata(INVENTORY_FILE, &bytes)?;
        fsync_dir(&self.tmp_dir)?;

        // A dump must never produce an image that restore would refuse.
        open_image(&self.tmp_dir).map_err(|e| ImageError::SelfCheck {
            dir: self.final_dir.clone(),
            problem: Box::new(e),
        })?;

        let replaced_old = self.put_in_place()?;
        self.done = true;
        if let Some(parent) = self.final_dir.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            fsync_dir(parent)?;
        }
        if replaced_old {
            // The old image now sits at the temporary path. The new image is already in place,
            // so failing to delete the old one must not fail the dump; a later dump by a
            // process with the same pid removes it (see `create`).
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
        Ok(())
    }

    /// Renames the temporary directory onto the destination; returns whether an old image
    /// was swapped out (and now sits at the temporary path).
    fn put_in_place(&self) -> Result<bool, ImageError> {
        let from = cstring(&self.tmp_dir)?;
        let to = cstring(&self.final_dir)?;
        let rename = |flags: libc::c_uint| -> std::io::Result<()> {
            // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    flags,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let err = |e: std::io::Error| ImageError::io("move the new image into", &self.final_dir, e);
        match rename(libc::RENAME_NOREPLACE) {
            Ok(()) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // A filesystem without renameat2 flags: fall back to a plain rename when nothing
            // is in the way (there is no atomic way to swap directories there).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if std::fs::symlink_metadata(&self.final_dir).is_err() {
                    rename(0).map_err(err)?;
                    return Ok(false);
                }
                return Err(ImageError::Write {
                    dir: self.final_dir.clone(),
                    what: "the filesystem cannot swap directories atomically (renameat2 RENAME_EXCHANGE); dump into a directory that does not exist yet".into(),
                });
            }
            Err(e) => return Err(err(e)),
        }
        match std::fs::symlink_metadata(&self.final_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Write {
                    dir: self.final_dir.clone(),
                    what: "it exists and is not a directory".into(),
                })
            }
            Err(e) => return Err(ImageError::io("stat", &self.final_dir, e)),
        }
        rename(libc::RENAME_EXCHANGE).map_err(err)?;
        Ok(true)
    }

    fn claim_name(&mut self, name: &str) -> Result<(), ImageError> {
        if let Err(what) = check_file_name(name) {
            return Err(ImageError::Write {
                dir: self.final_dir.clone(),
                what: format!("invalid image file name: {what}"),
            });
        }
        if !self.names.insert(name.to_string()) {
            return Err(ImageError::Write {
                dir: self.final_dir.clone(),
                what: format!("{name:?} is written twice"),
            });
        }
        Ok(())
    }

    fn write_metadata(&self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.tmp_dir.join(name);
        let mut file = create_file(&path)?;
        file.write_all(bytes)
            .map_err(|e| ImageError::io("write", &path, e))?;
        file.sync_all()
            .map_err(|e| ImageError::io("fsync", &path, e))
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.done {
            // A failed dump leaves nothing behind; nothing useful can be done about an error.
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

impl PageFileWriter {
    /// Bytes written so far (page-aligned when callers write whole pages).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends `data`, hashing it on the way.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.hasher.update(data);
        if self.buf.len() + data.len() > CHUNK {
            self.flush()?;
        }
        if data.len() >= CHUNK {
            self.file
                .write_all(data)
                .map_err(|e| ImageError::io("write", &self.path, e))?;
        } else {
            self.buf.extend_from_slice(data);
        }
        self.offset += data.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ImageError> {
        if !self.buf.is_empty() {
            self.file
                .write_all(&self.buf)
                .map_err(|e| ImageError::io("write", &self.path, e))?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Creates a new file with mode 0600 exactly (the umask cannot widen it, but could narrow it).
fn create_file(path: &Path) -> Result<File, ImageError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| ImageError::io("create", path, e))?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(|e| ImageError::io("chmod", path, e))?;
    Ok(file)
}

/// fsync on a directory makes the names created in it durable.
fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("fsync the directory", dir, e))
}

fn cstring(path: &Path) -> Result<CString, ImageError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ImageError::Write {
        dir: path.to_path_buf(),
        what: "the path contains a NUL byte".into(),
    })
}
