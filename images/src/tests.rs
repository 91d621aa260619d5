//! Round trips and tamper tests of the image format: every test writes a real image with
//! [`ImageWriter`] into a temporary directory and reads it back through [`open_image`].

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::codec::{self, MetaRole};
use crate::format::{host_page_size, open_image, pages_file_name, process_file_name, verify_pages};
use crate::schema::*;
use crate::validate::validate_process;
use crate::{ImageError, ImageWriter, FORMAT_VERSION, INVENTORY_FILE};

const PID: i32 = 4242;

fn ps() -> u64 {
    host_page_size()
}

fn host_regs(seed: u64) -> ArchRegs {
    match Arch::host() {
        Arch::X86_64 => ArchRegs::X86_64 {
            gpr: (0..27)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                .collect(),
            xstate: (0..2696u32).map(|i| (i % 251) as u8).collect(),
        },
        Arch::Aarch64 => ArchRegs::Aarch64 {
            gpr: (0..34)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                .collect(),
            fpsimd: vec![7; 528],
            tls: 0x7fff_0000_1000,
        },
    }
}

fn file(path: &str, kind: FileKind) -> FileIdentity {
    FileIdentity {
        path: path.into(),
        kind,
        dev: 0x803,
        ino: 1234,
        size: 8192,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 5,
        mode: 0o100755,
    }
}

/// A process like a small C program: code and data from its executable, heap, an anonymous
/// area, stack, vvar and vdso; two pages of data, one of heap and two of stack stored.
pub(crate) fn sample_process() -> ProcessImage {
    let ps = ps();
    let base = 0x5555_5555_0000u64;
    let heap = 0x5555_5600_0000u64;
    let anon = 0x7f00_0000_0000u64;
    let stack = 0x7ffd_0000_0000u64;
    let vvar = 0x7ffe_0000_0000u64;
    let vma = |start: u64, pages: u64, prot: u32, backing: VmaBacking, name: &str| Vma {
        start,
        end: start + pages * ps,
        prot,
        shared: false,
        backing,
        flags: VmaFlags::default(),
        name: name.into(),
        guard_ranges: Vec::new(),
    };
    let mut stack_vma = vma(
        stack,
        8,
        PROT_READ | PROT_WRITE,
        VmaBacking::Anonymous,
        "[stack]",
    );
    stack_vma.flags.growsdown = true;
    ProcessImage {
        pid: PID,
        ppid: 1,
        comm: "victim".into(),
        creds: Creds {
            uid: [0; 4],
            gid: [0; 4],
            groups: vec![0, 4],
            ..Creds::default()
        },
        exe_file: 0,
        threads: vec![ThreadImage {
            tid: PID,
            sigmask: 1 << 9,
            regs: host_regs(1),
            rseq: Some(RseqRegistration {
                abi_pointer: 0x7f00_0000_2fe0,
                abi_size: 32,
                signature: 0x5305_3053,
            }),
            state: Default::default(),
        }],
        mm: MmFields {
            start_code: base,
            end_code: base + ps,
            start_data: base + 2 * ps,
            end_data: base + 4 * ps,
            start_brk: heap,
            brk: heap + 2 * ps,
            start_stack: stack + 7 * ps,
            arg_start: stack + 7 * ps + 16,
            arg_end: stack + 7 * ps + 64,
            env_start: stack + 7 * ps + 64,
            env_end: stack + 7 * ps + 512,
            auxv: vec![6, ps, 0, 0],
        },
        vmas: vec![
            vma(
                base,
                2,
                PROT_READ | PROT_EXEC,
                VmaBacking::File { file: 0, offset: 0 },
                "/usr/bin/victim",
            ),
            vma(
                base + 2 * ps,
                2,
                PROT_READ | PROT_WRITE,
                VmaBacking::File {
                    file: 0,
                    offset: 2 * ps,
                },
                "/usr/bin/victim",
            ),
            vma(
                heap,
                4,
                PROT_READ | PROT_WRITE,
                VmaBacking::Anonymous,
                "[heap]",
            ),
            vma(anon, 16, PROT_READ | PROT_WRITE, VmaBacking::Anonymous, ""),
            stack_vma,
            vma(vvar, 2, PROT_READ, VmaBacking::Vvar, "[vvar]"),
            vma(
                vvar + 2 * ps,
                2,
                PROT_READ | PROT_EXEC,
                VmaBacking::Vdso,
                "[vdso]",
            ),
        ],
        page_runs: vec![
            PageRun {
                vaddr: base + 2 * ps,
                npages: 2,
                file_offset: 0,
            },
            PageRun {
                vaddr: heap,
                npages: 1,
                file_offset: 2 * ps,
            },
            PageRun {
                vaddr: stack + 6 * ps,
                npages: 2,
                file_offset: 3 * ps,
            },
        ],
        pages_file: pages_file_name(PID),
        files: vec![
            file("/usr/bin/victim", FileKind::Regular),
            file("/tmp", FileKind::Directory),
            file("/tmp/victim.log", FileKind::Regular),
            file("/dev/null", FileKind::CharDevice { rdev: 0x103 }),
        ],
        open_files: vec![
            OpenFileDescription {
                id: 0,
                file: 3,
                flags: 0,
                pos: 0,
                locks: vec![],
                owner: None,
            },
            OpenFileDescription {
                id: 1,
                file: 2,
                flags: 0o2001,
                pos: 777,
                locks: vec![
                    DescriptionLock::Flock(LockType::Write),
                    DescriptionLock::Ofd {
                        ty: LockType::Write,
                        range: LockRange { start: 10, len: 20 },
                    },
                ],
                owner: Some(FileOwner {
                    kind: OwnerKind::Process,
                    id: 4242,
                    signal: 29,
                    uid: 1000,
                    euid: 1000,
                }),
            },
        ],
        fds: vec![
            Fd {
                fd: 0,
                description: 0,
                cloexec: false,
            },
            Fd {
                fd: 1,
                description: 1,
                cloexec: false,
            },
            Fd {
                fd: 2,
                description: 1,
                cloexec: false,
            },
        ],
        cwd_file: 1,
        root_file: None,
        umask: 0o022,
        rlimits: vec![
            Rlimit {
                resource: 7,
                soft: 1024,
                hard: 4096,
            },
            Rlimit {
                resource: 3,
                soft: 8 << 20,
                hard: u64::MAX,
            },
        ],
        sig_ignored: 1 << 12,
        sig_caught: 0,
        vdso_blake3: Some([9; 32]),
        task: Default::default(),
        posix_locks: vec![
            PosixLock {
                fd: 1,
                ty: LockType::Write,
                range: LockRange { start: 0, len: 100 },
            },
            PosixLock {
                fd: 2,
                ty: LockType::Write,
                range: LockRange {
                    start: 4096,
                    len: 0,
                },
            },
        ],
        mapping_locks: vec![MappingLock {
            file: 0,
            lock: DescriptionLock::Flock(LockType::Write),
        }],
        memfd_runs: vec![],
        sysv_shm: vec![],
        sysv_ipc: Default::default(),
        fd_table_of: None,
        code_ids: vec![],
        ghost_runs: vec![],
    }
}

