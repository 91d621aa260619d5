//! Unlinked ("ghost") files and directories: a file the process holds open or mapped after it
//! was unlinked (`/proc/PID/fd/N -> PATH (deleted)`, maps `PATH (deleted)`), or a working
//! directory that was removed.
//!
//! Dump: a deleted regular file with no link left (st_nlink 0) becomes a
//! [`FileKind::Ghost`]: its mode, owner, times and size are recorded, and its content is read
//! through `/proc/PID/fd/N` or `/proc/PID/map_files` and stored once in the tree, in the page
//! file of the first process that holds it, holes skipped with SEEK_DATA/SEEK_HOLE (so a
//! sparse file costs only its data). A file with more data than `--ghost-limit` is refused,
//! naming it and the option. A deleted file that still has links (st_nlink > 0: another hard
//! link survives) is reopened through another name if one is found in the same directory,
//! else stored like a ghost. A removed directory (always empty) is a ghost directory.
//!
//! Restore: each ghost is recreated once, before the fork, in the directory it was in (the
//! nearest existing ancestor if that is gone): an O_TMPFILE file (or a uniquely named
//! `.crest-ghost-INO-RANDOM` file where the filesystem has no O_TMPFILE) is sized, filled,
//! given its owner, mode and times, then linked under its original name if that name is free,
//! opened there and unlinked again, so the fd links and maps show `PATH (deleted)` as before.
//! A ghost directory is made, opened and removed again the same way. Every description is a
//! new open of the recreated file through `/proc/self/fd/N`, and every mapping maps it, so
//! several fds, processes and mappings share one file again.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, Metadata};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::images::{FileIdentity, FileKind, Ghost, GhostRun, Image, Vma};
use crate::pages::{MemfdSource, PageDump, PageError, PageSink};
use crate::proc::Proc;
use crate::restore::RestoreError;

/// Default `--ghost-limit`: the most data (bytes in data extents, holes not counted) one
/// unlinked file may hold for a dump to store it. CRIU's default is 1 MiB; crest's is larger
/// because programs map unlinked shared libraries (JNI libraries unpacked to /tmp and deleted
/// at once, a few MiB each), whose content a restore cannot do without; a larger file is more
/// likely scratch data a user wants to hear about before it lands in the image.
pub const DEFAULT_LIMIT: u64 = 16 << 20;

/// Parses a `--ghost-limit` SIZE: bytes, or a number with a K, M or G suffix (powers of 1024;
/// "KiB", "MB" and the like are accepted as the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16M, 1G, 4096)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{s:?} is not a size (e.g. 16M, 1G, 4096)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// What a deleted file held by a process is, for the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Unlinked (or linked under a name crest cannot find): stored and recreated.
    Ghost(Box<FileIdentity>),
    /// Still linked under this other name (a hard link in the same directory): reopened
    /// through it like any file.
    Linked(PathBuf),
}

/// Classifies the deleted file `md` (stat of the process's fd or mapping), shown as `path`
/// (without " (deleted)"). `open` opens it for reading (through /proc); it is called only for
/// a regular file, whose data is measured against `limit`. The error is the reason, for a
/// refusal.
pub fn classify(
    md: &Metadata,
    path: &Path,
    limit: u64,
    open: impl FnOnce() -> std::io::Result<File>,
) -> Result<Found, String> {
    let shown = path.display();
    let t = md.file_type();
    if !t.is_file() && !t.is_dir() {
        return Err(format!(
            "the deleted file {shown} is {}, which crest cannot recreate",
            type_name(md)
        ));
    }
    let Some(text) = path.to_str().filter(|p| p.starts_with('/')) else {
        return Err(format!(
            "the deleted file {shown} has no absolute UTF-8 path to recreate it at"
        ));
    };
    if path.file_name().is_none() {
        return Err(format!(
            "the deleted file {shown} has no name to recreate it under"
        ));
    }
    // A /proc/PID entry of a process that has ended: nothing can be made there.
    if text.starts_with("/proc/") {
        return Err(format!(
            "{shown} is a /proc entry of a process that has ended, which crest cannot make \
             again"
        ));
    }
    if t.is_file() && md.nlink() > 0 {
        if let Some(other) = other_name(path, md) {
            return Ok(Found::Linked(other));
        }
    }
    if t.is_file() {
        let file = open().map_err(|e| format!("cannot open the deleted file {shown}: {e}"))?;
        let data = data_bytes(&file, md.size())
            .map_err(|e| format!("cannot read the deleted file {shown}: {e}"))?;
        if data > limit {
            return Err(format!(
                "the deleted file {shown} holds {data} bytes of data, more than the limit of \
                 {limit} bytes for the content of a deleted file; raise it with --ghost-limit \
                 SIZE (e.g. --ghost-limit {})",
                suggest(data)
            ));
        }
    }
    Ok(Found::Ghost(Box::new(identity(md, text))))
}

