//! Reading an image directory: [`open_image`] checks all metadata before anyone acts on it,
//! [`verify_pages`] additionally hashes the page data (it costs restore time, so on request).
//! Writing lives in [`crate::writer`]; both are re-exported here.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::codec::{self, MetaRole};
pub use crate::error::ImageError;
use crate::schema::*;
pub use crate::validate::validate_process;
use crate::validate::{self, check_file_name};
pub use crate::writer::{ImageWriter, PageFileWriter};
use crate::INVENTORY_FILE;

/// A validated image: every metadata file read, checksummed and bounds-checked.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub inventory: Inventory,
    /// In the order the inventory lists their files.
    pub processes: Vec<ProcessImage>,
    /// BLAKE3 of `inventory.img`: what ties a working set ([`crate::workingset`]) to this dump.
    pub inventory_blake3: [u8; 32],
}

impl Image {
    /// The inventory entry of a listed file.
    pub fn file_entry(&self, name: &str) -> Option<&FileEntry> {
        self.inventory.files.iter().find(|f| f.name == name)
    }

    /// Full path of a process's page file.
    pub fn pages_path(&self, process: &ProcessImage) -> PathBuf {
        self.dir.join(&process.pages_file)
    }
}

/// The machine's page size, read at run time.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions; it only reads a constant.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// Reads and fully validates the metadata of the image in `dir`: headers, versions, checksums
/// of every metadata file, sizes of every page file, and every process record's lengths,
/// offsets and addresses. Page data is not hashed (see [`verify_pages`]).
pub fn open_image(dir: &Path) -> Result<Image, ImageError> {
    open(dir, PageFiles::MustBeWhole).map(|(image, _)| image)
}

/// Like [`open_image`], for reading an image's metadata only (`crest show`): a page file that
/// is missing, truncated or grown does not stop it. The image is returned with the problem of
/// each damaged page file (such an image cannot be restored; [`open_image`] refuses it).
pub fn open_image_metadata(dir: &Path) -> Result<(Image, Vec<ImageError>), ImageError> {
    open(dir, PageFiles::MayBeDamaged)
}

/// Whether [`open`] refuses an image whose page files are not as the inventory lists them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageFiles {
    MustBeWhole,
    MayBeDamaged,
}

fn open(dir: &Path, page_files: PageFiles) -> Result<(Image, Vec<ImageError>), ImageError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ImageError::NotAnImageDir {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(ImageError::io("open the image directory", dir, e)),
    }
    let inv_path = dir.join(INVENTORY_FILE);
    let bytes = match codec::read_metadata_file(&inv_path) {
        Err(ImageError::MissingFile { .. }) => {
            return Err(ImageError::NotAnImageDir {
                dir: dir.to_path_buf(),
            })
        }
        other => other?,
    };
    let inventory: Inventory = codec::decode(&bytes, MetaRole::Inventory, &inv_path)?;
    let inventory_blake3 = *blake3::hash(&bytes).as_bytes();
    check_host(dir, &inventory)?;
    let damaged = check_listing(dir, &inventory, page_files)?;

    let sizes: HashMap<&str, (FileRole, u64)> = inventory
        .files
        .iter()
        .map(|f| (f.name.as_str(), (f.role, f.size)))
        .collect();
    let mut processes = Vec::new();
    let mut pids = HashSet::new();
    for entry in inventory
        .files
        .iter()
        .filter(|f| f.role == FileRole::Process)
    {
        let path = dir.join(&entry.name);
        let p = read_process(&path, entry)?;
        let invalid = |what: String| ImageError::InvalidProcessFile {
            path: path.clone(),
            pid: p.pid,
            what,
        };
        if entry.name != process_file_name(p.pid) {
            return Err(invalid(format!(
                "it is stored in {:?}, expected {:?}",
                entry.name,
                process_file_name(p.pid)
            )));
        }
        if !pids.insert(p.pid) {
            return Err(invalid("the pid appears twice in the image".into()));
        }
        let page_file_size = match sizes.get(p.pages_file.as_str()) {
            Some((FileRole::Pages, size)) => *size,
            Some((role, _)) => {
                return Err(invalid(format!(
                    "its page file {:?} is listed as {role:?}, not page data",
                    p.pages_file
                )))
            }
            None => {
                return Err(invalid(format!(
                    "its page file {:?} is not listed in the inventory",
                    p.pages_file
                )))
            }
        };
        validate::check(&p, page_file_size, inventory.page_size).map_err(invalid)?;
        processes.push(p);
    }
    if processes.is_empty() {
        return Err(ImageError::Inconsistent {
            dir: dir.to_path_buf(),
            what: "it holds no process".into(),
        });
    }
    if !pids.contains(&inventory.root_pid) {
        return Err(ImageError::Inconsistent {
            dir: dir.to_path_buf(),
            what: format!("the root pid {} has no process record", inventory.root_pid),
        });
    }
    validate::check_tree(inventory.root_pid, &inventory.tree, &processes)
        .and_then(|()| {
            validate::check_shell_job(inventory.shell_job.as_ref(), &inventory.tree, &processes)
        })
        .and_then(|()| validate::check_machine_ttys(&inventory.machine_ttys, &inventory.tree))
        .and_then(|()| validate::check_clocks(&inventory.clocks))
        .map_err(|what| ImageError::Inconsistent {
            dir: dir.to_path_buf(),
            what,
        })?;
    // Tree order: parents before children, so a restore can walk them as listed.
    let order: HashMap<i32, usize> = inventory
        .tree
        .iter()
        .enumerate()
        .map(|(i, t)| (t.pid, i))
        .collect();
    processes.sort_by_key(|p| order[&p.pid]);
    let image = Image {
        dir: dir.to_path_buf(),
        inventory,
        processes,
        inventory_blake3,
    };
    Ok((image, damaged))
}

