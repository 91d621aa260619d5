//! Damaged images are refused with a message before any process is created: a flipped byte in
//! any metadata file, a page file of the wrong size, a wrong format version, and (with
//! `--verify` or `crest verify`) a flipped byte of page data. Every test ends by restoring the
//! undamaged image, so a restore that refuses everything cannot pass.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A memcheck victim dumped (and so killed, and reaped: its pid is free) into `work/good`.
fn good_image() -> (Victim, PathBuf) {
    let mut v = Victim::start(Kind::Memcheck);
    v.verify().expect("victim verifies before the dump");
    let dir = v.work.join("good");
    dump(v.pid, &dir, false).assert_ok();
    v.reap();
    (v, dir)
}

/// Restores `dir` expecting a refusal; checks that no process got the image's pid.
fn assert_restore_refused(v: &Victim, dir: &Path, extra: &[&str], what: &str) -> CrestOutput {
    let out = restore_detached(dir, extra);
    assert_no_process(v.pid, what);
    assert!(!out.success(), "{what}: restore succeeded: {out}");
    out.assert_failed();
    out
}

fn assert_verify_refused(dir: &Path, what: &str) {
    let out = crest(["verify".as_ref(), dir.as_os_str()]);
    assert!(!out.success(), "{what}: crest verify accepted it: {out}");
    out.assert_failed();
}

/// The positive control: the undamaged image restores and the process checks out.
fn restore_good(v: &mut Victim, good: &Path) {
    let before = v.last_logged();
    restore_detached(good, &["--verify"]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.assert_running();
    v.verify()
        .expect("the undamaged image restores to a process that verifies");
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_flipped_byte_in_any_metadata_file_is_refused() {
    let (mut v, good) = good_image();
    let bad = v.work.join("bad");
    let meta: Vec<PathBuf> = image_files(&good)
        .into_iter()
        .filter(|p| !is_page_file(p))
        .collect();
    let names: Vec<String> = meta.iter().map(|p| name(p)).collect();
    assert!(
        names.contains(&"inventory.img".to_string()),
        "no inventory.img in {names:?}"
    );
    assert!(
        names.contains(&format!("process-{}.img", v.pid)),
        "no process-{}.img in {names:?}",
        v.pid
    );

    for file in &meta {
        let len = std::fs::metadata(file).unwrap().len();
        assert!(len > 0, "{} is empty", file.display());
        let mut offsets = vec![0, len / 3, len / 2, len - 1];
        offsets.dedup();
        for off in offsets {
            copy_image(&good, &bad);
            flip_byte(&bad.join(name(file)), off);
            let what = format!("{} with byte {off} of {len} flipped", name(file));
            assert_restore_refused(&v, &bad, &[], &what);
            assert_verify_refused(&bad, &what);
        }
    }
    restore_good(&mut v, &good);
}

#[test]
fn a_page_file_of_the_wrong_size_is_refused() {
    let (mut v, good) = good_image();
    let bad = v.work.join("bad");
    let pages: Vec<PathBuf> = image_files(&good)
        .into_iter()
        .filter(|p| is_page_file(p))
        .collect();
    assert_eq!(pages.len(), 1, "one page file expected: {pages:?}");
    let file = name(&pages[0]);
    let len = std::fs::metadata(&pages[0]).unwrap().len();
    assert!(len > 8192, "the page file holds only {len} bytes");

    for new_len in [len - 1, len - 4096, len / 2, 0, len + 1, len + 4096] {
        copy_image(&good, &bad);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(bad.join(&file))
            .unwrap();
        f.set_len(new_len).unwrap();
        drop(f);
        let what = format!("{file} resized from {len} to {new_len} bytes");
        assert_restore_refused(&v, &bad, &[], &what);
        assert_verify_refused(&bad, &what);
        assert_show_warns(&bad, &v, &file, &what);
    }
    // A missing page file: the same.
    copy_image(&good, &bad);
    std::fs::remove_file(bad.join(&file)).unwrap();
    let what = format!("{file} removed");
    assert_restore_refused(&v, &bad, &[], &what);
    assert_verify_refused(&bad, &what);
    assert_show_warns(&bad, &v, &file, &what);
    restore_good(&mut v, &good);
}

/// `crest show` needs only the metadata: it shows an image whose page file `file` is damaged,
/// saying so on stderr.
fn assert_show_warns(dir: &Path, v: &Victim, file: &str, what: &str) {
    let out = crest(["show".as_ref(), dir.as_os_str()]);
    assert!(out.success(), "{what}: crest show failed: {out}");
    assert!(
        out.stdout.contains(&format!("process {}", v.pid)),
        "{what}: crest show did not show the process: {out}"
    );
    assert!(
        out.stderr.contains("the page data is damaged") && out.stderr.contains(file),
        "{what}: crest show did not say the page file is damaged: {out}"
    );
}

#[test]
fn a_flipped_byte_of_page_data_is_refused_by_verify() {
    let (mut v, good) = good_image();
    let bad = v.work.join("bad");
    let pages: Vec<PathBuf> = image_files(&good)
        .into_iter()
        .filter(|p| is_page_file(p))
        .collect();
    assert_eq!(pages.len(), 1, "one page file expected: {pages:?}");
    let file = name(&pages[0]);
    let len = std::fs::metadata(&pages[0]).unwrap().len();

    for off in [0, len / 2, len - 1] {
        copy_image(&good, &bad);
        flip_byte(&bad.join(&file), off);
        let what = format!("{file} with byte {off} of {len} flipped");
        // A plain restore does not read the page data's checksums (that costs restore time),
        // so only the verifying paths are required to notice.
        assert_restore_refused(&v, &bad, &["--verify"], &what);
        assert_verify_refused(&bad, &what);
    }
    crest(["verify".as_ref(), good.as_os_str()]).assert_ok();
    restore_good(&mut v, &good);
}

#[test]
fn a_wrong_format_version_is_refused() {
    let (mut v, good) = good_image();
    let bad = v.work.join("bad");
    copy_image(&good, &bad);
    // inventory.img starts with an 8-byte magic and a little-endian u32 format version. The
    // patch also breaks the inventory's checksum: either complaint is a clear refusal.
    let inv = bad.join("inventory.img");
    let mut bytes = std::fs::read(&inv).unwrap();
    assert!(bytes.len() > 12);
    bytes[8..12].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    std::fs::write(&inv, bytes).unwrap();

    let out = assert_restore_refused(&v, &bad, &[], "inventory with format version 0xfffffffe");
    let msg = out.stderr.to_lowercase();
    assert!(
        msg.contains("version") || msg.contains("checksum"),
        "the refusal should say what is wrong: {out}"
    );
    restore_good(&mut v, &good);
}
