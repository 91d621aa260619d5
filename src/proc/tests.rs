//! Tests against the test process itself: its /proc files are real and known.

use std::io::Write;
use std::os::fd::AsRawFd;

use super::*;

fn me() -> Proc {
    Proc::open(std::process::id() as i32).unwrap()
}

#[test]
fn missing_pid_is_reported_as_such() {
    // pid_max is at most 2^22, so this pid cannot exist.
    match Proc::open(0x7fff_fff0) {
        Err(ProcError::NoSuchProcess { pid }) => assert_eq!(pid, 0x7fff_fff0),
        other => panic!("expected NoSuchProcess, got {other:?}"),
    }
    assert!(matches!(
        Proc::open(0),
        Err(ProcError::NoSuchProcess { .. })
    ));
}

#[test]
fn smaps_lists_stack_vdso_and_a_fresh_mapping_with_flags() {
    let ps = crate::arch::page_size() as usize;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * ps,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: advising our own mapping.
    assert_eq!(unsafe { libc::madvise(p, 4 * ps, libc::MADV_DONTDUMP) }, 0);
    let maps = me().smaps().unwrap();
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(p, 4 * ps) };

    let start = p as u64;
    let m = maps
        .iter()
        .find(|m| m.start == start)
        .expect("the new mapping is listed");
    assert_eq!(m.end, start + 4 * ps as u64);
    assert!(m.read && !m.write && !m.exec && !m.shared);
    assert_eq!(m.name, MapName::Anonymous);
    assert!(m.vm_flags.contains(VmFlags::DD));
    assert!(m.vm_flags.contains(VmFlags::NR));
    assert!(maps
        .iter()
        .any(|m| m.name == MapName::Stack && m.vm_flags.contains(VmFlags::GD)));
    assert!(maps
        .iter()
        .any(|m| m.name == MapName::Vdso && m.display_name == "[vdso]"));
    assert!(maps
        .iter()
        .any(|m| matches!(&m.name, MapName::Vvar(n) if n.starts_with("vvar"))));
    // Sorted and not overlapping.
    assert!(maps.windows(2).all(|w| w[0].end <= w[1].start));
    // The test binary itself is mapped from its path.
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    assert!(maps.iter().any(|m| m.name
        == MapName::Path {
            path: exe.clone(),
            deleted: false
        }));
}

#[test]
fn own_maps_matches_smaps_ranges() {
    let own = own_maps().unwrap();
    assert!(own.iter().any(|m| m.name == "[stack]"));
    let here = own_maps_matches_smaps_ranges as *const () as usize as u64;
    assert!(own
        .iter()
        .any(|m| m.start <= here && here < m.end && m.name.starts_with('/')));
}

#[test]
fn auxv_is_raw_pairs_ending_with_at_null() {
    let auxv = me().auxv().unwrap();
    assert_eq!(auxv.len() % 2, 0);
    assert_eq!(&auxv[auxv.len() - 2..], &[libc::AT_NULL, 0]);
    let pagesz = auxv
        .chunks_exact(2)
        .find(|p| p[0] == libc::AT_PAGESZ)
        .map(|p| p[1]);
    assert_eq!(pagesz, Some(crate::arch::page_size()));
    // SAFETY: getauxval only reads the process's own auxiliary vector.
    let entry = unsafe { libc::getauxval(libc::AT_ENTRY) };
    assert!(auxv.chunks_exact(2).any(|p| p == [libc::AT_ENTRY, entry]));
}

#[test]
fn status_and_stat_describe_this_process() {
    let p = me();
    let st = p.status().unwrap();
    assert_eq!(st.uid[0], nix::unistd::getuid().as_raw());
    assert_eq!(st.gid[1], nix::unistd::getegid().as_raw());
    assert!(st.threads >= 1);
    assert_eq!(st.tracer_pid, 0);
    assert!(st.umask.is_some());
    assert!(st.vm_rss_bytes > 0);
    let mm = p.mm_stat().unwrap();
    assert!(mm.arg_start < mm.arg_end && mm.env_start < mm.env_end);
    assert!(mm.start_code < mm.end_code);
    assert_eq!(mm.ppid, nix::unistd::getppid().as_raw());
    let tid = nix::unistd::gettid().as_raw();
    let tids = p.tasks().unwrap();
    assert_eq!(tids[0], p.pid());
    assert!(tids.contains(&tid));
    assert_eq!(p.task_status(tid).unwrap().uid, st.uid);
}

