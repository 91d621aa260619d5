//! The memory areas of the process (`/proc/PID/smaps` + `map_files`) as image [`Vma`]s, and
//! the list of areas whose content the page dump must save.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::images::{Vma, VmaBacking, VmaFlags, PROT_EXEC, PROT_READ, PROT_WRITE};
use crate::pages::{Area, AreaKind};
use crate::proc::{MapEntry, MapName, Proc, ProcError, VmFlags};
use crate::ptrace;

use super::files::{file_kind, same_inode, FileTable};
use super::problems::Problems;
use super::DumpError;

/// What the VMA scan found.
#[derive(Debug)]
pub struct Collected {
    pub vmas: Vec<Vma>,
    /// Areas whose pages are to be saved, ascending.
    pub areas: Vec<Area>,
    /// BLAKE3 of the `[vdso]` contents.
    pub vdso_blake3: Option<[u8; 32]>,
    /// The memfds the process holds (mapped or open) whose content is to be saved, sorted by
    /// inode; filled once the fds are collected too.
    pub memfds: Vec<crate::pages::MemfdArea>,
    /// The SysV shared memory segments the process attaches (sysv.rs); after the tree-wide
    /// resolve, only those this process stores.
    pub sysv: Vec<super::sysv::SysvArea>,
    /// The unlinked files the process holds whose content is to be saved, by file index;
    /// filled once the fds are collected too.
    pub ghosts: Vec<crate::files::ghost::ContentArea>,
    /// (inode, start) of each AIO ring the process maps: a ring mapped by two processes was
    /// inherited by fork, and only one of them has its context ([`super::shared`]).
    pub aio_rings: Vec<(u64, u64)>,
}

/// The VMA's VmFlags as the image records them; refused when one cannot be restored. The
/// vDSO and vvar pieces are the restoring kernel's own, moved into place: their flags are
/// whatever that kernel gives them.
fn flags(pid: i32, m: &MapEntry, backing: &VmaBacking) -> Result<VmaFlags, DumpError> {
    if matches!(
        backing,
        VmaBacking::Vdso | VmaBacking::Vvar | VmaBacking::AioRing(_)
    ) {
        // An AIO ring's flags were checked by files::aio::collect.
        return Ok(VmaFlags::default());
    }
    let shared_file = m.shared && matches!(backing, VmaBacking::File { .. });
    crate::pstate::vmflags::classify(&m.flag_codes, shared_file)
        .map_err(|why| unsupported(pid, m, why))
}

fn prot(m: &MapEntry) -> u32 {
    (if m.read { PROT_READ } else { 0 })
        | (if m.write { PROT_WRITE } else { 0 })
        | (if m.exec { PROT_EXEC } else { 0 })
}

/// How one maps entry is dumped.
enum Plan {
    Skip,
    Anonymous {
        shared: bool,
    },
    File(PathBuf),
    /// A shared writable mapping of a file whose content goes into the image.
    FileContent(PathBuf),
    /// A mapping of a memfd (its name).
    Memfd(String),
    /// A SysV shared memory attachment.
    SysvShm,
    /// A mapping of a file that was deleted (its path without " (deleted)").
    Deleted(PathBuf),
    Vdso,
    Vvar,
    /// A private mapping of a crest page file (a `--pages map` restore, [`crate::mapped`]):
    /// dumped as private anonymous memory, every page stored.
    ImagePages,
    /// The ring of an AIO context (files/aio.rs).
    AioRing,
    /// A private mapping of a shared anonymous object (opened through /proc/PID/map_files):
    /// like a private file mapping whose file is the object.
    PrivateOfShared,
}

