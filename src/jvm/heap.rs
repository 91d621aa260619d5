//! Reading committed and used heap out of `GC.heap_info`, whose wording differs by collector and
//! JDK release:
//!
//! ```text
//! JDK 17 G1:       garbage-first heap   total 133120K, used 35512K [0x..., 0x...)
//! JDK 25 G1:       garbage-first heap   total reserved 1048576K, committed 389120K, used 150239K [...]
//! Parallel:        PSYoungGen      total 210432K, used 173531K [...]
//!                  ParOldGen       total 258048K, used 18574K [...]
//! Serial (17/25):  def new generation / DefNew   total 116224K, used 43041K [...]
//!                  tenured generation / Tenured  total 258048K, used 34014K [...]
//! Shenandoah:      6028M max, 6028M soft max, 1046M committed, 338M used
//! ZGC:             ZHeap           used 356M, capacity 378M, max capacity 6028M
//! JDK 17 also:     Metaspace       used 173K, committed 384K, reserved 1114112K   (not heap)
//! ```
//!
//! Each line that names both a committed size (`total N`, `committed N`, `N committed`,
//! `capacity N`) and a used size (`used N`, `N used`) counts once; the heap is the sum over such
//! lines (Parallel and Serial print one line per generation). `total reserved` (JDK 25's G1)
//! and `max capacity` are reservations, not commitments. Sub-space lines such as
//! `eden space 194560K, 81% used` name no used size and so do not count twice. Metaspace and
//! its class space are not heap.

use super::HeapUsage;