#[test]
fn fds_and_fdinfo_show_offset_flags_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"hello").unwrap();
    let fd = f.as_raw_fd();
    let p = me();
    let fds = p.fds().unwrap();
    let entry = fds.iter().find(|e| e.fd == fd).unwrap();
    assert_eq!(
        entry.target,
        FdTarget::Path {
            path: path.clone(),
            deleted: false
        }
    );
    let info = p.fdinfo(fd).unwrap();
    assert_eq!(info.pos, 5);
    assert_ne!(info.flags & libc::O_APPEND as u32, 0);
    // std opens with O_CLOEXEC, which fdinfo reports in `flags`.
    assert_ne!(info.flags & libc::O_CLOEXEC as u32, 0);
    let md = p.stat_link(&format!("fd/{fd}")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 5);

    std::fs::remove_file(&path).unwrap();
    let entry = p.fds().unwrap().into_iter().find(|e| e.fd == fd).unwrap();
    assert_eq!(
        entry.target,
        FdTarget::Path {
            path,
            deleted: true
        }
    );

    let (r, _w) = nix::unistd::pipe().unwrap();
    let entry = p
        .fds()
        .unwrap()
        .into_iter()
        .find(|e| e.fd == r.as_raw_fd())
        .unwrap();
    assert!(matches!(entry.target, FdTarget::Pipe(_)));
}

#[test]
fn pagemap_shows_touched_pages_present() {
    let ps = crate::arch::page_size() as usize;
    let mut buf = vec![0u8; 8 * ps];
    // Touch even pages only (the allocation may already be backed; the touched ones must be).
    for i in (0..8).step_by(2) {
        buf[i * ps] = 1;
    }
    let first = (buf.as_ptr() as u64).div_ceil(ps as u64);
    let pm = me().pagemap().unwrap();
    let mut entries = [0u64; 7];
    pm.read(first, &mut entries).unwrap();
    for (i, e) in entries.iter().enumerate() {
        let addr = (first + i as u64) * ps as u64;
        let touched = ((addr - buf.as_ptr() as u64) as usize / ps).is_multiple_of(2);
        if touched {
            assert_ne!(e & (1 << 63), 0, "page {i} should be present");
        }
    }
    std::hint::black_box(&buf);
}

#[test]
fn map_files_and_mem_open_for_a_mapping() {
    let p = me();
    let maps = p.smaps().unwrap();
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let m = maps
        .iter()
        .find(|m| {
            m.name
                == MapName::Path {
                    path: exe.clone(),
                    deleted: false,
                }
        })
        .unwrap();
    let f = p.open_map_file(m.start, m.end).unwrap();
    let md = f.metadata().unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.ino(), std::fs::metadata(&exe).unwrap().ino());
    assert!(p.mem().is_ok());
    assert_eq!(p.root().unwrap(), std::path::PathBuf::from("/"));
    assert_eq!(p.exe().unwrap(), exe);
    assert_eq!(p.cwd().unwrap(), std::env::current_dir().unwrap());
}

#[test]
fn touched_pages_lists_the_pages_written() {
    let ps = crate::arch::page_size();
    // A fresh private mapping: nothing present until written.
    // SAFETY: a new anonymous mapping of 8 pages, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8 * ps as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let start = base as u64;
    for i in [1u64, 2, 6] {
        // SAFETY: inside the mapping made above.
        unsafe { std::ptr::write_volatile((start + i * ps) as *mut u8, 1) };
    }
    let touched = me()
        .pagemap()
        .unwrap()
        .touched_pages(start, start + 8 * ps, ps)
        .unwrap();
    let addrs: Vec<u64> = touched.iter().map(|t| t.addr).collect();
    assert_eq!(addrs, vec![start + ps, start + 2 * ps, start + 6 * ps]);
    assert!(
        touched.iter().all(|t| t.written),
        "anonymous pages are the process's own"
    );
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(base, 8 * ps as usize) };
}

#[test]
fn touched_pages_of_a_private_file_mapping_tell_read_from_written() {
    use std::os::fd::AsRawFd;
    let ps = crate::arch::page_size();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, vec![7u8; 8 * ps as usize]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a new private mapping of the 8-page file, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8 * ps as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let start = base as u64;
    // SAFETY: inside the mapping made above.
    unsafe {
        assert_eq!(std::ptr::read_volatile((start + ps) as *const u8), 7);
        std::ptr::write_volatile((start + 5 * ps) as *mut u8, 1);
    }
    let touched = me()
        .pagemap()
        .unwrap()
        .touched_pages(start, start + 8 * ps, ps)
        .unwrap();
    let read = touched
        .iter()
        .find(|t| t.addr == start + ps)
        .expect("the read page");
    assert!(!read.written, "a page only read is the file's: {touched:?}");
    let written = touched
        .iter()
        .find(|t| t.addr == start + 5 * ps)
        .expect("the written page");
    assert!(
        written.written,
        "a written page is the process's copy: {touched:?}"
    );
    // Fault-around may map more of the file's pages; none of them counts as written.
    assert_eq!(
        touched.iter().filter(|t| t.written).count(),
        1,
        "{touched:?}"
    );
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(base, 8 * ps as usize) };
}