/// Decides from the name and flags alone; refuses what cannot be restored.
fn plan(pid: i32, m: &MapEntry) -> Result<Plan, DumpError> {
    let refuse = |why: String| unsupported(pid, m, why);
    if m.vm_flags.contains(VmFlags::HT) {
        return Err(refuse("hugetlb memory cannot be dumped yet".into()));
    }
    // vvar pages are PFN-mapped by the kernel itself; everything else so mapped is a device.
    if m.vm_flags.intersects(VmFlags::IO | VmFlags::PF) && !matches!(m.name, MapName::Vvar(_)) {
        return Err(refuse(
            "it maps device memory (VM_IO/VM_PFNMAP), which cannot be restored".into(),
        ));
    }
    Ok(match &m.name {
        MapName::Vsyscall => Plan::Skip,
        MapName::Vdso => Plan::Vdso,
        MapName::Vvar(_) => Plan::Vvar,
        MapName::Anonymous | MapName::Heap | MapName::Stack | MapName::AnonNamed(_) => {
            Plan::Anonymous { shared: m.shared }
        }
        MapName::AnonShmemNamed(_) => Plan::Anonymous { shared: true },
        MapName::SysvShm(_) => Plan::SysvShm,
        MapName::Other(name) if name == "uprobes" => {
            return Err(refuse(
                "uprobes are active in this process; they cannot be restored".into(),
            ))
        }
        MapName::Other(name) => return Err(refuse(format!("unknown special mapping [{name}]"))),
        MapName::Path { path, deleted } => {
            let p = path.to_string_lossy();
            if p == "/[aio]" {
                // The ring of an io_setup(2) context: an anonymous aio inode (fs/aio.c).
                return Ok(Plan::AioRing);
            }
            if !m.shared && crate::mapped::is_crest_page_file(path, *deleted) {
                return Ok(Plan::ImagePages);
            }
            if p.starts_with("/memfd:") && *deleted {
                return Ok(Plan::Memfd(super::memfd::name_from(&p)));
            }
            if m.shared && m.write && is_perf_data(path, pid) {
                // Stored whole, so it does not matter that another JVM deleted it already.
                Plan::FileContent(path.clone())
            } else if *deleted && p == "/dev/zero" && m.shared {
                // MAP_SHARED|MAP_ANONYMOUS: the kernel backs it with a shmem file it names
                // "dev/zero" (mm/shmem.c, shmem_zero_setup).
                Plan::Anonymous { shared: true }
            } else if *deleted && p == "/dev/zero" {
                // MAP_PRIVATE of a shared anonymous area's object (opened through
                // /proc/PID/map_files): its untouched pages show the object's current content,
                // its written ones are the process's own (stored like a private file mapping's).
                Plan::PrivateOfShared
            } else if *deleted {
                Plan::Deleted(path.clone())
            } else if p == "/dev/zero" && !m.shared {
                // A private /dev/zero mapping is plain anonymous memory (drivers/char/mem.c).
                Plan::Anonymous { shared: false }
            } else {
                Plan::File(path.clone())
            }
        }
    })
}

/// Whether `path` is HotSpot's performance-data file of process `pid`:
/// `<tmpdir>/hsperfdata_<user>/<pid>` (src/hotspot/os/posix/perfMemory_posix.cpp). The JVM
/// writes its counters there through a shared mapping for as long as it runs, and a JVM that
/// starts later deletes the files of pids it finds dead — as a dumped JVM's pid is — so its
/// content goes into the image instead of being checked at restore.
pub fn is_perf_data(path: &Path, pid: i32) -> bool {
    let named_pid = path.file_name().and_then(|n| n.to_str()) == Some(&pid.to_string());
    let in_perf_dir = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() > "hsperfdata_".len() && n.starts_with("hsperfdata_"));
    named_pid && in_perf_dir && path.is_absolute()
}

/// Identity of the file behind a mapping whose content the image stores: fstat of the exact
/// file through map_files (the path may be gone already).
fn content_file(
    proc: &Proc,
    m: &MapEntry,
    path: &Path,
    files: &mut FileTable,
) -> Result<u32, DumpError> {
    let refuse = |why: String| unsupported(proc.pid(), m, why);
    let md = proc
        .open_map_file(m.start, m.end)?
        .metadata()
        .map_err(|e| refuse(format!("cannot fstat the mapped file: {e}")))?;
    files
        .add_content_in_image(path, &md)
        .map_err(|why| refuse(format!("the mapped file cannot be recorded: {why}")))
}