/// Hashes every page file and compares it with the inventory. Run after [`open_image`].
pub fn verify_pages(dir: &Path, image: &Image) -> Result<(), ImageError> {
    for entry in image
        .inventory
        .files
        .iter()
        .filter(|f| f.role == FileRole::Pages)
    {
        let path = dir.join(&entry.name);
        let file = std::fs::File::open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                ImageError::MissingFile { path: path.clone() }
            } else {
                ImageError::io("open", &path, e)
            }
        })?;
        let mut hasher = blake3::Hasher::new();
        // update_reader reads in large chunks; the count doubles as a size check against a
        // file that changed since open_image.
        hasher
            .update_reader(&file)
            .map_err(|e| ImageError::io("read", &path, e))?;
        if hasher.count() != entry.size {
            return Err(ImageError::SizeMismatch {
                path,
                recorded: entry.size,
                actual: hasher.count(),
            });
        }
        if hasher.finalize().as_bytes() != &entry.blake3 {
            return Err(ImageError::PageDataMismatch { path });
        }
    }
    Ok(())
}

/// Name of the metadata file of process `pid`.
pub fn process_file_name(pid: i32) -> String {
    format!("process-{pid}.img")
}

/// Name of the page file of process `pid`.
pub fn pages_file_name(pid: i32) -> String {
    format!("pages-{pid}.img")
}

fn check_host(dir: &Path, inv: &Inventory) -> Result<(), ImageError> {
    let host = Arch::host();
    if inv.arch != host {
        return Err(ImageError::ArchMismatch {
            dir: dir.to_path_buf(),
            image: inv.arch.name(),
            host: host.name(),
        });
    }
    let host_ps = host_page_size();
    if inv.page_size != host_ps {
        return Err(ImageError::PageSizeMismatch {
            dir: dir.to_path_buf(),
            image: inv.page_size,
            host: host_ps,
        });
    }
    Ok(())
}

/// Every listed file is present with its recorded size, names are safe and unique, and no
/// `.img` file of another dump lies in the directory.
/// Checks that every file the inventory lists is there with its size, and that no stray image
/// file sits beside them. With [`PageFiles::MayBeDamaged`], the problems of page files are
/// returned instead of failing.
fn check_listing(
    dir: &Path,
    inv: &Inventory,
    page_files: PageFiles,
) -> Result<Vec<ImageError>, ImageError> {
    let mut damaged = Vec::new();
    let mut names = HashSet::new();
    for f in &inv.files {
        if check_file_name(&f.name).is_err()
            || f.name == INVENTORY_FILE
            || f.name == crate::workingset::WORKING_SET_FILE
        {
            return Err(ImageError::BadFileName {
                dir: dir.to_path_buf(),
                name: f.name.clone(),
            });
        }
        if !names.insert(f.name.as_str()) {
            return Err(ImageError::Inconsistent {
                dir: dir.to_path_buf(),
                what: format!("the inventory lists {:?} twice", f.name),
            });
        }
        if let Err(problem) = check_listed_file(&dir.join(&f.name), f.size) {
            if f.role == FileRole::Pages && page_files == PageFiles::MayBeDamaged {
                damaged.push(problem);
            } else {
                return Err(problem);
            }
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("list", dir, e))?;
        let name = entry.file_name();
        // Non-image files (a log, a note) may sit beside an image; stray *.img files mean
        // the directory mixes dumps.
        let Some(name) = name.to_str() else { continue };
        // The working set is recorded beside the image, not listed (see crate::workingset).
        if name.ends_with(".img")
            && name != INVENTORY_FILE
            && name != crate::workingset::WORKING_SET_FILE
            && !names.contains(name)
        {
            return Err(ImageError::UnlistedFile { path: entry.path() });
        }
    }
    Ok(damaged)
}

/// The file at `path` exists, is a regular file and has `size` bytes.
fn check_listed_file(path: &Path, size: u64) -> Result<(), ImageError> {
    let path = path.to_path_buf();
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(ImageError::MissingFile { path }),
        Err(e) => return Err(ImageError::io("stat", path, e)),
    };
    if !meta.file_type().is_file() {
        return Err(ImageError::Corrupted {
            path,
            what: "not a regular file".into(),
        });
    }
    if meta.len() != size {
        return Err(ImageError::SizeMismatch {
            path,
            recorded: size,
            actual: meta.len(),
        });
    }
    Ok(())
}

fn read_process(path: &Path, entry: &FileEntry) -> Result<ProcessImage, ImageError> {
    let bytes = codec::read_metadata_file(path)?;
    if bytes.len() as u64 != entry.size {
        return Err(ImageError::SizeMismatch {
            path: path.to_path_buf(),
            recorded: entry.size,
            actual: bytes.len() as u64,
        });
    }
    // The inventory's hash ties the file to this dump; computed beside the decoding (which
    // checks the file's own hash), since a record of many threads is megabytes.
    let (p, whole) = std::thread::scope(|s| {
        let whole = s.spawn(|| blake3::hash(&bytes));
        let p = codec::decode::<ProcessImage>(&bytes, MetaRole::Process, path);
        (p, whole.join().expect("hashing does not panic"))
    });
    let p = p?;
    if whole.as_bytes() != &entry.blake3 {
        return Err(ImageError::Corrupted {
            path: path.to_path_buf(),
            what: "its checksum differs from the one in the inventory".into(),
        });
    }
    Ok(p)
}
