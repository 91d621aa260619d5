//! How far the restored processes have loaded their memory, as a progress bar on a terminal
//! when a restore takes long ([`crate::progress`]). Each restorer reads its page file with
//! pread(2), which the kernel counts in /proc/PID/io (`rchar`, from 0 for a forked process), so
//! crest watches from outside and the restorer blob needs no channel for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::proc::Proc;
use crate::progress::Progress;

/// How often the counters are read.
const POLL: Duration = Duration::from_millis(50);

/// A thread polling the restored processes' read counters into a bar, until stopped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Watches `pids` load `total` bytes of page data. Without a terminal nothing is drawn,
    /// and no thread is started.
    pub fn start(pids: Vec<i32>, total: u64) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Progress::bytes("loading memory", total);
        if !progress.is_drawn_somewhere() || total == 0 {
            return Watch { stop, thread: None };
        }
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("crest-loading".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let read: u64 = pids
                        .iter()
                        .filter_map(|&pid| Proc::open(pid).and_then(|p| p.bytes_read()).ok())
                        .sum();
                    progress.set(read.min(total));
                    std::thread::sleep(POLL);
                }
                progress.finish();
            })
            .ok();
        Watch { stop, thread }
    }

    /// Stops watching (every process has loaded its memory, or the restore failed) and clears
    /// the bar.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.end();
    }
}