/// What kind of file `md` is, for a message.
fn type_name(md: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket file"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "of an unknown type"
    }
}

/// A round limit at least `data` bytes, in the spelling `--ghost-limit` accepts.
fn suggest(data: u64) -> String {
    let mib = data.div_ceil(1 << 20);
    format!("{mib}M")
}

/// The image's description of the unlinked file `md` that was at `path`.
pub fn identity(md: &Metadata, path: &str) -> FileIdentity {
    let kind = FileKind::Ghost(Ghost {
        uid: md.uid(),
        gid: md.gid(),
        atime_sec: md.atime(),
        atime_nsec: md.atime_nsec(),
    });
    let mut ident = super::stat_identity(path.to_string(), kind, md);
    if md.is_dir() {
        ident.size = 0;
    }
    ident
}

/// Bytes of `file` (of `size` bytes) in data extents: what storing it costs. Holes are found
/// with SEEK_DATA/SEEK_HOLE; a filesystem without them reports the whole file as data.
pub fn data_bytes(file: &File, size: u64) -> std::io::Result<u64> {
    let fd = file.as_raw_fd();
    let mut total = 0u64;
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a descriptor we own; no pointers.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(size));
        total += hole.saturating_sub(data);
        if hole <= pos {
            break;
        }
        pos = hole;
    }
    Ok(total)
}

/// Another name of the inode `md` in the directory of `path`, if it has one.
pub fn other_name(path: &Path, md: &Metadata) -> Option<PathBuf> {
    let dir = path.parent()?;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(m) = entry.metadata() else { continue };
        if m.dev() == md.dev() && m.ino() == md.ino() && m.is_file() {
            let p = entry.path();
            // A name the path check of the dump can use (valid UTF-8).
            if p.to_str().is_some() {
                return Some(p);
            }
        }
    }
    None
}

/// An unlinked regular file whose content a process stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentArea {
    /// Index in the process's files.
    pub file: u32,
    pub dev: u64,
    pub ino: u64,
    pub path: String,
    pub size: u64,
    pub source: MemfdSource,
}

/// The regular ghost files of a process, each once, sorted by file index: read through an fd
/// on it when the process has one, else through one of its mappings.
pub fn content_areas(
    files: &[FileIdentity],
    descriptions: impl Iterator<Item = (u32, i32)>,
    vmas: &[Vma],
) -> Vec<ContentArea> {
    let mut sources: Vec<(u32, MemfdSource)> = descriptions
        .map(|(file, fd)| (file, MemfdSource::Fd(fd)))
        .collect();
    sources.extend(MemfdSource::mappings(vmas));
    let mut out: Vec<ContentArea> = Vec::new();
    for (file, source) in sources {
        let Some(ident) = files.get(file as usize) else {
            continue;
        };
        if !matches!(ident.kind, FileKind::Ghost(_)) || ident.mode & libc::S_IFMT != libc::S_IFREG {
            continue;
        }
        if out.iter().any(|a| a.file == file) {
            continue;
        }
        out.push(ContentArea {
            file,
            dev: ident.dev,
            ino: ident.ino,
            path: ident.path.clone(),
            size: ident.size,
            source,
        });
    }
    out.sort_by_key(|a| a.file);
    out
}

