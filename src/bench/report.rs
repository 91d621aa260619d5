//! The results of a bench and their forms: the terminal table (like hyperfine's), JSON, CSV
//! and Markdown.

use serde_json::{json, Value};

use super::stats::Summary;

/// Whether a restore read its image from the page cache or from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// The image (or, for a start, the program's files) as left in the page cache.
    Warm,
    /// The image files dropped from the page cache before each restore.
    Evicted,
}

impl Cache {
    pub fn name(self) -> &'static str {
        match self {
            Cache::Warm => "warm",
            Cache::Evicted => "evicted",
        }
    }
}

/// Figures of the checkpoint a method restores.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpFigures {
    /// From starting the dump command to its exit.
    pub wall_ms: f64,
    /// How long the workload was frozen, when the tool says.
    pub frozen_ms: Option<f64>,
    pub image_bytes: u64,
}

/// One row: a method (in one cache state) and its samples.
#[derive(Debug, Clone)]
pub struct MethodResult {
    pub method: String,
    pub cache: Cache,
    /// Ready times in ms, one per successful run.
    pub samples_ms: Vec<f64>,
    /// Runs attempted.
    pub attempted: usize,
    /// Why it (or some of its runs) failed.
    pub error: Option<String>,
    pub dump: Option<DumpFigures>,
    /// The command line each timed run spawns.
    pub how: Option<String>,
}

impl MethodResult {
    pub fn new(method: &str, cache: Cache) -> MethodResult {
        MethodResult {
            method: method.to_string(),
            cache,
            samples_ms: Vec::new(),
            attempted: 0,
            error: None,
            dump: None,
            how: None,
        }
    }

    /// `crest-copy` or `crest-copy (evicted)`.
    pub fn label(&self) -> String {
        match self.cache {
            Cache::Warm => self.method.clone(),
            Cache::Evicted => format!("{} (evicted)", self.method),
        }
    }

    pub fn summary(&self) -> Option<Summary> {
        Summary::of(&self.samples_ms)
    }

    /// Records a failed run (the first message is kept, with a count of the failures).
    pub fn fail(&mut self, why: String) {
        self.error = Some(match self.error.take() {
            None => why,
            Some(first) => first,
        });
    }

    /// The error as reported: with how many runs failed when some succeeded.
    pub fn error_text(&self) -> Option<String> {
        let e = self.error.as_ref()?;
        let failed = self.attempted.saturating_sub(self.samples_ms.len());
        if failed > 0 && !self.samples_ms.is_empty() {
            Some(format!(
                "{failed} of {} runs failed; first: {e}",
                self.attempted
            ))
        } else {
            Some(e.clone())
        }
    }
}

/// A whole bench: what ran, where, and every method's figures.
pub struct Report {
    pub command: Vec<String>,
    pub probe: String,
    pub runs: usize,
    pub warmup_secs: f64,
    pub environment: Value,
    pub results: Vec<MethodResult>,
}

impl Report {
    fn cold_median(&self) -> Option<f64> {
        self.results
            .iter()
            .find(|r| r.method == "cold")
            .and_then(|r| r.summary())
            .map(|s| s.median)
    }

    pub fn ratio_to_cold(&self, r: &MethodResult) -> Option<f64> {
        let cold = self.cold_median()?;
        let s = r.summary()?;
        (cold > 0.0).then(|| s.median / cold)
    }