fn sample_inventory() -> Inventory {
    Inventory {
        arch: Arch::host(),
        page_size: ps(),
        kernel_release: "6.18.0-test".into(),
        crest_version: "0.1.0".into(),
        created_unix_ms: 1_700_000_000_123,
        root_pid: PID,
        files: vec![],
        tree: TreeTask::lone(PID),
        shell_job: None,
        machine_ttys: Vec::new(),
        caller_sid: -1,
        clocks: TreeClocks {
            monotonic_ns: 1_234_567_890_123,
            boottime_ns: 1_334_567_890_123,
        },
        stats: DumpStats {
            pages_scanned: 36,
            pages_absent: 20,
            pages_present: 16,
            pages_file_backed: 2,
            pages_zero: 9,
            pages_written: 5,
            bytes_written: 5 * ps(),
            rss_bytes: 16 * ps(),
            gc_hint: GcHintStats::Done(GcHintDone {
                protocol_version: 2,
                heap_committed_before: 130 << 20,
                heap_used_before: 40 << 20,
                heap_committed_after: 36 << 20,
                heap_used_after: 33 << 20,
                native_trim: Some("Trim native heap: RSS+Swap: 82828K->80036K (-2792K)".into()),
                rss_before_bytes: 32 * ps(),
                elapsed_us: 41_000,
            }),
            phases_us: vec![("freeze".into(), 120), ("pages".into(), 900)],
            frozen_us: 1500,
        },
    }
}

/// Page `i` of the sample page file: a recognisable pattern.
fn page(i: u64) -> Vec<u8> {
    (0..ps())
        .map(|b| (b as u8) ^ (i as u8).wrapping_mul(37) ^ 0x5a)
        .collect()
}

/// Writes a complete image of `p` into `dir`, with `npages` pages in its page file.
fn write_image(dir: &Path, p: &ProcessImage, npages: u64) -> Result<(), ImageError> {
    write_image_with(dir, p, npages, sample_inventory())
}

/// [`write_image`] with `inventory` as the table of contents.
fn write_image_with(
    dir: &Path,
    p: &ProcessImage,
    npages: u64,
    inventory: Inventory,
) -> Result<(), ImageError> {
    let mut w = ImageWriter::create(dir)?;
    let mut pf = w.page_file(&p.pages_file)?;
    for i in 0..npages {
        assert_eq!(pf.offset(), i * ps());
        pf.write_all(&page(i))?;
    }
    w.finish_page_file(pf)?;
    w.write_process(p)?;
    w.commit(inventory)
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("img");
    (root, dir)
}