/// Stores the content of the ghost files `areas` of the stopped process into `out`, after what
/// is already there, adding their runs and counts to `dump`.
pub fn dump_content<S: PageSink>(
    proc: &Proc,
    areas: &[ContentArea],
    page_size: u64,
    out: &mut S,
    dump: &mut PageDump,
) -> Result<(), PageError> {
    for a in areas {
        let (file, via) = match a.source {
            MemfdSource::Fd(fd) => (proc.reopen_fd_readonly(fd)?, format!("fd {fd}")),
            MemfdSource::Mapping { start, end } => (
                proc.open_map_file(start, end)?,
                format!("its mapping {start:#x}-{end:#x}"),
            ),
        };
        let runs = crate::pages::dump_file_content(
            &file,
            a.size,
            page_size,
            out,
            &mut dump.counts,
            |err| PageError::Ghost {
                pid: proc.pid(),
                path: a.path.clone(),
                via: via.clone(),
                err,
            },
        )?;
        dump.ghost_runs.extend(runs.into_iter().map(|r| GhostRun {
            file: a.file,
            offset: r.vaddr,
            npages: r.npages,
            file_offset: r.file_offset,
        }));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------------------------

/// The tree's recreated ghosts, by (device, inode) at dump time; each descriptor is crest's
/// own (read-only), numbered at `base` or above.
pub type Ghosts = HashMap<(u64, u64), OwnedFd>;

/// Recreates every ghost the image's processes hold, each once.
pub fn create_all(image: &Image, base: RawFd) -> Result<Ghosts, RestoreError> {
    let mut out = Ghosts::new();
    for p in &image.processes {
        for f in &p.files {
            let FileKind::Ghost(g) = &f.kind else {
                continue;
            };
            if out.contains_key(&(f.dev, f.ino)) {
                continue;
            }
            let fd = if f.mode & libc::S_IFMT == libc::S_IFDIR {
                recreate_dir(f, g)?
            } else {
                read_only(
                    recreate_file(f, g, |file| write_content(image, f, file))?,
                    f,
                )?
            };
            let fd = above(fd, base, &f.path)?;
            out.insert((f.dev, f.ino), fd);
        }
    }
    Ok(out)
}

/// A read-only descriptor of the filled file `fd` instead of the read-write one that wrote
/// it: every description and mapping is opened anew through it, and no writable open of the
/// file may be left in crest, since the kernel refuses a file open for writing as a process's
/// exe (PR_SET_MM_MAP exe_fd of a deleted executable).
fn read_only(fd: OwnedFd, f: &FileIdentity) -> Result<OwnedFd, RestoreError> {
    let path = cstr(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes(),
        &f.path,
    )?;
    // SAFETY: open of a NUL-terminated path.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(file_err(
            &f.path,
            format!(
                "was recreated but cannot be opened again read-only: {}",
                last()
            ),
        ));
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `fd`, moved to `base` or above (close-on-exec) if it is below.
fn above(fd: OwnedFd, base: RawFd, path: &str) -> Result<OwnedFd, RestoreError> {
    if fd.as_raw_fd() >= base {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd has no memory-safety preconditions.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base) };
    if moved < 0 {
        return Err(RestoreError::Os {
            what: format!("moving the descriptor of the deleted file {path} above fd {base}"),
            source: last(),
        });
    }
    // SAFETY: moved is a new descriptor we own; `fd` is closed when dropped.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn file_err(path: &str, problem: String) -> RestoreError {
    RestoreError::File {
        path: path.to_string(),
        problem,
    }
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstr(bytes: &[u8], path: &str) -> Result<CString, RestoreError> {
    CString::new(bytes)
        .map_err(|_| RestoreError::BadImage(format!("path {path:?} holds a NUL byte")))
}

/// Writes the stored content of ghost `f` into `file`, from whichever process stored it.
fn write_content(image: &Image, f: &FileIdentity, file: &File) -> Result<(), RestoreError> {
    let page = crate::arch::page_size();
    for q in &image.processes {
        let mine: Vec<u32> = q
            .files
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                matches!(g.kind, FileKind::Ghost(_)) && (g.dev, g.ino) == (f.dev, f.ino)
            })
            .map(|(i, _)| i as u32)
            .collect();
        let runs: Vec<&GhostRun> = q
            .ghost_runs
            .iter()
            .filter(|r| mine.contains(&r.file))
            .collect();
        if runs.is_empty() {
            continue;
        }
        let pages = crate::restore::open_page_file(image, q)?;
        let mut buf = Vec::new();
        for r in runs {
            // Validated: inside the file's size rounded up to pages. The last page is cut at
            // the size, so writing it does not grow the file.
            let len = (r.npages * page).min(f.size.saturating_sub(r.offset));
            buf.resize(len as usize, 0);
            pages
                .read_exact_at(&mut buf, r.file_offset)
                .map_err(|e| RestoreError::Os {
                    what: format!("reading the stored content of the deleted file {}", f.path),
                    source: e,
                })?;
            file.write_all_at(&buf, r.offset)
                .map_err(|e| file_err(&f.path, format!("cannot be refilled: {e}")))?;
        }
        return Ok(());
    }
    Ok(())
}

