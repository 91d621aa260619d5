//! `crest check`, `crest show` (text and JSON), `crest verify`, and the image directory itself:
//! modes 0700/0600, and a dump into an existing directory replaces it whole.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn check_exits_zero_and_lists_what_crest_relies_on() {
    let out = crest(["check"]);
    out.assert_ok();
    let text = out.stdout.to_lowercase();
    for feature in [
        "ptrace_seize",
        "ptrace_get_rseq_configuration",
        "clone3",
        "network lock (nftables)",
        "pagemap",
        "process_vm_readv",
        "pidfd_getfd",
        "cap_checkpoint_restore",
        "cap_sys_ptrace",
    ] {
        assert!(
            text.contains(feature),
            "crest check does not mention {feature}: {out}"
        );
    }
}

/// Whether some object in `v` has a key naming a pid whose value is `pid`.
fn json_mentions_pid(v: &serde_json::Value, pid: i64) -> bool {
    match v {
        serde_json::Value::Object(map) => map.iter().any(|(k, val)| {
            (k.contains("pid") && val.as_i64() == Some(pid)) || json_mentions_pid(val, pid)
        }),
        serde_json::Value::Array(items) => items.iter().any(|i| json_mentions_pid(i, pid)),
        _ => false,
    }
}

#[test]
fn show_verify_and_the_image_directory() {
    let v = Victim::start(Kind::Memcheck);
    let dir = v.work.join("img");

    // A dump into an existing directory replaces it whole: nothing of the old content stays.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("stale.img"), b"from an older dump").unwrap();
    dump(v.pid, &dir, true).assert_ok();
    assert!(
        !dir.join("stale.img").exists(),
        "the dump kept a file of the old directory"
    );

    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "image directory mode {mode:o}");
    let files = image_files(&dir);
    assert!(
        files.len() >= 3,
        "expected inventory, process and page files: {files:?}"
    );
    for f in &files {
        let meta = std::fs::symlink_metadata(f).unwrap();
        assert!(meta.is_file(), "{} is not a regular file", f.display());
        let mode = meta.permissions().mode() & 0o777;
        // Page files are read-only: a `--pages map` restore keeps them mapped.
        let want = if is_page_file(f) { 0o400 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", f.display());
    }

    let text = crest(["show".as_ref(), dir.as_os_str()]);
    text.assert_ok();
    assert!(
        text.stdout.contains(&v.pid_str()),
        "crest show does not mention the pid: {text}"
    );

    let json = crest(["show".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    json.assert_ok();
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("crest show --json is not JSON ({e}): {json}"));
    assert!(
        json_mentions_pid(&parsed, v.pid as i64),
        "the JSON does not carry the pid: {json}"
    );

    crest(["verify".as_ref(), dir.as_os_str()]).assert_ok();

    // A second dump into the same directory: again one complete, consistent image.
    dump(v.pid, &dir, true).assert_ok();
    crest(["verify".as_ref(), dir.as_os_str()]).assert_ok();
    v.verify().expect("victim verifies after two -R dumps");
    // ... and no temporary or replaced directory left beside it.
    let mut entries: Vec<String> = std::fs::read_dir(&v.work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["ctl", "img"], "leftovers beside the image");
}