/// Identity of the file behind a file mapping: fstat of the exact file through map_files,
/// checked against the path a restore will open.
fn mapped_file(
    proc: &Proc,
    m: &MapEntry,
    path: &Path,
    files: &mut FileTable,
) -> Result<u32, DumpError> {
    let refuse = |why: String| unsupported(proc.pid(), m, why);
    if path.to_str().is_some_and(|p| p.starts_with("socket:[")) {
        return Err(refuse(
            "a socket mapped into memory (a packet socket's ring, PACKET_RX_RING / \
             PACKET_TX_RING with mmap); crest restores packet sockets with their rings but \
             cannot map a ring again yet: unmap it before the dump"
                .into(),
        ));
    }
    let by_path = std::fs::metadata(path)
        .map_err(|e| refuse(format!("cannot stat {}: {e}", path.display())))?;
    let exact = match proc.open_map_file(m.start, m.end) {
        Ok(f) => f
            .metadata()
            .map_err(|e| refuse(format!("cannot fstat the mapped file: {e}")))?,
        // Without CAP_CHECKPOINT_RESTORE map_files cannot be opened; the path, checked
        // against the inode maps shows, is the next best thing.
        Err(ProcError::PermissionDenied { .. }) => {
            if by_path.ino() != m.inode {
                return Err(refuse(format!(
                    "{} is no longer the file that was mapped (inode {} vs {})",
                    path.display(),
                    by_path.ino(),
                    m.inode
                )));
            }
            by_path.clone()
        }
        Err(e) => return Err(e.into()),
    };
    if !same_inode(&exact, &by_path) {
        return Err(refuse(format!(
            "{} was replaced or renamed since it was mapped; a restore would map another file",
            path.display()
        )));
    }
    match file_kind(&exact) {
        Ok(crate::images::FileKind::Regular) => {}
        Ok(_) => {
            return Err(refuse(
                "only regular files can be mapped (this is a device or directory)".into(),
            ))
        }
        Err(why) => return Err(refuse(format!("the mapped file cannot be reopened: {why}"))),
    }
    files
        .add(path, &exact)
        .map_err(|why| refuse(format!("the mapped file cannot be recorded: {why}")))
}

/// Walks smaps and builds the VMA list; vdso contents are hashed on the way. Every mapping
/// crest cannot dump is named, all of them in one refusal.
pub fn collect(proc: &Proc, files: &mut FileTable) -> Result<Collected, DumpError> {
    let maps = proc.smaps()?;
    let mut out = Collected {
        vmas: Vec::with_capacity(maps.len()),
        areas: Vec::new(),
        vdso_blake3: None,
        memfds: Vec::new(),
        sysv: Vec::new(),
        ghosts: Vec::new(),
        aio_rings: Vec::new(),
    };
    let mut problems = Problems::new();
    for m in &maps {
        problems.take(add_vma(proc, m, files, &mut out))?;
    }
    for m in private_views_of_unmapped_memory(&out.vmas) {
        let m = maps
            .iter()
            .find(|e| e.start == m)
            .expect("a VMA comes from a mapping");
        problems.take::<()>(Err(unsupported(
            proc.pid(),
            m,
            "it is a private mapping of a shared anonymous memory object that this process no \
             longer maps shared (unmapped since, or mapped by another process only): the \
             object's content under it cannot be read"
                .into(),
        )))?;
    }
    problems.finish()?;
    Ok(out)
}

/// The starts of the private mappings of shared anonymous objects in `vmas` that reach a part
/// of the object no shared mapping in `vmas` covers. Their unwritten pages show the object,
/// which a restore fills only from shared mappings: such a part would come back as zeros.
fn private_views_of_unmapped_memory(vmas: &[Vma]) -> Vec<u64> {
    let mut shared: Vec<(u64, u64, u64)> = vmas
        .iter()
        .filter(|v| v.shared)
        .filter_map(|v| match v.backing {
            VmaBacking::SharedAnonymous { object, offset, .. } => {
                Some((object, offset, offset + (v.end - v.start)))
            }
            _ => None,
        })
        .collect();
    shared.sort_unstable();
    let covered = |object: u64, from: u64, to: u64| {
        let mut at = from;
        for &(o, a, b) in &shared {
            if o == object && a <= at && at < b {
                at = b;
            }
        }
        at >= to
    };
    vmas.iter()
        .filter(|v| !v.shared)
        .filter_map(|v| match v.backing {
            VmaBacking::SharedAnonymous {
                object,
                offset,
                size,
            } => {
                let to = (offset + (v.end - v.start)).min(size);
                (offset < to && !covered(object, offset, to)).then_some(v.start)
            }
            _ => None,
        })
        .collect()
}

