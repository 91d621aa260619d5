//! `crest restore --pages map`: private anonymous memory mapped copy-on-write from the page
//! files (src/mapped/), the image's safety while a process maps it, and chains of images.

mod common;

use std::path::Path;

use common::*;

/// The page files a process maps, from its /proc/PID/maps (" (deleted)" kept).
fn mapped_page_files(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut out: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(|_| l))
        .map(|l| {
            // The path is everything after the fifth field (it may contain " (deleted)").
            let mut rest = l;
            for _ in 0..5 {
                rest = rest.trim_start();
                rest = &rest[rest.find(' ').unwrap_or(rest.len())..];
            }
            rest.trim().to_string()
        })
        .filter(|p| {
            Path::new(p.trim_end_matches(" (deleted)"))
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pages-") && n.ends_with(".img"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Restores `dir` detached with mapped pages and checks the process maps its page file.
fn restore_mapped(v: &mut Victim, dir: &Path) {
    restore_detached(dir, &["--pages", "map"]).assert_ok();
    v.mark_restored();
    let page_file = dir.join(format!("pages-{}.img", v.pid));
    let page_file = std::fs::canonicalize(&page_file).unwrap_or(page_file);
    assert_eq!(
        mapped_page_files(v.pid),
        [page_file.to_string_lossy().into_owned()],
        "the restored process maps its page file, and only that one"
    );
}

fn page_file_mode(dir: &Path, pid: i32) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(dir.join(format!("pages-{pid}.img")))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn memcheck_restored_with_mapped_pages_verifies_its_memory_twice() {
    let mut v = Victim::start(Kind::Memcheck);
    let first = v.work.join("img1");
    dump(v.pid, &first, false).assert_ok();
    v.reap();
    assert_eq!(
        page_file_mode(&first, v.pid),
        0o400,
        "page files are read-only"
    );
    let before = v.last_logged();
    restore_mapped(&mut v, &first);
    v.wait_logging_after(before);
    v.verify()
        .expect("memcheck restored with mapped pages verifies");

    // A second cycle from a dump of the mapped process, again mapped.
    let second = v.work.join("img2");
    dump(v.pid, &second, false).assert_ok();
    v.reap();
    let before = v.last_logged();
    restore_mapped(&mut v, &second);
    v.wait_logging_after(before);
    v.verify()
        .expect("verifies after the second mapped restore");
    v.assert_log_consecutive();
    v.kill();
}

/// Three checkpoints in a row, each restored with mapped pages, each earlier image deleted
/// before the next restore: every image is self-contained.
#[test]
fn a_chain_of_three_mapped_restores_survives_deleting_each_earlier_image() {
    let mut v = Victim::start(Kind::Memcheck);
    let first = v.work.join("chain1");
    dump(v.pid, &first, false).assert_ok();
    v.reap();
    let mut current = first;
    for step in 2..=4 {
        let before = v.last_logged();
        restore_mapped(&mut v, &current);
        v.wait_logging_after(before);
        v.verify()
            .unwrap_or_else(|e| panic!("step {step}: mapped restore does not verify: {e}"));
        if step == 4 {
            break;
        }
        let next = v.work.join(format!("chain{step}"));
        dump(v.pid, &next, false).assert_ok();
        v.reap();
        // Every page of the mapped memory is stored again (those never touched since the
        // restore are the image's content, not zeros): the new image is as large as the old.
        let (old_size, new_size) = (image_size(&current), image_size(&next));
        assert!(
            new_size >= old_size - old_size / 10,
            "step {step}: the new image ({new_size} bytes) lost pages of the old ({old_size})"
        );
        // The new image must not need the old one.
        std::fs::remove_dir_all(&current).unwrap();
        let shown = show_json(&next);
        assert!(
            !shown.to_string().contains(&format!("chain{}", step - 1)),
            "step {step}: the new image names the old one: {shown}"
        );
        current = next;
    }
    v.assert_log_consecutive();
    v.kill();
}

/// The image a process was restored from (mapped) is replaced by a new dump into the same
/// directory, then deleted: the running process's memory stays intact (the mapped inode lives
/// on), and the new image restores.
#[test]
fn replacing_or_deleting_the_image_of_a_mapped_process_leaves_its_memory_intact() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    restore_mapped(&mut v, &dir);
    v.verify().expect("verifies after the mapped restore");

    // Dump again into the same directory, leaving it running.
    dump(v.pid, &dir, true).assert_ok();
    v.verify()
        .expect("verifies after its image was replaced under it");
    let files = mapped_page_files(v.pid);
    assert!(
        files.len() == 1 && files[0].ends_with(" (deleted)"),
        "the process still maps the old (now deleted) page file: {files:?}"
    );

    // Delete the new image too (the process maps the old one, already gone).
    let copy = v.work.join("img-copy");
    copy_image(&dir, &copy);
    std::fs::remove_dir_all(&dir).unwrap();
    v.verify().expect("verifies after its image was deleted");

    // The image dumped from the mapped process restores on its own.
    v.kill();
    let before = v.last_logged();
    restore_mapped(&mut v, &copy);
    v.wait_logging_after(before);
    v.verify()
        .expect("the image dumped from the mapped process verifies");
    v.kill();
}

/// `--pages map` with `--lazy-pages`: refused before anything is touched.
#[test]
fn mapped_and_lazy_pages_at_once_are_refused() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let out = crest([
        "restore",
        "-D",
        dir.to_str().unwrap(),
        "--pages",
        "map",
        "--lazy-pages",
    ]);
    out.assert_failed();
    assert_no_process(v.pid, "a refused restore");
}

/// A private file mapping on a noexec filesystem can never be made executable (a JIT would
/// fail later): refused before any fork. The image is copied onto a noexec tmpfs mounted in a
/// mount namespace of the restore's own (gone with it).
#[test]
fn mapped_pages_from_a_noexec_filesystem_are_refused() {
    let mut v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    let mnt = v.work.join("noexec");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o noexec crest-test '{m}' && cp -a '{d}' '{m}/img' && \
         exec '{crest}' restore -d -D '{m}/img' --pages map",
        m = mnt.display(),
        d = dir.display(),
        crest = crest_bin()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a noexec image was mapped: {stderr}");
    assert!(
        stderr.contains("which is on a filesystem mounted noexec"),
        "unexpected message: {stderr}"
    );
    assert_no_process(v.pid, "a refused mapped restore");
}
