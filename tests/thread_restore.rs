//! How the restorer's threads come back (issue #12): the restorer creates them untraced, each
//! waits until crest traces it, and crest catches it after its rt_sigreturn. A thread that
//! fails its own setup takes its process with it and the restore names that thread and step;
//! the undamaged image then restores (so a restore that fails everything cannot pass). A
//! process with 300 threads comes back whole, twice, their masks with SIGTRAP blocked or not
//! as they were.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use crest::images::{self, ImageWriter, RseqRegistration};

/// Copies the image in `good` to `bad`, with the rseq area of the thread at index `thread`
/// of the root moved to `addr`: an address the image validates (aligned, in user space) but
/// where nothing is mapped, so that thread's rseq registration fails with EFAULT in the
/// restorer.
fn with_thread_rseq_at(good: &Path, bad: &Path, thread: usize, addr: u64) -> i32 {
    let image = images::open_image(good).expect("the good image opens");
    let mut p = image.processes[0].clone();
    let tid = p.threads[thread].tid;
    let size = p.threads[thread].rseq.map_or(32, |r| r.abi_size);
    p.threads[thread].rseq = Some(RseqRegistration {
        abi_pointer: addr,
        abi_size: size,
        signature: p.threads[thread].rseq.map_or(0, |r| r.signature),
    });
    let mut w = ImageWriter::create(bad).expect("creating the damaged image");
    let mut pages = w.page_file(&p.pages_file).expect("page file");
    pages
        .write_all(&fs::read(image.pages_path(&p)).expect("reading the page file"))
        .expect("writing the page file");
    w.finish_page_file(pages).expect("finishing the page file");
    w.write_process(&p).expect("writing the process");
    w.commit(image.inventory.clone())
        .expect("committing the damaged image");
    tid
}

#[test]
fn a_thread_failing_its_setup_is_named_and_nothing_is_left() {
    let mut v = Victim::start(Kind::MThreads);
    v.verify().expect("victim verifies before the dump");
    let good = v.work.join("good");
    dump(v.pid, &good, false).assert_ok();
    v.reap();
    let image = images::open_image(&good).expect("the good image opens");
    let p = &image.processes[0];
    assert!(
        p.threads.len() > 3,
        "mthreads has {} threads",
        p.threads.len()
    );
    // Above every mapping of the image and below the top of user space: not mapped.
    let unmapped = p
        .vmas
        .iter()
        .map(|m| m.end)
        .max()
        .unwrap()
        .next_multiple_of(1 << 20)
        + (1 << 20);
    let bad = v.work.join("bad");
    let tid = with_thread_rseq_at(&good, &bad, 3, unmapped);

    let out = restore_detached(&bad, &[]);
    assert!(!out.success(), "the damaged image restored: {out}");
    out.assert_failed();
    assert!(
        out.stderr.contains(&format!("in thread {tid}")) && out.stderr.contains("Bad address"),
        "the error names thread {tid} and its errno: {out}"
    );
    assert_no_process(v.pid, "after the failed restore");
    for t in &p.threads {
        assert_no_process(t.tid, "a thread of the failed restore");
    }

    let before = v.last_logged();
    restore_detached(&good, &[]).assert_ok();
    v.mark_restored();
    v.wait_logging_after(before);
    v.assert_running();
    v.verify()
        .expect("the undamaged image restores and verifies");
}

#[test]
fn three_hundred_threads_come_back_whole_masks_included() {
    let mut v = Victim::start(Kind::ManyThreads);
    v.verify().expect("victim verifies before the dump");
    let before = thread_ids(v.pid);
    assert_eq!(before.len(), 300, "the victim's threads");
    for cycle in 1..=2 {
        let dir = v.work.join(format!("img{cycle}"));
        v.dump_restore_verify(&dir, &format!("cycle {cycle}: after the restore"));
        assert_eq!(
            thread_ids(v.pid),
            before,
            "cycle {cycle}: the same thread ids"
        );
    }
}
