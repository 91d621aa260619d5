//! The environment a bench ran in, recorded with its figures: kernel, CPU model and count,
//! memory, load average, the JDK when the workload is a Java one, the page-cache state.

use serde_json::{json, Value};

/// The load average now (1, 5, 15 minutes).
pub fn loadavg() -> String {
    crate::proc::bench::loadavg()
}

/// What the bench records about the machine; `jdk` when the workload runs on one; `cache` says
/// which page-cache states were measured.
pub fn collect(jdk: Option<&str>, evict: bool, criu: Option<&str>) -> Value {
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| {
            format!(
                "{} {} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    json!({
        "kernel": kernel,
        "cpu_model": crate::proc::bench::cpu_model(),
        "cpus": cpus,
        "memory_mib": crate::proc::bench::mem_total_mib(),
        "load_average_start": loadavg(),
        "crest": format!("crest {}", env!("CARGO_PKG_VERSION")),
        "jdk": jdk,
        "criu": criu,
        "cache": if evict {
            "warm and evicted: each restore method also runs with its image dropped from the page cache (posix_fadvise DONTNEED) before each restore"
        } else {
            "warm: images left in the page cache as written by the dump"
        },
    })
}
