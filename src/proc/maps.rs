//! `/proc/PID/smaps`: the memory areas with their VmFlags, and `/proc/self/maps` for the restore
//! side.

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath, MemoryMap, VmFlags};

use super::{Proc, ProcError};

/// What the name column of a maps line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapName {
    /// No name: private or shared anonymous memory (or a private /dev/zero mapping).
    Anonymous,
    /// `[heap]`.
    Heap,
    /// `[stack]` (also the obsolete `[stack:TID]`).
    Stack,
    /// `[anon:NAME]`: anonymous memory named with PR_SET_VMA_ANON_NAME.
    AnonNamed(String),
    /// `[anon_shmem:NAME]`: named shared anonymous memory.
    AnonShmemNamed(String),
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`, `[vvar_vclock]` or any other `[vvar*]` piece (the name without brackets).
    Vvar(String),
    /// `[vsyscall]`.
    Vsyscall,
    /// `/SYSV<key> (deleted)`: a SysV shared memory segment.
    SysvShm(i32),
    /// A file path; `deleted` when the kernel appended " (deleted)" (the suffix is removed from
    /// `path`).
    Path { path: PathBuf, deleted: bool },
    /// Any other bracketed pseudo-name (`[uprobes]`, ...), without the brackets.
    Other(String),
}

/// One line of `/proc/PID/smaps` with its VmFlags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` in the perms column: MAP_SHARED.
    pub shared: bool,
    /// File offset (for shmem: the offset inside the shared object).
    pub offset: u64,
    /// Device (major, minor) and inode of the backing file; (0, 0) and 0 for anonymous memory.
    pub dev: (i32, i32),
    pub inode: u64,
    pub name: MapName,
    /// The name exactly as maps shows it (a path, `[heap]`, `[anon:x]`, or empty).
    pub display_name: String,
    pub vm_flags: VmFlags,
    /// The VmFlags codes exactly as smaps prints them, unknown ones included (empty when read
    /// from maps).
    pub flag_codes: Vec<String>,
}

/// Address range and name of one of crest's own mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRange {
    pub start: u64,
    pub end: u64,
    /// The name as maps shows it (path, `[vdso]`, ... or empty).
    pub name: String,
}

const DELETED: &str = " (deleted)";

fn classify(path: &MMapPath) -> (MapName, String) {
    match path {
        MMapPath::Anonymous => (MapName::Anonymous, String::new()),
        MMapPath::Heap => (MapName::Heap, "[heap]".into()),
        MMapPath::Stack => (MapName::Stack, "[stack]".into()),
        MMapPath::TStack(tid) => (MapName::Stack, format!("[stack:{tid}]")),
        MMapPath::Vdso => (MapName::Vdso, "[vdso]".into()),
        MMapPath::Vvar => (MapName::Vvar("vvar".into()), "[vvar]".into()),
        MMapPath::Vsyscall => (MapName::Vsyscall, "[vsyscall]".into()),
        MMapPath::Rollup => (MapName::Other("rollup".into()), "[rollup]".into()),
        MMapPath::Vsys(key) => (MapName::SysvShm(*key), format!("/SYSV{key:08x}{DELETED}")),
        MMapPath::Other(s) => {
            let display = format!("[{s}]");
            let name = if s.starts_with("vvar") {
                MapName::Vvar(s.clone())
            } else if let Some(n) = s.strip_prefix("anon_shmem:") {
                MapName::AnonShmemNamed(n.to_string())
            } else if let Some(n) = s.strip_prefix("anon:") {
                MapName::AnonNamed(n.to_string())
            } else {
                MapName::Other(s.clone())
            };
            (name, display)
        }
        MMapPath::Path(p) => {
            let display = p.to_string_lossy().into_owned();
            let (path, deleted) = match display.strip_suffix(DELETED) {
                Some(stripped) => (PathBuf::from(stripped), true),
                None => (p.clone(), false),
            };
            (MapName::Path { path, deleted }, display)
        }
    }
}

fn convert(m: MemoryMap) -> MapEntry {
    let (name, display_name) = classify(&m.pathname);
    MapEntry {
        start: m.address.0,
        end: m.address.1,
        read: m.perms.contains(MMPermissions::READ),
        write: m.perms.contains(MMPermissions::WRITE),
        exec: m.perms.contains(MMPermissions::EXECUTE),
        shared: m.perms.contains(MMPermissions::SHARED),
        offset: m.offset,
        dev: m.dev,
        inode: m.inode,
        name,
        display_name,
        vm_flags: m.extension.vm_flags,
        flag_codes: Vec::new(),
    }
}

impl Proc {
    /// Every memory area of the process, in address order, from `/proc/PID/maps` (cheaper than
    /// smaps; `vm_flags` is empty).
    pub fn maps(&self) -> Result<Vec<MapEntry>, ProcError> {
        let maps = self
            .proc
            .maps()
            .map_err(|e| ProcError::procfs(self.pid, "maps", e))?;
        Ok(maps.into_iter().map(convert).collect())
    }

    /// Every memory area of the process, in address order, from `/proc/PID/smaps`.
    pub fn smaps(&self) -> Result<Vec<MapEntry>, ProcError> {
        let maps = self
            .proc
            .smaps()
            .map_err(|e| ProcError::procfs(self.pid, "smaps", e))?;
        let mut entries: Vec<MapEntry> = maps.into_iter().map(convert).collect();
        // The process is stopped while crest reads it, so both reads see the same mappings.
        let codes: std::collections::HashMap<u64, Vec<String>> =
            self.smaps_vmflags()?.into_iter().collect();
        for e in &mut entries {
            e.flag_codes = codes
                .get(&e.start)
                .cloned()
                .ok_or_else(|| ProcError::Parse {
                    path: format!("/proc/{}/smaps", self.pid),
                    detail: format!("no VmFlags line for the mapping at {:#x}", e.start),
                })?;
        }
        Ok(entries)
    }
}

/// The calling process's own mappings (start, end, name), from `/proc/self/maps`.
pub fn own_maps() -> Result<Vec<MapRange>, ProcError> {
    let me = procfs::process::Process::myself().map_err(|e| ProcError::Procfs {
        path: "/proc/self".into(),
        err: e,
    })?;
    let maps = me.maps().map_err(|e| ProcError::Procfs {
        path: "/proc/self/maps".into(),
        err: e,
    })?;
    Ok(maps
        .into_iter()
        .map(|m| {
            let (_, name) = classify(&m.pathname);
            MapRange {
                start: m.address.0,
                end: m.address.1,
                name,
            }
        })
        .collect())
}