/// Adds mapping `m` to `out`: its VMA, and the area whose pages are to be saved.
fn add_vma(
    proc: &Proc,
    m: &MapEntry,
    files: &mut FileTable,
    out: &mut Collected,
) -> Result<(), DumpError> {
    let pid = proc.pid();
    let plan = plan(pid, m)?;
    // Memory mapped from a crest page file is anonymous memory to the image: no file name.
    let name = if matches!(plan, Plan::ImagePages) {
        String::new()
    } else {
        m.display_name.clone()
    };
    let backing = match plan {
        Plan::Skip => return Ok(()),
        Plan::Vdso => {
            out.vdso_blake3 = Some(hash_vdso(pid, m)?);
            VmaBacking::Vdso
        }
        Plan::Vvar => VmaBacking::Vvar,
        Plan::AioRing => {
            out.aio_rings.push((m.inode, m.start));
            VmaBacking::AioRing(
                crate::files::aio::collect(pid, m.start, m.end, prot(m), &m.flag_codes)
                    .map_err(|why| unsupported(pid, m, why))?,
            )
        }
        Plan::Anonymous { shared: false } => {
            out.areas.push(Area {
                start: m.start,
                end: m.end,
                kind: AreaKind::PrivateAnonymous,
                readable: m.read,
            });
            VmaBacking::Anonymous
        }
        Plan::ImagePages => {
            out.areas.push(Area {
                start: m.start,
                end: m.end,
                kind: AreaKind::ImagePages,
                readable: m.read,
            });
            VmaBacking::Anonymous
        }
        Plan::Anonymous { shared: true } => {
            out.areas.push(Area {
                start: m.start,
                end: m.end,
                kind: AreaKind::SharedAnonymous { offset: m.offset },
                readable: m.read,
            });
            shmem_object(proc, m)?
        }
        Plan::PrivateOfShared => {
            // The object's own pages show as page-cache (shmem) pages and are restored with
            // the object; the written ones are anonymous copies, stored here.
            out.areas.push(Area {
                start: m.start,
                end: m.end,
                kind: AreaKind::PrivateFile,
                readable: m.read,
            });
            shmem_object(proc, m)?
        }
        Plan::File(path) => {
            let file = mapped_file(proc, m, &path, files)?;
            file_backing(m, file, out)
        }
        Plan::Memfd(name) => {
            let file = proc.open_map_file(m.start, m.end)?;
            let ident =
                super::memfd::identity(&file, &name).map_err(|why| unsupported(pid, m, why))?;
            let file = files.add_identity(ident.dev, ident.ino, || Ok::<_, DumpError>(ident))?;
            file_backing(m, file, out)
        }
        Plan::SysvShm => {
            let area = super::sysv::attachment(proc, m).map_err(|why| unsupported(pid, m, why))?;
            let id = area.segment.id;
            out.sysv.push(area);
            VmaBacking::SysvShm { id }
        }
        Plan::Deleted(path) => {
            let exact = proc.open_map_file(m.start, m.end)?;
            let md = exact
                .metadata()
                .map_err(|e| unsupported(pid, m, format!("cannot fstat the mapped file: {e}")))?;
            let found = crate::files::ghost::classify(&md, &path, files.ghost_limit(), || {
                exact.try_clone()
            })
            .map_err(|why| {
                unsupported(
                    pid,
                    m,
                    format!("the mapped file {} has been deleted: {why}", path.display()),
                )
            })?;
            let file = match found {
                crate::files::ghost::Found::Linked(other) => mapped_file(proc, m, &other, files)?,
                crate::files::ghost::Found::Ghost(ident) => {
                    if ident.mode & libc::S_IFMT != libc::S_IFREG {
                        return Err(unsupported(pid, m, "it maps a directory".into()));
                    }
                    files.add_identity(ident.dev, ident.ino, || Ok::<_, DumpError>(*ident))?
                }
            };
            file_backing(m, file, out)
        }
        Plan::FileContent(path) => {
            let file = content_file(proc, m, &path, files)?;
            out.areas.push(Area {
                start: m.start,
                end: m.end,
                kind: AreaKind::SharedFile { offset: m.offset },
                readable: m.read,
            });
            VmaBacking::File {
                file,
                offset: m.offset,
            }
        }
    };
    let flags = flags(pid, m, &backing)?;
    if flags.droppable {
        // MAP_DROPPABLE memory may be dropped by the kernel at any moment and reads back as
        // zeros then; its users must cope. Like CRIU, the image keeps the mapping but not its
        // contents, so it is restored empty (and costs nothing to dump).
        if out.areas.last().is_some_and(|a| a.start == m.start) {
            out.areas.pop();
        }
    }
    out.vmas.push(Vma {
        start: m.start,
        end: m.end,
        prot: prot(m),
        shared: m.shared && !matches!(backing, VmaBacking::Vdso | VmaBacking::Vvar),
        backing,
        flags,
        name,
        guard_ranges: if m.flag_codes.iter().any(|c| c == "gu") {
            guard_ranges(proc, m)?
        } else {
            Vec::new()
        },
    });
    Ok(())
}