    pub fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .results
            .iter()
            .map(|r| {
                let s = r.summary();
                let f = |g: fn(&Summary) -> f64| s.as_ref().map(g);
                json!({
                    "method": r.method,
                    "cache": r.cache.name(),
                    "label": r.label(),
                    "n": s.map(|s| s.n).unwrap_or(0),
                    "runs_attempted": r.attempted,
                    "median_ms": f(|s| s.median),
                    "mean_ms": f(|s| s.mean),
                    "stddev_ms": f(|s| s.stddev),
                    "min_ms": f(|s| s.min),
                    "max_ms": f(|s| s.max),
                    "ratio_to_cold": self.ratio_to_cold(r),
                    "samples_ms": r.samples_ms,
                    "error": r.error_text(),
                    "command": r.how,
                    "dump": r.dump.as_ref().map(|d| json!({
                        "wall_ms": d.wall_ms,
                        "frozen_ms": d.frozen_ms,
                        "image_bytes": d.image_bytes,
                    })),
                })
            })
            .collect();
        json!({
            "command": self.command,
            "probe": self.probe,
            "runs": self.runs,
            "warmup_secs": self.warmup_secs,
            "time": "from spawning the starting or restoring command to the workload being ready, in ms",
            "cache_field": "warm: images (and the program's files) in the page cache; evicted: the image files dropped from the page cache (posix_fadvise DONTNEED) before each restore",
            "environment": self.environment,
            "results": results,
        })
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "method,cache,n,median_ms,mean_ms,stddev_ms,min_ms,max_ms,ratio_to_cold,\
             dump_wall_ms,dump_frozen_ms,image_bytes,error\n",
        );
        let num = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
        for r in &self.results {
            let s = r.summary();
            let d = r.dump.as_ref();
            out += &format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                r.method,
                r.cache.name(),
                s.map(|s| s.n).unwrap_or(0),
                num(s.map(|s| s.median)),
                num(s.map(|s| s.mean)),
                num(s.map(|s| s.stddev)),
                num(s.map(|s| s.min)),
                num(s.map(|s| s.max)),
                num(self.ratio_to_cold(r)),
                num(d.map(|d| d.wall_ms)),
                num(d.and_then(|d| d.frozen_ms)),
                d.map(|d| d.image_bytes.to_string()).unwrap_or_default(),
                csv_field(&r.error_text().unwrap_or_default()),
            );
        }
        out
    }

    /// Rows of (method, median, mean ± σ, min … max, n, ratio, dump) as text cells.
    fn cells(&self) -> Vec<[String; 7]> {
        self.results
            .iter()
            .map(|r| {
                let dump = r
                    .dump
                    .as_ref()
                    .map(|d| {
                        format!(
                            "{} ms{}, {:.1} MiB",
                            ms(d.wall_ms),
                            d.frozen_ms
                                .map(|f| format!(" (frozen {})", ms(f)))
                                .unwrap_or_default(),
                            d.image_bytes as f64 / 1048576.0
                        )
                    })
                    .unwrap_or_default();
                match r.summary() {
                    Some(s) => [
                        r.label(),
                        format!("{} ms", ms(s.median)),
                        format!("{} ± {} ms", ms(s.mean), ms(s.stddev)),
                        format!("{} … {} ms", ms(s.min), ms(s.max)),
                        format!("{}", s.n),
                        self.ratio_to_cold(r)
                            .map(|x| format!("{x:.3}"))
                            .unwrap_or_else(|| "-".into()),
                        dump,
                    ],
                    None => [
                        r.label(),
                        "FAILED".into(),
                        String::new(),
                        String::new(),
                        "0".into(),
                        "-".into(),
                        dump,
                    ],
                }
            })
            .collect()
    }

    const HEAD: [&'static str; 7] = [
        "method",
        "median",
        "mean ± σ",
        "min … max",
        "n",
        "vs cold",
        "dump (frozen), image",
    ];

    /// The terminal table, then the failures with their messages.
    pub fn table(&self) -> String {
        let rows = self.cells();
        let mut widths = Self::HEAD.map(|h| h.chars().count());
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                let pad = w - c.chars().count();
                // Text left, numbers right.
                if i == 0 || i == 6 {
                    l += &format!("{c}{}  ", " ".repeat(pad));
                } else {
                    l += &format!("{}{c}  ", " ".repeat(pad));
                }
            }
            l.trim_end().to_string() + "\n"
        };
        let mut out = format!(
            "ready = {}; time from spawning the command to ready\n",
            self.probe
        );
        out += &line(&Self::HEAD.map(String::from));
        for row in &rows {
            out += &line(row);
        }
        for r in &self.results {
            if let Some(e) = r.error_text() {
                out += &format!("{}: {e}\n", r.label());
            }
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "Ready = {}; {} runs per method, interleaved round by round; times from spawning \
             the command to ready.\n\n",
            self.probe, self.runs
        );
        out += &format!("| {} |\n", Self::HEAD.join(" | "));
        out += "|---|---:|---:|---:|---:|---:|---|\n";
        for row in self.cells() {
            let row: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            out += &format!("| {} |\n", row.join(" | "));
        }
        let failures: Vec<String> = self
            .results
            .iter()
            .filter_map(|r| {
                r.error_text()
                    .map(|e| format!("- {}: {}", r.label(), e.replace('|', "\\|")))
            })
            .collect();
        if !failures.is_empty() {
            out += "\nFailures:\n\n";
            out += &failures.join("\n");
            out += "\n";
        }
        out += &format!("\nEnvironment: {}\n", env_line(&self.environment));
        out
    }
}

/// The environment in one line.
pub fn env_line(env: &Value) -> String {
    let Some(map) = env.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut cold = MethodResult::new("cold", Cache::Warm);
        cold.samples_ms = vec![100.0, 200.0, 300.0];
        cold.attempted = 3;
        let mut copy = MethodResult::new("crest-copy", Cache::Evicted);
        copy.samples_ms = vec![50.0, 40.0];
        copy.attempted = 3;
        copy.fail("restore failed, x".into());
        let mut criu = MethodResult::new("criu", Cache::Warm);
        criu.attempted = 3;
        criu.fail("no criu".into());
        Report {
            command: vec!["x".into()],
            probe: "p".into(),
            runs: 3,
            warmup_secs: 0.0,
            environment: json!({"kernel": "6.18"}),
            results: vec![cold, copy, criu],
        }
    }

    #[test]
    fn json_has_every_method_and_the_ratio() {
        let j = report().to_json();
        let r = j["results"].as_array().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["ratio_to_cold"], 1.0);
        assert_eq!(r[1]["n"], 2);
        assert_eq!(r[1]["median_ms"], 45.0);
        assert_eq!(r[1]["ratio_to_cold"], 0.225);
        assert_eq!(r[1]["cache"], "evicted");
        assert_eq!(
            r[1]["error"],
            "1 of 3 runs failed; first: restore failed, x"
        );
        assert_eq!(r[2]["error"], "no criu");
        assert!(r[2]["median_ms"].is_null());
    }

    #[test]
    fn table_csv_markdown_name_every_method() {
        let rep = report();
        for text in [rep.table(), rep.to_csv(), rep.to_markdown()] {
            for m in ["cold", "crest-copy", "criu"] {
                assert!(text.contains(m), "{m} missing from {text}");
            }
        }
        assert!(rep
            .to_csv()
            .contains("\"1 of 3 runs failed; first: restore failed, x\""));
        assert!(rep.table().contains("FAILED"));
    }
}
