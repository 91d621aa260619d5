//! The content identity of code files (the exe and every file mapped PROT_EXEC), recorded at
//! dump ([`CodeIds`]) and compared at restore ([`check`]) on top of the size/mtime/inode check:
//! a package upgrade can replace a library in place with one of the same size and mtime.
//!
//! The identity is the ELF build-id (NT_GNU_BUILD_ID) when the file has one: every
//! distribution library and executable does, and reading it costs the ELF header, the program
//! headers and the note segments (a few KiB even for a 20 MiB libjvm.so). A file without one
//! is hashed with BLAKE3: whole up to [`CODE_HASH_WHOLE_MAX`] (16 MiB, some tens of ms), else
//! its first [`CODE_HASH_HEAD`] bytes (the headers the loader reads) and the ranges the
//! process maps executable (the code it runs): what a replaced library would change, at a
//! cost bounded by what is mapped. Within one dump each (dev, ino, mtime, size, ranges) is
//! read once, however many processes map it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::images::{
    CodeDigest, CodeId, FileIdentity, FileKind, Vma, VmaBacking, BUILD_ID_MAX, CODE_HASH_HEAD,
    CODE_HASH_WHOLE_MAX, PROT_EXEC,
};

/// NT_GNU_BUILD_ID.
const NT_GNU_BUILD_ID: u32 = 3;
/// Note segments larger than this are not read for a build-id.
const NOTE_MAX: u64 = 1 << 20;

/// The code files of a process, by index into its files: the exe (no range) and each file
/// mapped PROT_EXEC with the byte ranges it maps executable.
pub fn code_files(vmas: &[Vma], exe_file: u32) -> BTreeMap<u32, Vec<(u64, u64)>> {
    let mut out: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    out.entry(exe_file).or_default();
    for v in vmas {
        if let VmaBacking::File { file, offset } = v.backing {
            if v.prot & PROT_EXEC != 0 {
                out.entry(file).or_default().push((offset, v.end - v.start));
            }
        }
    }
    out
}

/// Why a code file's identity could not be read.
#[derive(Debug)]
pub struct CodeError {
    pub path: String,
    pub why: String,
}

/// What makes two reads of a code file the same: dev, ino, mtime (s, ns), size and the ranges
/// mapped executable.
type CodeFileKey = (u64, u64, i64, i64, u64, Vec<(u64, u64)>);

/// Code identities computed during one dump, each file read once.
#[derive(Default)]
pub struct CodeIds {
    cache: HashMap<CodeFileKey, CodeDigest>,
}

impl CodeIds {
    /// The identities of the code files of a process whose files are `files`.
    pub fn process(
        &mut self,
        files: &[FileIdentity],
        vmas: &[Vma],
        exe_file: u32,
    ) -> Result<Vec<CodeId>, CodeError> {
        let mut out = Vec::new();
        for (file, mapped) in code_files(vmas, exe_file) {
            let Some(ident) = files.get(file as usize) else {
                continue;
            };
            // Only files reopened by path and checked: memfds, recreated files are not.
            if ident.kind != FileKind::Regular {
                continue;
            }
            let ranges = ranges_to_hash(ident.size, &mapped);
            let key = (
                ident.dev,
                ident.ino,
                ident.mtime_sec,
                ident.mtime_nsec,
                ident.size,
                ranges.clone(),
            );
            let digest = match self.cache.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let d = read_dumped(ident, &ranges)?;
                    self.cache.insert(key, d.clone());
                    d
                }
            };
            out.push(CodeId { file, digest });
        }
        Ok(out)
    }
}