/// Where a ghost that was at `path` is recreated: its directory, or the nearest ancestor of it
/// that still exists; and whether that is its own directory (so its own name can be used).
fn home(path: &str) -> Result<(PathBuf, bool), RestoreError> {
    let parent = Path::new(path)
        .parent()
        .ok_or_else(|| RestoreError::BadImage(format!("deleted file {path:?} has no directory")))?;
    let mut dir = parent;
    loop {
        if dir.is_dir() {
            return Ok((dir.to_path_buf(), dir == parent));
        }
        dir = dir.parent().ok_or_else(|| {
            file_err(
                path,
                "cannot be recreated: no directory above it exists".into(),
            )
        })?;
    }
}

fn open_dir(dir: &Path, path: &str) -> Result<OwnedFd, RestoreError> {
    let c = cstr(dir.as_os_str().as_bytes(), path)?;
    // SAFETY: c is a valid C string.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(file_err(
            path,
            format!(
                "cannot be recreated: its directory {} cannot be opened: {}",
                dir.display(),
                last()
            ),
        ));
    }
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A name no one uses yet, for a ghost being made in a directory.
fn temp_name(ino: u64) -> CString {
    CString::new(format!(
        ".crest-ghost-{ino}-{:016x}",
        super::unique_suffix()
    ))
    .expect("no NUL in a formatted name")
}

/// Gives `fd` the owner, mode and times of ghost `f`.
fn set_attributes(fd: &OwnedFd, f: &FileIdentity, g: &Ghost) -> Result<(), RestoreError> {
    let fail = |what: &str| file_err(&f.path, format!("cannot be given its {what}: {}", last()));
    // SAFETY: fchown on a descriptor we own. Before fchmod: a chown clears set-id bits.
    if unsafe { libc::fchown(fd.as_raw_fd(), g.uid, g.gid) } != 0 {
        return Err(fail("owner"));
    }
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), f.mode & 0o7777) } != 0 {
        return Err(fail("mode"));
    }
    let times = [
        libc::timespec {
            tv_sec: g.atime_sec,
            tv_nsec: g.atime_nsec,
        },
        libc::timespec {
            tv_sec: f.mtime_sec,
            tv_nsec: f.mtime_nsec,
        },
    ];
    // SAFETY: futimens on a descriptor we own with two valid timespecs.
    if unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(fail("access and modification times"));
    }
    Ok(())
}

/// Recreates the regular ghost `f` (see the module documentation); `fill` writes its content
/// into the sized file.
fn recreate_file(
    f: &FileIdentity,
    g: &Ghost,
    fill: impl FnOnce(&File) -> Result<(), RestoreError>,
) -> Result<OwnedFd, RestoreError> {
    let path = f.path.as_str();
    let (dir, own_dir) = home(path)?;
    let dirfd = open_dir(&dir, path)?;
    let flags = libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: a valid C string relative to a directory we own.
    let raw = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            c".".as_ptr(),
            flags | libc::O_TMPFILE,
            0o600,
        )
    };
    let (fd, temp) = if raw >= 0 {
        // SAFETY: raw is a fresh descriptor we own.
        (unsafe { OwnedFd::from_raw_fd(raw) }, None)
    } else {
        // No O_TMPFILE on this filesystem: a named file, unlinked below.
        let name = temp_name(f.ino);
        // SAFETY: as above.
        let raw = unsafe {
            libc::openat(
                dirfd.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
        };
        if raw < 0 {
            return Err(file_err(
                path,
                format!("cannot be recreated in {}: {}", dir.display(), last()),
            ));
        }
        // SAFETY: raw is a fresh descriptor we own.
        (unsafe { OwnedFd::from_raw_fd(raw) }, Some(name))
    };
    let unlink_temp = |name: &Option<CString>| {
        if let Some(name) = name {
            // SAFETY: a valid C string relative to a directory we own.
            unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), 0) };
        }
    };
    let filled = (|| {
        let file = File::from(fd.try_clone().map_err(|e| RestoreError::Os {
            what: format!("duplicating the descriptor of the recreated {path}"),
            source: e,
        })?);
        file.set_len(f.size)
            .map_err(|e| file_err(path, format!("cannot be sized to {} bytes: {e}", f.size)))?;
        fill(&file)?;
        set_attributes(&fd, f, g)
    })();
    if let Err(e) = filled {
        unlink_temp(&temp);
        return Err(e);
    }
    let named = if own_dir {
        take_own_name(&dirfd, &fd, temp.as_deref(), f)?
    } else {
        None
    };
    unlink_temp(&temp);
    let fd = named.unwrap_or(fd);
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| file_err(path, format!("cannot be examined: {e}")))?;
    if st.st_nlink != 0 {
        return Err(file_err(
            path,
            format!("was recreated but is still linked ({} links)", st.st_nlink),
        ));
    }
    Ok(fd)
}

