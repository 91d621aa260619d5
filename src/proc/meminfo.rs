//! `/proc/meminfo`: how much memory the machine can still give without swapping.

use super::ProcError;

/// `MemAvailable` in bytes: what can be allocated without swapping, page cache that can be
/// dropped included (kernels without the field report free memory instead).
pub fn mem_available() -> Result<u64, ProcError> {
    use procfs::Current;
    let info = procfs::Meminfo::current().map_err(|e| ProcError::Parse {
        path: "/proc/meminfo".into(),
        detail: e.to_string(),
    })?;
    Ok(info.mem_available.unwrap_or(info.mem_free))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_running_machine_has_some_memory_available() {
        let avail = super::mem_available().unwrap();
        assert!(avail > 0);
    }
}