fn written() -> (tempfile::TempDir, PathBuf) {
    let (root, dir) = fresh();
    write_image(&dir, &sample_process(), 5).expect("write image");
    (root, dir)
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Replaces one file of an image and fixes the inventory so only the content is wrong.
fn rewrite_inventory(dir: &Path, edit: impl FnOnce(&mut Inventory), version: u32) {
    let path = dir.join(INVENTORY_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let mut inv: Inventory = codec::decode(&bytes, MetaRole::Inventory, &path).unwrap();
    edit(&mut inv);
    let out = codec::encode_with_version(MetaRole::Inventory, &inv, version).unwrap();
    std::fs::write(&path, out).unwrap();
}

/// Writes a (possibly hostile) process record and makes the inventory match it, so only the
/// semantic checks stand between it and a restore.
fn plant_process(dir: &Path, p: &ProcessImage) {
    let name = process_file_name(p.pid);
    let bytes = codec::encode(MetaRole::Process, p).unwrap();
    std::fs::write(dir.join(&name), &bytes).unwrap();
    rewrite_inventory(
        dir,
        |inv| {
            let e = inv.files.iter_mut().find(|f| f.name == name).unwrap();
            e.size = bytes.len() as u64;
            e.blake3 = *blake3::hash(&bytes).as_bytes();
        },
        FORMAT_VERSION,
    );
}

#[test]
fn round_trip() {
    let (_root, dir) = written();
    let image = open_image(&dir).expect("open");
    assert_eq!(image.processes, vec![sample_process()]);
    let mut expected = sample_inventory();
    let inv = &image.inventory;
    assert_eq!(inv.files.len(), 2);
    let pages = image.file_entry(&pages_file_name(PID)).unwrap();
    assert_eq!(pages.role, FileRole::Pages);
    assert_eq!(pages.size, 5 * ps());
    let content: Vec<u8> = (0..5).flat_map(page).collect();
    assert_eq!(pages.blake3, *blake3::hash(&content).as_bytes());
    assert_eq!(std::fs::read(dir.join(&pages.name)).unwrap(), content);
    expected.files = inv.files.clone();
    assert_eq!(*inv, expected);
    verify_pages(&dir, &image).expect("verify");

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        // Page files are read-only: a mapped restore keeps them mapped.
        let want = if path.file_name().unwrap() == pages.name.as_str() {
            0o400
        } else {
            0o600
        };
        assert_eq!(mode(&path), want, "{}", path.display());
    }
}

#[test]
fn large_writes_bypass_the_buffer_and_hash_correctly() {
    let (_root, dir) = fresh();
    let mut p = sample_process();
    // One run of 2048 pages in the anonymous area, written as one big slice plus small ones.
    let anon = p.vmas[3].start;
    p.vmas[3].end = anon + 4096 * ps();
    p.page_runs = vec![PageRun {
        vaddr: anon,
        npages: 2048 + 3,
        file_offset: 0,
    }];
    let big: Vec<u8> = (0..2048 * ps()).map(|i| (i * 7 % 256) as u8).collect();
    let mut w = ImageWriter::create(&dir).unwrap();
    let mut pf = w.page_file(&p.pages_file).unwrap();
    pf.write_all(&page(0)).unwrap();
    pf.write_all(&big).unwrap();
    pf.write_all(&page(1)).unwrap();
    pf.write_all(&page(2)).unwrap();
    assert_eq!(pf.offset(), (2048 + 3) * ps());
    w.finish_page_file(pf).unwrap();
    w.write_process(&p).unwrap();
    w.commit(sample_inventory()).unwrap();
    let image = open_image(&dir).unwrap();
    verify_pages(&dir, &image).unwrap();
    let mut expected = page(0);
    expected.extend_from_slice(&big);
    expected.extend(page(1));
    expected.extend(page(2));
    assert_eq!(std::fs::read(dir.join(&p.pages_file)).unwrap(), expected);
}

#[test]
fn flipped_byte_in_any_metadata_file_is_refused() {
    let names = [INVENTORY_FILE.to_string(), process_file_name(PID)];
    for name in &names {
        let len = {
            let (_root, dir) = written();
            std::fs::metadata(dir.join(name)).unwrap().len() as usize
        };
        // Magic, version, role, length, payload start/middle/end, trailing hash.
        let offsets = [
            0,
            7,
            9,
            13,
            17,
            24,
            25,
            len / 2,
            len - 33,
            len - 32,
            len - 1,
        ];
        for &off in &offsets {
            let (_root, dir) = written();
            flip(&dir.join(name), off);
            let err = open_image(&dir).expect_err(&format!("{name} flipped at {off}"));
            let msg = err.to_string();
            assert!(msg.contains(name.as_str()), "{name}@{off}: {msg}");
        }
    }
}

#[test]
fn checksum_mismatch_message_names_the_file() {
    let (_root, dir) = written();
    let path = dir.join(process_file_name(PID));
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    flip(&path, len / 2);
    let msg = open_image(&dir).unwrap_err().to_string();
    assert!(msg.contains("corrupted (checksum mismatch)"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("dump again"), "{msg}");
}

#[test]
fn bad_magic_is_not_an_image() {
    let (_root, dir) = written();
    flip(&dir.join(INVENTORY_FILE), 0);
    let err = open_image(&dir).unwrap_err();
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    assert!(err.to_string().contains("not a crest image file"));
}

#[test]
fn truncated_metadata_is_refused() {
    for name in [INVENTORY_FILE.to_string(), process_file_name(PID)] {
        for keep in [0usize, 5, 20, 40] {
            let (_root, dir) = written();
            let path = dir.join(&name);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..keep.min(bytes.len() - 1)]).unwrap();
            open_image(&dir).expect_err(&format!("{name} truncated to {keep}"));
        }
        let (_root, dir) = written();
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = open_image(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Truncated { .. } | ImageError::SizeMismatch { .. }
            ),
            "{err}"
        );
    }
}

#[test]
fn truncated_page_file_is_refused() {
    let (_root, dir) = written();
    let path = dir.join(pages_file_name(PID));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4 * ps()).unwrap();
    let err = open_image(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::SizeMismatch { recorded, actual, .. }
        if recorded == 5 * ps() && actual == 4 * ps()),
        "{err}"
    );
}

#[test]
fn flipped_page_byte_is_found_only_by_verify() {
    let (_root, dir) = written();
    flip(&dir.join(pages_file_name(PID)), 3 * ps() as usize + 100);
    let image = open_image(&dir).expect("metadata is intact");
    let err = verify_pages(&dir, &image).unwrap_err();
    assert!(matches!(err, ImageError::PageDataMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&pages_file_name(PID)));
}

#[test]
fn other_version_is_refused_clearly() {
    let (_root, dir) = written();
    rewrite_inventory(&dir, |_| {}, FORMAT_VERSION + 1);
    let err = open_image(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::Version { found, checksum_ok: true, .. } if found == FORMAT_VERSION + 1),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "image format version {}, this crest reads version {FORMAT_VERSION}",
            FORMAT_VERSION + 1
        )),
        "{msg}"
    );
}

