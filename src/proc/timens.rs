//! The clock offsets of a time namespace (`/proc/PID/timens_offsets`). The procfs crate does
//! not read this file.
//!
//! The file shows the namespace a process's future children get (`ns/time_for_children`),
//! which is its own unless it unshared a time namespace and has not forked since; a dump
//! refuses that case, so for a dumped process it shows its own namespace's offsets.

use super::ProcError;

/// How far a time namespace's clocks are set from the host's, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockOffsets {
    pub monotonic_ns: i64,
    pub boottime_ns: i64,
}

/// The offsets `/proc/PID/timens_offsets` shows (`None`: crest's own, `/proc/self`); zero on a
/// kernel without time namespaces.
pub fn time_offsets(pid: Option<i32>) -> Result<ClockOffsets, ProcError> {
    let (path, who) = match pid {
        Some(p) => (format!("/proc/{p}/timens_offsets"), p),
        None => (
            "/proc/self/timens_offsets".to_string(),
            std::process::id() as i32,
        ),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|detail| ProcError::Parse { path, detail }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && super::pid_in_use(who) => {
            Ok(ClockOffsets::default())
        }
        Err(e) => Err(ProcError::io(who, "timens_offsets", e)),
    }
}

/// Parses lines "monotonic SECS NSECS" and "boottime SECS NSECS" (SECS may be negative, NSECS
/// is in 0..1e9).
fn parse(text: &str) -> Result<ClockOffsets, String> {
    let mut out = ClockOffsets::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [clock, secs, nsecs] = words[..] else {
            return Err(format!(
                "the line {line:?} is not \"CLOCK SECONDS NANOSECONDS\""
            ));
        };
        let secs: i64 = secs
            .parse()
            .map_err(|_| format!("seconds {secs:?} in {line:?} are not a number"))?;
        let nsecs: i64 = nsecs
            .parse()
            .ok()
            .filter(|n| (0..1_000_000_000).contains(n))
            .ok_or_else(|| format!("nanoseconds {nsecs:?} in {line:?} are not in 0..1e9"))?;
        let ns = secs
            .checked_mul(1_000_000_000)
            .and_then(|s| s.checked_add(nsecs))
            .ok_or_else(|| format!("the offset in {line:?} is out of range"))?;
        match clock {
            "monotonic" => out.monotonic_ns = ns,
            "boottime" => out.boottime_ns = ns,
            // A clock a later kernel may add: not one crest carries.
            _ => {}
        }
    }
    Ok(out)
}

/// The line `/proc/PID/timens_offsets` takes to set `clock` (a name it shows) `ns` away from
/// the host's.
pub fn offset_line(clock: &str, ns: i64) -> String {
    format!(
        "{clock} {} {}\n",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_with_negative_seconds() {
        let text = "monotonic        -100 250000000\nboottime            7         0\n";
        assert_eq!(
            parse(text).unwrap(),
            ClockOffsets {
                monotonic_ns: -99_750_000_000,
                boottime_ns: 7_000_000_000,
            }
        );
        assert!(parse("monotonic 1\n").is_err());
        assert!(parse("monotonic 1 1000000000\n").is_err());
    }

    #[test]
    fn offset_lines_read_back_as_written() {
        for ns in [-99_750_000_000i64, -1, 0, 1, 5_000_000_001] {
            let line = offset_line("monotonic", ns);
            assert_eq!(parse(&line).unwrap().monotonic_ns, ns, "{line}");
        }
    }

    #[test]
    fn crest_reads_its_own_offsets() {
        // Whatever namespace the tests run in, the file reads.
        time_offsets(None).expect("read /proc/self/timens_offsets");
    }
}
