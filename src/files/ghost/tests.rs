//! Unit tests of the ghost module, on real files in a temporary directory.

use std::io::Write;

use super::*;

fn page() -> u64 {
    crate::arch::page_size()
}

#[test]
fn sizes_parse_with_binary_suffixes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("8K"), Ok(8192));
    assert_eq!(parse_size("16M"), Ok(16 << 20));
    assert_eq!(parse_size("16MiB"), Ok(16 << 20));
    assert_eq!(parse_size("1g"), Ok(1 << 30));
    for bad in ["", "M", "12Q", "-1", "1.5M", "99999999999999999999T"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

/// A file of `size` bytes with one page of data at each of `pages` (page numbers).
fn sparse(path: &Path, size: u64, pages: &[u64]) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    for &p in pages {
        f.write_all_at(&vec![b'x'; page() as usize], p * page())
            .unwrap();
    }
    f.sync_all().unwrap();
    f
}

#[test]
fn only_data_counts_against_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scratch");
    let f = sparse(&path, 1 << 30, &[0, 300]);
    assert_eq!(data_bytes(&f, 1 << 30).unwrap(), 2 * page());
    std::fs::remove_file(&path).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.nlink(), 0);
    let found = classify(&md, &path, 2 * page(), || f.try_clone()).unwrap();
    let Found::Ghost(ident) = found else {
        panic!("{found:?}")
    };
    assert_eq!(ident.path, path.to_str().unwrap());
    assert_eq!((ident.size, ident.ino), (1 << 30, md.ino()));
    assert!(matches!(ident.kind, FileKind::Ghost(Ghost { uid, .. }) if uid == md.uid()));
    let err = classify(&md, &path, 2 * page() - 1, || f.try_clone()).unwrap_err();
    assert!(
        err.contains("scratch") && err.contains("--ghost-limit") && err.contains("1M"),
        "{err}"
    );
}

#[test]
fn a_deleted_hard_link_is_found_under_its_other_name() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"data").unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    let f = File::open(&a).unwrap();
    std::fs::remove_file(&a).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(
        classify(&md, &a, 0, || panic!("a linked file is not read")),
        Ok(Found::Linked(b.clone()))
    );
    // Its other name in another directory is not looked for: stored like an unlinked file.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::rename(&b, dir.path().join("sub/b")).unwrap();
    let found = classify(&md, &a, 1 << 20, || f.try_clone()).unwrap();
    assert!(matches!(found, Found::Ghost(_)), "{found:?}");
}

#[test]
fn a_deleted_fifo_is_refused_without_being_opened() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fifo");
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let md = std::fs::metadata(&p).unwrap();
    let err = classify(&md, &p, 1 << 20, || panic!("a FIFO must not be opened")).unwrap_err();
    assert!(err.contains("FIFO") && err.contains("fifo"), "{err}");
}

/// A removed /proc/PID directory (of a process that has ended, held as a cwd or an fd) cannot
/// be made again: refused, naming it.
#[test]
fn a_removed_proc_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let md = std::fs::metadata(dir.path()).unwrap();
    let err = classify(&md, Path::new("/proc/4242"), 1 << 20, || {
        panic!("a directory is not opened")
    })
    .unwrap_err();
    assert!(err.contains("/proc/4242") && err.contains("ended"), "{err}");
}

fn ghost_of(path: &Path, mode: u32, size: u64) -> (FileIdentity, Ghost) {
    let g = Ghost {
        uid: 4321,
        gid: 8765,
        atime_sec: 1_000_000_000,
        atime_nsec: 5,
    };
    let f = FileIdentity {
        path: path.to_str().unwrap().to_string(),
        kind: FileKind::Ghost(g.clone()),
        dev: 1,
        ino: 4242,
        size,
        mtime_sec: 1_100_000_000,
        mtime_nsec: 7,
        mode,
    };
    (f, g)
}

fn link_of(fd: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .display()
        .to_string()
}

fn assert_restored(fd: &OwnedFd, f: &FileIdentity) {
    let md = nix::sys::stat::fstat(fd).unwrap();
    assert_eq!(md.st_nlink, 0);
    assert_eq!(md.st_mode, f.mode);
    assert_eq!((md.st_uid, md.st_gid), (4321, 8765));
    assert_eq!((md.st_atime, md.st_atime_nsec), (1_000_000_000, 5));
    assert_eq!((md.st_mtime, md.st_mtime_nsec), (f.mtime_sec, f.mtime_nsec));
}

#[test]
fn a_file_is_recreated_unlinked_under_its_own_name_with_content_and_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scratch");
    let (f, g) = ghost_of(&path, libc::S_IFREG | 0o4640, 1 << 20);
    let fd = recreate_file(&f, &g, |file| {
        file.write_all_at(b"hello", 8192)
            .map_err(|e| RestoreError::Os {
                what: "test write".into(),
                source: e,
            })
    })
    .unwrap();
    assert_restored(&fd, &f);
    assert_eq!(link_of(&fd), format!("{} (deleted)", path.display()));
    let file = File::from(fd);
    let mut buf = [0u8; 5];
    file.read_exact_at(&mut buf, 8192).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(data_bytes(&file, 1 << 20).unwrap(), page());
    // Nothing is left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_file_whose_name_is_taken_is_recreated_beside_it_leaving_the_other_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"new file")
        .unwrap();
    let (f, g) = ghost_of(&path, libc::S_IFREG | 0o600, 3);
    let fd = recreate_file(&f, &g, |file| {
        file.write_all_at(b"old", 0).map_err(|e| RestoreError::Os {
            what: "test write".into(),
            source: e,
        })
    })
    .unwrap();
    assert_restored(&fd, &f);
    assert!(link_of(&fd).ends_with(" (deleted)"), "{}", link_of(&fd));
    assert_eq!(std::fs::read(&path).unwrap(), b"new file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_removed_directory_is_recreated_removed_and_a_missing_parent_falls_back_upwards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone");
    let (f, g) = ghost_of(&path, libc::S_IFDIR | 0o750, 0);
    let fd = recreate_dir(&f, &g).unwrap();
    assert_restored(&fd, &f);
    assert_eq!(link_of(&fd), format!("{} (deleted)", path.display()));

    // Its directory is gone too: made in the nearest directory that exists.
    let deep = dir.path().join("a/b/gone");
    let (f, g) = ghost_of(&deep, libc::S_IFDIR | 0o700, 0);
    let fd = recreate_dir(&f, &g).unwrap();
    assert_restored(&fd, &f);
    let shown = link_of(&fd);
    assert!(
        shown.starts_with(&format!("{}/.crest-ghost-4242-", dir.path().display()))
            && shown.ends_with(" (deleted)"),
        "{shown}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