/// The backing of `m`, a mapping of file `file` of the table; a private one also gets an area
/// in `out`: only the pages written since mapping (copies on write) are the VMA's own.
fn file_backing(m: &MapEntry, file: u32, out: &mut Collected) -> VmaBacking {
    if !m.shared {
        out.areas.push(Area {
            start: m.start,
            end: m.end,
            kind: AreaKind::PrivateFile,
            readable: m.read,
        });
    }
    VmaBacking::File {
        file,
        offset: m.offset,
    }
}

/// The guard regions of a VMA whose VmFlags show `gu`, from the pagemap. A kernel that shows
/// `gu` but does not mark guard pages in the pagemap (6.13, 6.14) would give none: refused.
fn guard_ranges(proc: &Proc, m: &MapEntry) -> Result<Vec<(u64, u64)>, DumpError> {
    let page = crate::arch::page_size();
    let pagemap = proc.pagemap()?;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut entries = vec![0u64; 4096];
    let mut addr = m.start;
    while addr < m.end {
        let n = (((m.end - addr) / page) as usize).min(entries.len());
        pagemap.read(addr / page, &mut entries[..n])?;
        for (i, e) in entries[..n].iter().enumerate() {
            if e & crate::pages::PM_GUARD_REGION == 0 {
                continue;
            }
            let a = addr + i as u64 * page;
            match ranges.last_mut() {
                Some(last) if last.1 == a => last.1 = a + page,
                _ => ranges.push((a, a + page)),
            }
        }
        addr += n as u64 * page;
    }
    if ranges.is_empty() {
        return Err(unsupported(
            proc.pid(),
            m,
            "it has guard regions (VmFlags `gu`) that the pagemap does not show (Linux 6.15+ \
             marks them); crest cannot tell where they are"
                .into(),
        ));
    }
    Ok(ranges)
}

/// The shmem object behind a shared anonymous mapping: its inode (the same in every process
/// that shares it, since fork shares the object) and size, from fstat through map_files.
fn shmem_object(proc: &Proc, m: &MapEntry) -> Result<VmaBacking, DumpError> {
    let md = proc
        .open_map_file(m.start, m.end)?
        .metadata()
        .map_err(|e| {
            unsupported(
                proc.pid(),
                m,
                format!("cannot fstat its shared memory object: {e}"),
            )
        })?;
    let page = crate::arch::page_size();
    Ok(VmaBacking::SharedAnonymous {
        object: md.ino(),
        size: md.size().div_ceil(page) * page,
        offset: m.offset,
    })
}

/// BLAKE3 of the vDSO's contents, so a restore can tell whether its own vDSO is the same code.
fn hash_vdso(pid: i32, m: &MapEntry) -> Result<[u8; 32], DumpError> {
    let mut buf = vec![0u8; (m.end - m.start) as usize];
    ptrace::read_memory(pid, m.start, &mut buf)
        .map_err(|e| unsupported(pid, m, format!("cannot read the vDSO: {e}")))?;
    Ok(*blake3::hash(&buf).as_bytes())
}

/// The error for a mapping crest cannot dump, naming the process and the mapping.
fn unsupported(pid: i32, m: &MapEntry, why: String) -> DumpError {
    DumpError::UnsupportedMapping {
        pid,
        start: m.start,
        end: m.end,
        name: m.display_name.clone(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_data_is_recognised_by_directory_and_pid() {
        let yes = Path::new("/tmp/hsperfdata_root/4242");
        assert!(is_perf_data(yes, 4242));
        assert!(!is_perf_data(yes, 4243), "another JVM's file");
        assert!(!is_perf_data(Path::new("/tmp/hsperfdata_/4242"), 4242));
        assert!(!is_perf_data(Path::new("/tmp/perfdata_root/4242"), 4242));
        assert!(!is_perf_data(
            Path::new("/tmp/hsperfdata_root/4242.log"),
            4242
        ));
        assert!(!is_perf_data(Path::new("hsperfdata_root/4242"), 4242));
    }
}