/// Links the new file `fd` (named `temp` in `dirfd`, or an O_TMPFILE file) under ghost `f`'s
/// own name if that name is free, opens it there and unlinks it again: the descriptor returned
/// shows the original path (" (deleted)"). `None` when the name is taken (the file keeps the
/// name it has).
fn take_own_name(
    dirfd: &OwnedFd,
    fd: &OwnedFd,
    temp: Option<&std::ffi::CStr>,
    f: &FileIdentity,
) -> Result<Option<OwnedFd>, RestoreError> {
    let path = f.path.as_str();
    let name = Path::new(path).file_name().expect("checked by home");
    let cname = cstr(name.as_bytes(), path)?;
    let linked = match temp {
        // SAFETY: valid C strings relative to a directory we own.
        Some(t) => unsafe {
            libc::linkat(
                dirfd.as_raw_fd(),
                t.as_ptr(),
                dirfd.as_raw_fd(),
                cname.as_ptr(),
                0,
            )
        },
        None => {
            let src = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes(), path)?;
            // SAFETY: valid C strings; AT_SYMLINK_FOLLOW links the file the magic link names.
            unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    src.as_ptr(),
                    dirfd.as_raw_fd(),
                    cname.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            }
        }
    };
    if linked != 0 {
        // Taken by another file now (or linking is not allowed here): keep the other name.
        return Ok(None);
    }
    // SAFETY: a valid C string relative to a directory we own.
    let raw = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            cname.as_ptr(),
            libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    let opened = (raw >= 0).then(|| {
        // SAFETY: raw is a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(raw) }
    });
    let ours = nix::sys::stat::fstat(fd).map(|s| s.st_ino).ok();
    let same = opened
        .as_ref()
        .and_then(|o| nix::sys::stat::fstat(o).ok())
        .is_some_and(|s| Some(s.st_ino) == ours);
    // The name is ours (linked just now): remove it again, whatever happened since.
    let at_name = nix::sys::stat::fstatat(
        dirfd,
        cname.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()
    .map(|s| s.st_ino);
    if at_name == ours {
        // SAFETY: a valid C string relative to a directory we own.
        if unsafe { libc::unlinkat(dirfd.as_raw_fd(), cname.as_ptr(), 0) } != 0 {
            return Err(file_err(
                path,
                format!("was recreated but cannot be unlinked again: {}", last()),
            ));
        }
    }
    Ok(if same { opened } else { None })
}

/// Recreates the ghost directory `f`: made under its own name if free (else a temporary
/// one), opened, and removed again.
fn recreate_dir(f: &FileIdentity, g: &Ghost) -> Result<OwnedFd, RestoreError> {
    let path = f.path.as_str();
    let (dir, own_dir) = home(path)?;
    let dirfd = open_dir(&dir, path)?;
    let own = cstr(
        Path::new(path)
            .file_name()
            .expect("checked by home")
            .as_bytes(),
        path,
    )?;
    let mut name = if own_dir { own } else { temp_name(f.ino) };
    // SAFETY: a valid C string relative to a directory we own.
    if unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
        if !own_dir || last().raw_os_error() != Some(libc::EEXIST) {
            return Err(file_err(
                path,
                format!("cannot be recreated as a directory: {}", last()),
            ));
        }
        name = temp_name(f.ino);
        // SAFETY: as above.
        if unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
            return Err(file_err(
                path,
                format!("cannot be recreated as a directory: {}", last()),
            ));
        }
    }
    // SAFETY: as above.
    let raw = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    let opened = if raw >= 0 {
        // SAFETY: raw is a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    } else {
        Err(file_err(
            path,
            format!(
                "was recreated as a directory but cannot be opened: {}",
                last()
            ),
        ))
    };
    let attributes = opened
        .as_ref()
        .map_err(|_| ())
        .map(|fd| set_attributes(fd, f, g));
    // SAFETY: as above; removes the (empty) directory we made.
    let removed = unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
    let fd = opened?;
    if let Ok(Err(e)) = attributes {
        return Err(e);
    }
    if removed != 0 {
        return Err(file_err(
            path,
            format!(
                "was recreated as a directory but cannot be removed again: {}",
                last()
            ),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests;