/// A size such as `35512K`, `356M` or `2G`, in bytes. A bare number is not a size: `3 young`.
fn size(word: &str) -> Option<u64> {
    let unit_at = word.len().checked_sub(1)?;
    if !word.is_char_boundary(unit_at) {
        return None;
    }
    let (digits, unit) = word.split_at(unit_at);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let shift = match unit {
        "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// (committed, used) named on one line, if it names both. The line is read as comma-separated
/// clauses: `committed 389120K` (a keyword, then its size) or `1046M committed` (a clause that
/// starts with the size: Shenandoah's wording).
fn line_usage(line: &str) -> Option<(u64, u64)> {
    if matches!(
        line.split_whitespace().next(),
        Some("Metaspace") | Some("class")
    ) {
        return None;
    }
    let (mut committed, mut used) = (None, None);
    for clause in line.split(',') {
        let words: Vec<&str> = clause.split_whitespace().collect();
        if let [first, second, ..] = words[..] {
            if let Some(n) = size(first) {
                match second {
                    "committed" => {
                        committed.get_or_insert(n);
                    }
                    "used" => {
                        used.get_or_insert(n);
                    }
                    _ => {}
                }
                continue;
            }
        }
        for (i, pair) in words.windows(2).enumerate() {
            let after_max = i > 0 && words[i - 1] == "max";
            let slot = match pair[0] {
                "total" | "committed" | "capacity" if !after_max => &mut committed,
                "used" => &mut used,
                _ => continue,
            };
            if let Some(n) = size(pair[1]) {
                slot.get_or_insert(n);
            }
        }
    }
    Some((committed?, used?))
}

/// The heap's committed and used bytes from `GC.heap_info` output; `None` when no line names
/// both (an unknown collector or wording).
pub fn parse_heap_info(text: &str) -> Option<HeapUsage> {
    let mut total: Option<HeapUsage> = None;
    for (committed, used) in text.lines().filter_map(line_usage) {
        let t = total.get_or_insert(HeapUsage {
            committed_bytes: 0,
            used_bytes: 0,
        });
        t.committed_bytes += committed;
        t.used_bytes += used;
    }
    total
}

/// The address ranges the heap reserves, from the `[low, ..., high)` at the end of each line
/// [`parse_heap_info`] counts: G1 prints `[start, end)` for the whole heap, Parallel and Serial
/// `[low, committed high, reserved high)` per generation.
pub fn parse_heap_ranges(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter(|l| line_usage(l).is_some())
        .filter_map(|l| {
            let inner = &l[l.rfind('[')? + 1..];
            let inner = &inner[..inner.find(')')?];
            let addrs: Vec<u64> = inner
                .split(',')
                .map(|a| u64::from_str_radix(a.trim().strip_prefix("0x")?, 16).ok())
                .collect::<Option<_>>()?;
            let (&low, &high) = (addrs.first()?, addrs.last()?);
            (addrs.len() >= 2 && low < high).then_some((low, high))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(committed_k: u64, used_k: u64) -> Option<HeapUsage> {
        Some(HeapUsage {
            committed_bytes: committed_k << 10,
            used_bytes: used_k << 10,
        })
    }

    #[test]
    fn g1_on_jdk17_skips_metaspace() {
        let text =
            "12345:\n garbage-first heap   total 1191936K, used 372660K [0x0000000687400000, \
                    0x0000000800000000)\n  region size 4096K, 80 young (327680K), 0 survivors \
                    (0K)\n Metaspace       used 173K, committed 384K, reserved 1114112K\n  class \
                    space    used 6K, committed 128K, reserved 1048576K\n";
        assert_eq!(parse_heap_info(text), usage(1191936, 372660));
    }

    #[test]
    fn g1_on_jdk25_takes_committed_not_reserved() {
        let text = "garbage-first heap   total reserved 1048576K, committed 389120K, used \
                    150239K [0x00000000c0000000, 0x0000000100000000)\n region size 1024K, 3 \
                    young (3072K), 1 survivors (1024K)\n";
        assert_eq!(parse_heap_info(text), usage(389120, 150239));
    }

    #[test]
    fn generational_collectors_sum_their_generations() {
        let parallel = "PSYoungGen      total 210432K, used 173531K [0x0000000782700000, \
                        0x0000000790400000, 0x0000000800000000)\n eden space 194560K, 81% used \
                        [0x0000000782700000,0x000000078c15ac98,0x000000078e500000)\n from space \
                        15872K, 97% used [0x0,0x0,0x0)\nParOldGen       total 258048K, used \
                        18574K [0x0, 0x0, 0x0)\n object space 258048K, 7% used [0x0,0x0,0x0)\n";
        assert_eq!(
            parse_heap_info(parallel),
            usage(210432 + 258048, 173531 + 18574)
        );
        let serial17 = "  def new generation   total 116160K, used 8264K [0x0, 0x0, 0x0)\n   eden \
                        space 103296K,   8% used [0x0, 0x0, 0x0)\n  tenured generation   total \
                        258048K, used 0K [0x0, 0x0, 0x0)\n    the space 258048K,   0% used [0x0, \
                        0x0, 0x0, 0x0)\n";
        assert_eq!(parse_heap_info(serial17), usage(116160 + 258048, 8264));
        let serial25 = "DefNew     total 116224K, used 43041K [0x0, 0x0, 0x0)\nTenured    total \
                        258048K, used 34014K [0x0, 0x0, 0x0)\n";
        assert_eq!(
            parse_heap_info(serial25),
            usage(116224 + 258048, 43041 + 34014)
        );
    }

    #[test]
    fn shenandoah_and_zgc_wordings() {
        let shenandoah = "Shenandoah Heap\n 6028M max, 6028M soft max, 1046M committed, 338M \
                          used\n 3014 x 2048 K regions\n";
        assert_eq!(parse_heap_info(shenandoah), usage(1046 << 10, 338 << 10));
        let z = " ZHeap           used 356M, capacity 378M, max capacity 6028M\n Cache 22M (1)\n";
        assert_eq!(parse_heap_info(z), usage(378 << 10, 356 << 10));
    }

    #[test]
    fn heap_ranges() {
        let g1 = " garbage-first heap   total 39936K, used 33917K [0x00000000c0000000, \
                  0x0000000100000000)\n  region size 1024K, 0 young (0K), 0 survivors (0K)\n";
        assert_eq!(parse_heap_ranges(g1), vec![(0xc000_0000, 0x1_0000_0000)]);
        let parallel = "PSYoungGen      total 210432K, used 173531K [0x0000000782700000, \
                        0x0000000790400000, 0x0000000800000000)\n eden space 194560K, 81% used \
                        [0x0000000782700000,0x000000078c15ac98,0x000000078e500000)\nParOldGen \
                        total 258048K, used 18574K [0x0000000687400000, 0x0000000697000000, \
                        0x0000000782700000)\n";
        assert_eq!(
            parse_heap_ranges(parallel),
            vec![
                (0x7_8270_0000, 0x8_0000_0000),
                (0x6_8740_0000, 0x7_8270_0000)
            ]
        );
        // No brackets (Shenandoah, ZGC) or bad ones: no ranges.
        assert!(parse_heap_ranges(" 6028M max, 1046M committed, 338M used\n").is_empty());
        assert!(parse_heap_ranges("total 1K, used 1K [0x10, zz)\n").is_empty());
        assert!(parse_heap_ranges("total 1K, used 1K [0x20, 0x10)\n").is_empty());
        assert!(parse_heap_ranges("total 1K, used 1K [0x20\n").is_empty());
    }

    #[test]
    fn nothing_to_read_is_none() {
        assert_eq!(parse_heap_info(""), None);
        assert_eq!(
            parse_heap_info("Epsilon Heap\n Allocation space:\n  space 385684K,  88% used\n"),
            None
        );
        assert_eq!(
            parse_heap_info("total K, used 5\nused 99999999999999999999K"),
            None
        );
        assert_eq!(size("12"), None);
        assert_eq!(size("K"), None);
        assert_eq!(size("12k"), None);
        assert_eq!(size("3G"), Some(3 << 30));
        assert_eq!(size("3µ"), None);
    }
}