/// The ranges hashed for a file of `size` bytes without a build-id mapped at `mapped`.
fn ranges_to_hash(size: u64, mapped: &[(u64, u64)]) -> Vec<(u64, u64)> {
    if size == 0 {
        return Vec::new();
    }
    if size <= CODE_HASH_WHOLE_MAX {
        return vec![(0, size)];
    }
    let mut spans: Vec<(u64, u64)> = std::iter::once((0, CODE_HASH_HEAD))
        .chain(mapped.iter().map(|&(o, l)| (o, o.saturating_add(l))))
        .map(|(s, e)| (s.min(size), e.min(size)))
        .filter(|(s, e)| s < e)
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// Opens the file `ident` at its path, checks it is still the dumped inode, and reads its
/// identity (build-id, else a hash of `ranges`).
fn read_dumped(ident: &FileIdentity, ranges: &[(u64, u64)]) -> Result<CodeDigest, CodeError> {
    let err = |why: String| CodeError {
        path: ident.path.clone(),
        why,
    };
    let file = File::open(&ident.path)
        .map_err(|e| err(format!("cannot be opened to read its build-id: {e}")))?;
    let md = file
        .metadata()
        .map_err(|e| err(format!("cannot be examined: {e}")))?;
    if md.dev() != ident.dev || md.ino() != ident.ino {
        return Err(err(
            "was replaced during the dump (its path names another file now)".into(),
        ));
    }
    digest(&file, ranges).map_err(|e| err(format!("cannot be read for its build-id: {e}")))
}

/// The build-id of `file`, else BLAKE3 over `ranges` of it.
pub fn digest(file: &File, ranges: &[(u64, u64)]) -> std::io::Result<CodeDigest> {
    if let Some(id) = build_id(file)? {
        return Ok(CodeDigest::BuildId(id));
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    for &(off, len) in ranges {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], off + done)?;
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    Ok(CodeDigest::Blake3 {
        ranges: ranges.to_vec(),
        hash: *h.finalize().as_bytes(),
    })
}

/// The NT_GNU_BUILD_ID note of the ELF file `file`, if it is ELF and has one.
pub fn build_id(file: &File) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 64];
    let n = read_up_to(file, &mut head, 0)?;
    let Ok(header) = goblin::elf::Elf::parse_header(&head[..n]) else {
        return Ok(None);
    };
    let (Ok(container), Ok(le)) = (header.container(), header.endianness()) else {
        return Ok(None);
    };
    let ctx = goblin::container::Ctx::new(container, le);
    let count = header.e_phnum as usize;
    let table_len = count * header.e_phentsize as usize;
    if count == 0 || table_len > 1 << 20 {
        return Ok(None);
    }
    let mut table = vec![0u8; table_len];
    if read_up_to(file, &mut table, header.e_phoff)? != table_len {
        return Ok(None);
    }
    let Ok(phdrs) = goblin::elf::ProgramHeader::parse(&table, 0, count, ctx) else {
        return Ok(None);
    };
    let big = !le.is_little();
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE)
    {
        if ph.p_filesz == 0 || ph.p_filesz > NOTE_MAX {
            continue;
        }
        let mut notes = vec![0u8; ph.p_filesz as usize];
        if read_up_to(file, &mut notes, ph.p_offset)? != notes.len() {
            continue;
        }
        let align = if ph.p_align == 8 { 8 } else { 4 };
        if let Some(id) = find_build_id(&notes, align, big) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The GNU build-id among the notes `data` (fields and padding aligned to `align`).
fn find_build_id(data: &[u8], align: usize, big: bool) -> Option<Vec<u8>> {
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let up = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let mut at = 0;
    while at + 12 <= data.len() {
        let (namesz, descsz, ty) = (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(up(namesz)?)?;
        let end = desc_at.checked_add(up(descsz)?)?;
        let name = data.get(name_at..name_at + namesz)?;
        if ty == NT_GNU_BUILD_ID && name == b"GNU\0" {
            let desc = data.get(desc_at..desc_at + descsz)?;
            if desc.is_empty() || desc.len() > BUILD_ID_MAX {
                return None;
            }
            return Some(desc.to_vec());
        }
        at = end;
    }
    None
}

/// Reads up to `buf.len()` bytes at `off`; how many there were.
fn read_up_to(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Compares the code file `file` (crest's open descriptor of it) with the identity the
/// dump recorded. The error reads after the file's path: what differs.
pub fn check(file: &File, want: &CodeDigest) -> Result<(), String> {
    let ranges = match want {
        CodeDigest::BuildId(_) => Vec::new(),
        CodeDigest::Blake3 { ranges, .. } => ranges.clone(),
    };
    let got = digest(file, &ranges)
        .map_err(|e| format!("cannot be read to compare its content with the dump's: {e}"))?;
    if &got == want {
        return Ok(());
    }
    let replaced = "the file was replaced in place since the dump (a package upgrade?), keeping \
                    its size and modification time, and the process must not run other code \
                    than it ran";
    Err(match (want, &got) {
        (CodeDigest::BuildId(w), CodeDigest::BuildId(g)) => format!(
            "changed since the dump: its ELF build-id is {} instead of {}: {replaced}",
            hex(g),
            hex(w)
        ),
        (CodeDigest::BuildId(w), _) => format!(
            "changed since the dump: it no longer has ELF build-id {}: {replaced}",
            hex(w)
        ),
        _ => format!("changed since the dump: its content hash differs: {replaced}"),
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ident_of(path: &std::path::Path) -> FileIdentity {
        let m = std::fs::metadata(path).unwrap();
        crate::files::stat_identity(path.to_string_lossy().into_owned(), FileKind::Regular, &m)
    }

    #[test]
    fn crest_itself_has_a_build_id_and_it_matches_readelf_s_note_shape() {
        let exe = std::env::current_exe().unwrap();
        let id = build_id(&File::open(&exe).unwrap()).unwrap();
        // Rust and gcc link with --build-id by default on Linux distributions.
        let id = id.expect("the test binary has a GNU build-id");
        assert!((8..=BUILD_ID_MAX).contains(&id.len()), "{id:?}");
    }

    #[test]
    fn notes_are_walked_to_the_gnu_build_id() {
        let mut data = Vec::new();
        // An unrelated note first ("GNU" type 5, 8-byte desc), then the build-id.
        for (ty, desc) in [
            (5u32, vec![1u8; 8]),
            (NT_GNU_BUILD_ID, vec![0xab, 0xcd, 0xef]),
        ] {
            data.extend_from_slice(&4u32.to_le_bytes());
            data.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            data.extend_from_slice(&ty.to_le_bytes());
            data.extend_from_slice(b"GNU\0");
            data.extend_from_slice(&desc);
            while data.len() % 4 != 0 {
                data.push(0);
            }
        }
        assert_eq!(find_build_id(&data, 4, false), Some(vec![0xab, 0xcd, 0xef]));
        assert_eq!(find_build_id(&data[..20], 4, false), None);
    }

    #[test]
    fn large_files_hash_their_head_and_mapped_code_small_ones_whole() {
        assert_eq!(ranges_to_hash(100, &[(0, 4096)]), vec![(0, 100)]);
        let big = 100 << 20;
        assert_eq!(
            ranges_to_hash(
                big,
                &[(0x200000, 0x1000), (0x80000, 0x1000), (0x201000, 0x1000)]
            ),
            vec![(0, CODE_HASH_HEAD), (0x200000, 0x2000)]
        );
        assert_eq!(ranges_to_hash(big, &[]), vec![(0, CODE_HASH_HEAD)]);
    }

    #[test]
    fn a_file_changed_in_place_with_the_same_size_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script");
        std::fs::write(&path, b"#!/bin/sh\necho one\n").unwrap();
        let ident = ident_of(&path);
        let mut ids = CodeIds::default();
        let vmas: Vec<Vma> = Vec::new();
        let got = ids.process(std::slice::from_ref(&ident), &vmas, 0).unwrap();
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].digest, CodeDigest::Blake3 { .. }));
        let f = File::open(&path).unwrap();
        check(&f, &got[0].digest).unwrap();
        drop(f);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"#!/bin/sh\necho two\n")
            .unwrap();
        let f = File::open(&path).unwrap();
        let err = check(&f, &got[0].digest).unwrap_err();
        assert!(
            err.contains("content hash") && err.contains("replaced in place"),
            "{err}"
        );

        // An ELF file: its build-id, compared.
        let exe = std::env::current_exe().unwrap();
        let f = File::open(&exe).unwrap();
        let CodeDigest::BuildId(id) = digest(&f, &[]).unwrap() else {
            panic!("no build-id")
        };
        let mut other = id.clone();
        other[0] ^= 1;
        let err = check(&f, &CodeDigest::BuildId(other)).unwrap_err();
        assert!(err.contains(&hex(&id)), "{err}");
    }
}