#[test]
fn other_arch_is_refused_naming_both() {
    let (_root, dir) = written();
    let other = match Arch::host() {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    };
    rewrite_inventory(&dir, |inv| inv.arch = other, FORMAT_VERSION);
    let msg = open_image(&dir).unwrap_err().to_string();
    assert!(
        msg.contains(other.name()) && msg.contains(Arch::host().name()),
        "{msg}"
    );
}

#[test]
fn other_page_size_is_refused() {
    let (_root, dir) = written();
    rewrite_inventory(&dir, |inv| inv.page_size = ps() * 4, FORMAT_VERSION);
    let err = open_image(&dir).unwrap_err();
    assert!(matches!(err, ImageError::PageSizeMismatch { .. }), "{err}");
}

#[test]
fn missing_and_unlisted_files_are_refused() {
    let (_root, dir) = written();
    std::fs::remove_file(dir.join(pages_file_name(PID))).unwrap();
    let err = open_image(&dir).unwrap_err();
    assert!(matches!(err, ImageError::MissingFile { .. }), "{err}");

    let (_root, dir) = written();
    std::fs::write(dir.join(process_file_name(77)), b"stray").unwrap();
    let err = open_image(&dir).unwrap_err();
    assert!(matches!(err, ImageError::UnlistedFile { .. }), "{err}");

    let (_root, dir) = written();
    std::fs::remove_file(dir.join(INVENTORY_FILE)).unwrap();
    let err = open_image(&dir).unwrap_err();
    assert!(matches!(err, ImageError::NotAnImageDir { .. }), "{err}");

    let err = open_image(&dir.join("nonexistent")).unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
}

