//! The GC hint before the freeze: a HotSpot JVM is asked, through its attach API, for a full
//! GC that gives free heap and native memory back, so the image holds the live data and not the
//! dead. It is a hint: a JVM that cannot be asked (attach disabled, no answer in time) is dumped
//! as it is, with a warning, and the image records why.

use std::time::Duration;

use crate::images::{GcHintDone, GcHintStats};
use crate::jvm::{self, HintOptions};
use crate::proc::Proc;

/// Runs the hint when `proc` is a HotSpot JVM; says what happened.
pub(super) fn run(proc: &Proc, timeout: Duration) -> GcHintStats {
    let pid = proc.pid();
    let info = match jvm::detect(pid) {
        Ok(Some(info)) => info,
        Ok(None) => return GcHintStats::NotAJvm,
        Err(e) => return skipped(pid, e.to_string()),
    };
    let rss_before_bytes = proc.status().map(|s| s.vm_rss_bytes).unwrap_or(0);
    match jvm::gc_hint(&info, &HintOptions { timeout }) {
        Ok(report) => {
            let (committed_before, used_before) = heap(&report.heap_before);
            let (committed_after, used_after) = heap(&report.heap_after);
            crate::info!(
                1,
                "process {pid}: GC hint done in {:?}; heap committed {} -> {} KiB",
                report.elapsed,
                committed_before >> 10,
                committed_after >> 10
            );
            GcHintStats::Done(GcHintDone {
                protocol_version: report.protocol_version,
                heap_committed_before: committed_before,
                heap_used_before: used_before,
                heap_committed_after: committed_after,
                heap_used_after: used_after,
                native_trim: report.native_trim,
                rss_before_bytes,
                elapsed_us: report.elapsed.as_micros() as u64,
            })
        }
        Err(e) => skipped(pid, e.to_string()),
    }
}

fn heap(usage: &Option<jvm::HeapUsage>) -> (u64, u64) {
    usage
        .as_ref()
        .map_or((0, 0), |h| (h.committed_bytes, h.used_bytes))
}

fn skipped(pid: i32, reason: String) -> GcHintStats {
    crate::warn!("process {pid}: no GC hint, dumping the JVM as it is: {reason}");
    GcHintStats::Skipped { reason }
}