#[test]
fn escaping_file_names_are_refused() {
    for bad in ["../evil", "a/b", "..", ".", ""] {
        let (_root, dir) = written();
        rewrite_inventory(
            &dir,
            |inv| inv.files[0].name = bad.to_string(),
            FORMAT_VERSION,
        );
        let err = open_image(&dir).unwrap_err();
        assert!(
            matches!(err, ImageError::BadFileName { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn process_file_from_another_dump_is_refused() {
    let (_root, dir) = written();
    let (_root2, dir2) = fresh();
    let mut other = sample_process();
    other.umask = 0o077;
    write_image(&dir2, &other, 5).unwrap();
    // Same size, valid in itself, but not the file this inventory recorded.
    std::fs::copy(
        dir2.join(process_file_name(PID)),
        dir.join(process_file_name(PID)),
    )
    .unwrap();
    let msg = open_image(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("differs from the one in the inventory"),
        "{msg}"
    );
}

#[test]
fn dump_into_existing_dir_replaces_it_wholesale() {
    let (root, dir) = written();
    std::fs::write(dir.join("extra-old-file.img"), b"old").unwrap();
    std::fs::write(dir.join("notes.txt"), b"old").unwrap();
    let mut p = sample_process();
    p.umask = 0o027;
    write_image(&dir, &p, 5).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            INVENTORY_FILE.to_string(),
            pages_file_name(PID),
            process_file_name(PID)
        ]
    );
    assert_eq!(open_image(&dir).unwrap().processes[0].umask, 0o027);
    // Nothing else is left beside the image (the old one is gone, no temp dir).
    let siblings: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert_eq!(siblings.len(), 1);
}

#[test]
fn dropped_writer_leaves_nothing() {
    let (root, dir) = fresh();
    {
        let mut w = ImageWriter::create(&dir).unwrap();
        assert!(w.dir().exists());
        let mut pf = w.page_file("pages-1.img").unwrap();
        pf.write_all(&page(0)).unwrap();
        w.finish_page_file(pf).unwrap();
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

    // A failed dump over an existing image leaves the old image intact.
    write_image(&dir, &sample_process(), 5).unwrap();
    {
        let mut w = ImageWriter::create(&dir).unwrap();
        w.write_process(&sample_process()).unwrap();
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    open_image(&dir).unwrap();
}

#[test]
fn commit_refuses_an_image_restore_would_refuse() {
    let (root, dir) = fresh();
    let mut p = sample_process();
    p.page_runs[2].npages = 3; // runs past both the stack VMA and the page file
    let err = write_image(&dir, &p, 5).unwrap_err();
    assert!(matches!(err, ImageError::SelfCheck { .. }), "{err}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

    // An unfinished page file is refused too.
    let mut w = ImageWriter::create(&dir).unwrap();
    let _pf = w.page_file(&pages_file_name(PID)).unwrap();
    w.write_process(&sample_process()).unwrap();
    assert!(w.commit(sample_inventory()).is_err());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn clocks_that_are_not_positive_are_refused() {
    let (_root, dir) = fresh();
    let mut inv = sample_inventory();
    inv.clocks.monotonic_ns = 0;
    let err = write_image_with(&dir, &sample_process(), 5, inv).unwrap_err();
    assert!(err.to_string().contains("are not positive"), "{err}");
}

/// Each hostile edit is planted with a matching checksum and must be refused by open_image
/// (and by validate_process directly), never panic.
#[test]
fn hostile_process_records_are_refused() {
    let ps = ps();
    type Edit<'a> = Box<dyn Fn(&mut ProcessImage) + 'a>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "run past page file end",
            Box::new(|p| p.page_runs[2].file_offset = 4 * ps),
        ),
        (
            "huge file offset",
            Box::new(|p| p.page_runs[0].file_offset = u64::MAX - ps + 1),
        ),
        (
            "huge npages",
            Box::new(|p| p.page_runs[0].npages = u64::MAX / 2),
        ),
        ("zero npages", Box::new(|p| p.page_runs[0].npages = 0)),
        (
            "run outside VMAs",
            Box::new(|p| p.page_runs[1].vaddr = p.vmas[2].end + 16 * ps),
        ),
        (
            "run crossing VMA end",
            Box::new(|p| {
                p.page_runs[1].vaddr = p.vmas[2].end - ps;
                p.page_runs[1].npages = 2;
            }),
        ),
        (
            "run in vvar",
            Box::new(|p| {
                p.page_runs.push(PageRun {
                    vaddr: p.vmas[5].start,
                    npages: 1,
                    file_offset: 0,
                })
            }),
        ),
        ("unsorted runs", Box::new(|p| p.page_runs.swap(0, 1))),
        (
            "overlapping runs",
            Box::new(|p| p.page_runs[1].vaddr = p.page_runs[0].vaddr + ps),
        ),
        ("unaligned run", Box::new(|p| p.page_runs[1].vaddr += 8)),
        (
            "overlapping VMAs",
            Box::new(|p| p.vmas[1].start = p.vmas[0].start + ps),
        ),
        ("unsorted VMAs", Box::new(|p| p.vmas.swap(2, 3))),
        ("unaligned VMA", Box::new(|p| p.vmas[3].end += 1)),
        ("empty VMA", Box::new(|p| p.vmas[3].end = p.vmas[3].start)),
        (
            "VMA above user space",
            Box::new(|p| {
                let mut v = p.vmas[3].clone();
                v.start = (1 << 57) - ps;
                v.end = (1 << 57) + ps;
                p.vmas.push(v);
            }),
        ),
        (
            "VMA file index",
            Box::new(|p| {
                p.vmas[0].backing = VmaBacking::File {
                    file: 99,
                    offset: 0,
                }
            }),
        ),
        (
            "VMA file offset overflow",
            Box::new(|p| {
                p.vmas[0].backing = VmaBacking::File {
                    file: 0,
                    offset: u64::MAX - ps + 1,
                }
            }),
        ),
        ("no threads", Box::new(|p| p.threads.clear())),
        ("leader tid", Box::new(|p| p.threads[0].tid = PID + 1)),
        (
            "gpr count",
            Box::new(|p| match &mut p.threads[0].regs {
                ArchRegs::X86_64 { gpr, .. } | ArchRegs::Aarch64 { gpr, .. } => {
                    gpr.pop();
                }
            }),
        ),
        (
            "short xstate",
            Box::new(|p| match &mut p.threads[0].regs {
                ArchRegs::X86_64 { xstate, .. } => xstate.truncate(100),
                ArchRegs::Aarch64 { fpsimd, .. } => fpsimd.truncate(100),
            }),
        ),
        (
            "other arch regs",
            Box::new(|p| {
                p.threads[0].regs = match Arch::host() {
                    Arch::X86_64 => ArchRegs::Aarch64 {
                        gpr: vec![0; 34],
                        fpsimd: vec![0; 528],
                        tls: 0,
                    },
                    Arch::Aarch64 => ArchRegs::X86_64 {
                        gpr: vec![0; 27],
                        xstate: vec![0; 1024],
                    },
                }
            }),
        ),
        ("duplicate fd", Box::new(|p| p.fds[2].fd = 1)),
        ("negative fd", Box::new(|p| p.fds[0].fd = -1)),
        (
            "fd description index",
            Box::new(|p| p.fds[0].description = 2),
        ),
        ("open file index", Box::new(|p| p.open_files[0].file = 4)),
        ("exe index", Box::new(|p| p.exe_file = u32::MAX)),
        ("cwd index", Box::new(|p| p.cwd_file = 4)),
        ("root index", Box::new(|p| p.root_file = Some(4))),
        ("root not a directory", Box::new(|p| p.root_file = Some(0))),
        ("odd auxv", Box::new(|p| p.mm.auxv.push(1))),
        ("long auxv", Box::new(|p| p.mm.auxv = vec![1; 130])),
        ("rlimit resource", Box::new(|p| p.rlimits[0].resource = 16)),
        ("mm order", Box::new(|p| p.mm.arg_end = p.mm.arg_start - 1)),
        ("mm address", Box::new(|p| p.mm.brk = u64::MAX)),
        (
            "pages file name",
            Box::new(|p| p.pages_file = "../x".into()),
        ),
        (
            "pipe holding more than its size",
            Box::new(|p| {
                p.files[3] = pipe(Pipe::Internal {
                    size: 4096,
                    buffered: vec![0; 4097],
                })
            }),
        ),
        (
            "pipe of size 0",
            Box::new(|p| {
                p.files[3] = pipe(Pipe::Internal {
                    size: 0,
                    buffered: vec![],
                })
            }),
        ),
        (
            "pipe with a path",
            Box::new(|p| p.files[3].kind = FileKind::Pipe(Pipe::External)),
        ),
        (
            "pipe description with access mode 3",
            Box::new(|p| {
                p.files[3] = pipe(Pipe::External);
                p.open_files[0].flags = 3;
            }),
        ),
        (
            "POSIX lock on a missing fd",
            Box::new(|p| p.posix_locks[0].fd = 9),
        ),
        (
            "POSIX lock past the largest offset",
            Box::new(|p| p.posix_locks[1].range.start = i64::MAX as u64 + 1),
        ),
        (
            "OFD lock with an overflowing range",
            Box::new(|p| {
                p.open_files[1].locks[1] = DescriptionLock::Ofd {
                    ty: LockType::Read,
                    range: LockRange {
                        start: 1,
                        len: u64::MAX,
                    },
                }
            }),
        ),
        (
            "two flock locks on one description",
            Box::new(|p| {
                p.open_files[1]
                    .locks
                    .push(DescriptionLock::Flock(LockType::Read))
            }),
        ),
        (
            "lock of a file no VMA maps",
            Box::new(|p| p.mapping_locks[0].file = 2),
        ),
        (
            "lock on a pipe",
            Box::new(|p| {
                p.files[2] = pipe(Pipe::External);
                p.open_files[1].flags = 1;
            }),
        ),
        (
            "mapped pipe",
            Box::new(|p| {
                p.files[3] = pipe(Pipe::External);
                p.vmas[0].backing = VmaBacking::File { file: 3, offset: 0 };
            }),
        ),
        (
            "guard range outside its VMA",
            Box::new(move |p| {
                let end = p.vmas[0].end;
                p.vmas[0].guard_ranges = vec![(end - ps, end + ps)];
            }),
        ),
        (
            "guard range not page-aligned",
            Box::new(move |p| {
                let start = p.vmas[0].start;
                p.vmas[0].guard_ranges = vec![(start + 1, start + ps)];
            }),
        ),
    ];
    for (what, edit) in &edits {
        let mut p = sample_process();
        edit(&mut p);
        let err = validate_process(&p, 5 * ps, ps).expect_err(what);
        assert!(err.to_string().contains(&PID.to_string()), "{what}: {err}");

        let (_root, dir) = written();
        plant_process(&dir, &p);
        let err = open_image(&dir).expect_err(what);
        assert!(
            matches!(err, ImageError::InvalidProcessFile { pid: PID, .. }),
            "{what}: {err}"
        );
    }
    // The unedited sample passes, so each refusal above is due to its edit.
    validate_process(&sample_process(), 5 * ps, ps).unwrap();
    // And so does one whose stdin is a pipe holding data.
    let mut p = sample_process();
    p.files[3] = pipe(Pipe::Internal {
        size: 65536,
        buffered: vec![1; 100],
    });
    validate_process(&p, 5 * ps, ps).unwrap();
    // And one with a guard region inside a VMA.
    let mut p = sample_process();
    p.vmas[0].guard_ranges = vec![(p.vmas[0].start, p.vmas[0].start + ps)];
    validate_process(&p, 5 * ps, ps).unwrap();
}

/// A pipe as a dump records it: no path, no size, mode or mtime.
fn pipe(kind: Pipe) -> FileIdentity {
    FileIdentity {
        path: String::new(),
        kind: FileKind::Pipe(kind),
        dev: 0xd,
        ino: 4321,
        size: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        mode: 0,
    }
}

#[test]
fn pages_file_must_be_listed_as_pages() {
    let (_root, dir) = written();
    let mut p = sample_process();
    p.pages_file = process_file_name(PID);
    plant_process(&dir, &p);
    let msg = open_image(&dir).unwrap_err().to_string();
    assert!(msg.contains("not page data"), "{msg}");
}

#[test]
fn garbage_payload_with_valid_checksum_is_refused() {
    let (_root, dir) = written();
    let path = dir.join(process_file_name(PID));
    // A correct header and hash around bytes that do not decode as a process record.
    let payload = vec![0xffu8; 64];
    let mut out = Vec::new();
    out.extend_from_slice(b"CRESTIMG");
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(MetaRole::Process as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    std::fs::write(&path, &out).unwrap();
    let name = process_file_name(PID);
    rewrite_inventory(
        &dir,
        |inv| {
            let e = inv.files.iter_mut().find(|f| f.name == name).unwrap();
            e.size = out.len() as u64;
            e.blake3 = *blake3::hash(&out).as_bytes();
        },
        FORMAT_VERSION,
    );
    let msg = open_image(&dir).unwrap_err().to_string();
    assert!(msg.contains("cannot decode"), "{msg}");
}

#[test]
fn inventory_in_place_of_process_file_is_refused() {
    let (_root, dir) = written();
    let inv_bytes = std::fs::read(dir.join(INVENTORY_FILE)).unwrap();
    let name = process_file_name(PID);
    std::fs::write(dir.join(&name), &inv_bytes).unwrap();
    rewrite_inventory(
        &dir,
        |inv| {
            let e = inv.files.iter_mut().find(|f| f.name == name).unwrap();
            e.size = inv_bytes.len() as u64;
            e.blake3 = *blake3::hash(&inv_bytes).as_bytes();
        },
        FORMAT_VERSION,
    );
    let msg = open_image(&dir).unwrap_err().to_string();
    assert!(msg.contains("record kind"), "{msg}");
}

/// A sample process holding a memfd of 2 pages + 1 byte with a stored run of its last two
/// pages (the last one partly beyond its size, as a dump stores it).
fn with_memfd() -> ProcessImage {
    let ps = ps();
    let mut p = sample_process();
    let mut f = file(
        "/memfd:buf",
        FileKind::Memfd {
            name: "buf".into(),
            seals: 2 | 4,
        },
    );
    f.ino = 777;
    f.size = 2 * ps + 1;
    p.files.push(f);
    p.memfd_runs = vec![
        MemfdRun {
            ino: 777,
            offset: 0,
            npages: 1,
            file_offset: 0,
        },
        MemfdRun {
            ino: 777,
            offset: 2 * ps,
            npages: 1,
            file_offset: 4 * ps,
        },
    ];
    p
}

#[test]
fn memfds_and_their_runs_are_validated() {
    let ps = ps();
    validate_process(&with_memfd(), 5 * ps, ps).unwrap();
    type Edit<'a> = Box<dyn Fn(&mut ProcessImage) + 'a>;
    let last = |p: &mut ProcessImage| p.files.len() - 1;
    let edits: Vec<(&str, Edit)> = vec![
        ("run of no memfd", Box::new(|p| p.memfd_runs[0].ino = 778)),
        ("unaligned offset", Box::new(|p| p.memfd_runs[0].offset = 1)),
        ("empty run", Box::new(|p| p.memfd_runs[0].npages = 0)),
        ("past the memfd", Box::new(|p| p.memfd_runs[1].npages = 2)),
        (
            "past the page file",
            Box::new(|p| p.memfd_runs[1].file_offset = 5 * ps),
        ),
        ("out of order", Box::new(|p| p.memfd_runs.swap(0, 1))),
        (
            "unknown seals",
            Box::new(move |p| {
                let i = last(p);
                p.files[i].kind = FileKind::Memfd {
                    name: "buf".into(),
                    seals: 0x100,
                }
            }),
        ),
        (
            "path that is not the name",
            Box::new(move |p| {
                let i = last(p);
                p.files[i].path = "/memfd:other".into()
            }),
        ),
    ];
    for (what, edit) in &edits {
        let mut p = with_memfd();
        edit(&mut p);
        validate_process(&p, 5 * ps, ps).expect_err(what);
    }
}

#[test]
fn tcp_socket_records_are_validated() {
    use crate::validate::TCP_SOCKOPTS;
    let _ = TCP_SOCKOPTS;
    let ident = |t: TcpSocket| FileIdentity {
        path: String::new(),
        kind: FileKind::Tcp(t),
        dev: 0,
        ino: 1,
        size: 0,
        mtime_sec: 0,
        mtime_nsec: 0,
        mode: 0,
    };
    let listening = |family, local: &str| TcpSocket {
        family,
        state: TcpState::Listening {
            local: local.parse().unwrap(),
            backlog: 5,
        },
        options: vec![SockOpt {
            level: 6,
            name: 1,
            value: 1i32.to_ne_bytes().to_vec(),
        }],
        buf_lock: 0,
    };
    let check = |t| crate::validate::check_file_for_tests(&ident(t));
    assert!(check(listening(2, "127.0.0.1:80")).is_ok());
    assert!(check(listening(10, "[::1]:80")).is_ok());
    assert!(
        check(listening(2, "[::1]:80")).is_err(),
        "address of another family"
    );
    let mut bad = listening(2, "127.0.0.1:80");
    bad.options[0].name = 99;
    assert!(check(bad).is_err(), "an option a restore does not set");
    let conn = TcpConnection {
        local: "127.0.0.1:80".parse().unwrap(),
        remote: "127.0.0.1:5000".parse().unwrap(),
        send_seq: 1,
        recv_seq: 2,
        send_queue: vec![1, 2],
        unsent: 3,
        recv_queue: vec![],
        mss: 65483,
        tcp_options: 7,
        snd_wscale: 7,
        rcv_wscale: 7,
        timestamp: 0,
        window: [0; 5],
        network_lock: "crest-1-2".into(),
        phase: TcpPhase::Established,
    };
    let est = |c: TcpConnection| TcpSocket {
        family: 2,
        state: TcpState::Established(c),
        options: vec![],
        buf_lock: 0,
    };
    assert!(
        check(est(conn.clone())).is_err(),
        "more unsent bytes than queued"
    );
    let ok = TcpConnection {
        unsent: 1,
        ..conn.clone()
    };
    assert!(check(est(ok.clone())).is_ok());
    let bad_lock = TcpConnection {
        network_lock: "crest-1; flush ruleset".into(),
        ..ok.clone()
    };
    assert!(
        check(est(bad_lock)).is_err(),
        "a lock table name nft could misread"
    );
    let closing = TcpConnection {
        phase: TcpPhase::LastAck,
        ..ok.clone()
    };
    assert!(check(est(closing)).is_ok());
    let acked = TcpConnection {
        phase: TcpPhase::FinWait2,
        ..ok
    };
    assert!(
        check(est(acked)).is_err(),
        "bytes left to send after the program's FIN was acknowledged"
    );
}

/// A sample process holding an unlinked file of 2 pages + 1 byte with two stored runs, and a
/// removed directory as its cwd.
fn with_ghost() -> ProcessImage {
    let ps = ps();
    let mut p = sample_process();
    let ghost = Ghost {
        uid: 1,
        gid: 2,
        atime_sec: 3,
        atime_nsec: 4,
    };
    let mut f = file("/tmp/scratch", FileKind::Ghost(ghost.clone()));
    f.ino = 777;
    f.size = 2 * ps + 1;
    f.mode = 0o100600;
    p.files.push(f);
    let file_idx = (p.files.len() - 1) as u32;
    let mut d = file("/tmp/gone", FileKind::Ghost(ghost));
    d.ino = 778;
    d.size = 0;
    d.mode = 0o040700;
    p.files.push(d);
    p.cwd_file = (p.files.len() - 1) as u32;
    p.ghost_runs = vec![
        GhostRun {
            file: file_idx,
            offset: 0,
            npages: 1,
            file_offset: 0,
        },
        GhostRun {
            file: file_idx,
            offset: 2 * ps,
            npages: 1,
            file_offset: 4 * ps,
        },
    ];
    p
}

#[test]
fn ghosts_and_their_runs_are_validated() {
    let ps = ps();
    validate_process(&with_ghost(), 5 * ps, ps).unwrap();
    // A removed root directory is recreated like a removed cwd.
    let mut removed_root = with_ghost();
    removed_root.root_file = Some(removed_root.cwd_file);
    validate_process(&removed_root, 5 * ps, ps).unwrap();
    type Edit<'a> = Box<dyn Fn(&mut ProcessImage) + 'a>;
    let file = |p: &ProcessImage| p.ghost_runs[0].file as usize;
    let edits: Vec<(&str, Edit)> = vec![
        ("run of no file", Box::new(|p| p.ghost_runs[0].file = 999)),
        (
            "run of the directory",
            Box::new(|p| p.ghost_runs[0].file += 1),
        ),
        (
            "run of a regular file",
            Box::new(|p| p.ghost_runs[0].file = 0),
        ),
        ("unaligned offset", Box::new(|p| p.ghost_runs[0].offset = 1)),
        ("empty run", Box::new(|p| p.ghost_runs[0].npages = 0)),
        ("past the file", Box::new(|p| p.ghost_runs[1].npages = 2)),
        (
            "past the page file",
            Box::new(|p| p.ghost_runs[1].file_offset = 5 * ps),
        ),
        ("out of order", Box::new(|p| p.ghost_runs.swap(0, 1))),
        (
            "a ghost FIFO",
            Box::new(move |p| {
                let i = file(p);
                p.files[i].mode = 0o010600
            }),
        ),
        (
            "a relative path",
            Box::new(move |p| {
                let i = file(p);
                p.files[i].path = "scratch".into()
            }),
        ),
        (
            "a path without a name",
            Box::new(move |p| {
                let i = file(p);
                p.files[i].path = "/".into()
            }),
        ),
        (
            "a cwd that is a ghost file",
            Box::new(move |p| p.cwd_file = file(p) as u32),
        ),
        (
            "a root that is a ghost file",
            Box::new(move |p| p.root_file = Some(file(p) as u32)),
        ),
    ];
    for (what, edit) in &edits {
        let mut p = with_ghost();
        edit(&mut p);
        validate_process(&p, 5 * ps, ps).expect_err(what);
    }
}

#[test]
fn a_root_directory_is_a_listed_directory() {
    let ps = ps();
    let mut p = sample_process();
    p.root_file = Some(1);
    validate_process(&p, 5 * ps, ps).unwrap();
    p.root_file = Some(2);
    validate_process(&p, 5 * ps, ps).expect_err("a regular file as root");
}

fn sample_working_set(image: &crate::Image) -> WorkingSet {
    let p = &image.processes[0];
    WorkingSet {
        inventory_blake3: image.inventory_blake3,
        recorded_unix_ms: 1,
        window_ms: 1000,
        source: WorkingSetSource::LazyFaults,
        processes: vec![ProcessWorkingSet {
            pid: PID,
            ranges: vec![(p.page_runs[0].vaddr + ps(), 1), (p.page_runs[2].vaddr, 2)],
            written: vec![(p.page_runs[2].vaddr + ps(), 1)],
        }],
    }
}

#[test]
fn working_set_round_trip_leaves_the_image_alone() {
    let (_root, dir) = written();
    let image = open_image(&dir).unwrap();
    assert!(crate::read_working_set(&image).unwrap().is_none());
    let before: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let ws = sample_working_set(&image);
    crate::write_working_set(&image, &ws).unwrap();
    // Written twice: replaced, not appended; no temporary file left.
    crate::write_working_set(&image, &ws).unwrap();
    // The image still opens (the file is not a stray .img) and no file of it changed.
    let image = open_image(&dir).unwrap();
    assert_eq!(crate::read_working_set(&image).unwrap(), Some(ws));
    for (name, bytes) in before {
        assert_eq!(
            std::fs::read(dir.join(&name)).unwrap(),
            bytes,
            "{name} changed"
        );
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
}

#[test]
fn tampered_stale_or_misfit_working_sets_are_refused() {
    let (_root, dir) = written();
    let image = open_image(&dir).unwrap();
    let path = dir.join(crate::WORKING_SET_FILE);
    let good = sample_working_set(&image);
    let expect_refused = |bytes: Vec<u8>, needle: &str| {
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, bytes).unwrap();
        let e = crate::read_working_set(&image).unwrap_err().to_string();
        assert!(e.contains("working-set.img") && e.contains(needle), "{e}");
    };
    // A flipped byte.
    let mut bytes = crate::encode_working_set(&good);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    expect_refused(bytes, "checksum mismatch");
    // Another dump's working set.
    let mut stale = good.clone();
    stale.inventory_blake3[0] ^= 1;
    expect_refused(crate::encode_working_set(&stale), "another dump");
    // Re-encoded with a valid checksum, but naming memory the image does not store.
    let mut outside = good.clone();
    outside.processes[0].ranges.insert(0, (0x1000, 1));
    expect_refused(crate::encode_working_set(&outside), "stored page run");
    let mut across = good.clone();
    across.processes[0].ranges[1].1 = 3;
    expect_refused(crate::encode_working_set(&across), "stored page run");
    let mut pid = good.clone();
    pid.processes[0].pid = PID + 1;
    expect_refused(crate::encode_working_set(&pid), "not a process");
    let mut unsorted = good.clone();
    unsorted.processes[0].ranges.reverse();
    expect_refused(crate::encode_working_set(&unsorted), "precedes");
    // Written pages are checked like the others.
    let mut written_outside = good.clone();
    written_outside.processes[0].written = vec![(0x1000, 1)];
    expect_refused(
        crate::encode_working_set(&written_outside),
        "written range 0 (1 pages at 0x1000) does not lie inside one stored page run",
    );
    // A process record in its place.
    let p = codec::encode(MetaRole::Process, &image.processes[0]).unwrap();
    expect_refused(p, "expected a working set");
    // And a writer refuses to write a misfit.
    assert!(crate::write_working_set(&image, &outside).is_err());
}
