//! The SVG chart: one row per method, time to ready on the x axis (log scale when the slowest
//! run is more than 20 times the fastest), a bar to the median, a whisker from min to max and a
//! dot per run; a failed method gets its row with "failed" and the start of its message.
//! Built with the `svg` crate (which escapes text and attributes).

use svg::node::element::{Circle, Group, Line, Rectangle, Text, Title};
use svg::Document;

use super::report::{Cache, Report};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 230.0;
const RIGHT: f64 = 175.0;
const TOP: f64 = 70.0;
const ROW: f64 = 34.0;
const BOTTOM: f64 = 110.0;

/// Colour of a method's family.
fn colour(method: &str) -> &'static str {
    match method {
        "cold" => "#7f7f7f",
        m if m.starts_with("crest") => "#1f77b4",
        m if m.starts_with("criu") => "#d62728",
        "aot-cache" | "cds" => "#2ca02c",
        _ => "#9467bd",
    }
}

/// The x axis: linear or log, from `lo` to `hi` ms.
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
}

impl Axis {
    fn x(&self, v: f64) -> f64 {
        let span = WIDTH - LEFT - RIGHT;
        let f = if self.log {
            (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        LEFT + f.clamp(0.0, 1.0) * span
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut decade = 10f64.powf(self.lo.log10().floor());
            while decade <= self.hi * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    let v = decade * m;
                    if v >= self.lo * 0.9999 && v <= self.hi * 1.0001 {
                        t.push(v);
                    }
                }
                decade *= 10.0;
            }
            t
        } else {
            let raw = (self.hi - self.lo) / 6.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|s| *s >= raw)
                .unwrap_or(mag * 10.0);
            let mut v = (self.lo / step).ceil() * step;
            let mut t = Vec::new();
            while v <= self.hi + step * 1e-9 {
                t.push(v);
                v += step;
            }
            t
        }
    }
}

/// The largest 1, 2 or 5 times a power of ten at or below `v`.
fn nice_below(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * d)
        .find(|x| *x <= v)
        .unwrap_or(d)
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v`.
fn nice_above(v: f64) -> f64 {
    let d = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * d)
        .find(|x| *x >= v)
        .unwrap_or(d * 10.0)
}

fn label_ms(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v >= 1000.0 {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else if v >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{v:.2}")
    }
}

fn text(x: f64, y: f64, anchor: &str, size: f64, content: impl Into<String>) -> Text {
    Text::new(content)
        .set("x", x)
        .set("y", y)
        .set("text-anchor", anchor)
        .set("font-size", size)
        .set("font-family", "DejaVu Sans, Helvetica, Arial, sans-serif")
}

/// The chart as an SVG document.
pub fn render(report: &Report) -> String {
    let rows = &report.results;
    let height = TOP + ROW * rows.len().max(1) as f64 + BOTTOM;
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.samples_ms.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let (min, max) = all
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    let axis = if all.is_empty() {
        Axis {
            log: false,
            lo: 0.0,
            hi: 1.0,
        }
    } else if max / min > 20.0 {
        Axis {
            log: true,
            lo: nice_below(min),
            hi: nice_above(max),
        }
    } else {
        Axis {
            log: false,
            lo: 0.0,
            hi: max * 1.1,
        }
    };
    let plot_bottom = TOP + ROW * rows.len().max(1) as f64;
    let mut doc = Document::new()
        .set("xmlns", "http://www.w3.org/2000/svg")
        .set("width", WIDTH)
        .set("height", height)
        .set("viewBox", (0, 0, WIDTH, height))
        .add(
            Rectangle::new()
                .set("width", "100%")
                .set("height", "100%")
                .set("fill", "white"),
        )
        .add(text(
            WIDTH / 2.0,
            26.0,
            "middle",
            17.0,
            "Time to ready: cold start vs restore",
        ))
        .add(text(
            WIDTH / 2.0,
            46.0,
            "middle",
            12.0,
            format!(
                "ready = {}; n = {} runs per method, interleaved",
                report.probe, report.runs
            ),
        ));
    // Grid and tick labels.
    let mut grid = Group::new();
    for t in axis.ticks() {
        let x = axis.x(t);
        grid = grid
            .add(
                Line::new()
                    .set("x1", x)
                    .set("x2", x)
                    .set("y1", TOP - 6.0)
                    .set("y2", plot_bottom)
                    .set("stroke", "#dddddd")
                    .set("stroke-width", 1),
            )
            .add(text(x, plot_bottom + 16.0, "middle", 11.0, label_ms(t)));
    }
    doc = doc.add(grid).add(
        Line::new()
            .set("x1", LEFT)
            .set("x2", WIDTH - RIGHT)
            .set("y1", plot_bottom)
            .set("y2", plot_bottom)
            .set("stroke", "#333333"),
    );
    doc = doc.add(text(
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        plot_bottom + 36.0,
        "middle",
        13.0,
        format!(
            "time from spawning the command to ready (ms{})",
            if axis.log { ", log scale" } else { "" }
        ),
    ));
    // One row per method.
    for (i, r) in rows.iter().enumerate() {
        let cy = TOP + ROW * i as f64 + ROW / 2.0;
        let c = colour(&r.method);
        let mut g = Group::new()
            .set("class", "method")
            .set("data-method", r.label());
        g = g.add(text(LEFT - 10.0, cy + 4.0, "end", 13.0, r.label()));
        match r.summary() {
            None => {
                let why = r.error_text().unwrap_or_default();
                let mut short: String = why.chars().take(100).collect();
                if short.len() < why.len() {
                    short.push('…');
                }
                g = g.add(
                    text(
                        LEFT + 6.0,
                        cy + 4.0,
                        "start",
                        12.0,
                        format!("failed: {short}"),
                    )
                    .set("fill", "#b00000")
                    .add(Title::new(why)),
                );
            }
            Some(s) => {
                let opacity = if r.cache == Cache::Evicted { 0.45 } else { 0.8 };
                let x0 = axis.x(axis.lo.max(if axis.log { axis.lo } else { 0.0 }));
                g = g
                    .add(
                        Rectangle::new()
                            .set("x", x0)
                            .set("y", cy - 9.0)
                            .set("width", (axis.x(s.median) - x0).max(1.0))
                            .set("height", 18.0)
                            .set("fill", c)
                            .set("fill-opacity", opacity)
                            .add(Title::new(format!(
                                "{}: median {} ms, mean {} ± {} ms, min {} … max {} ms, n = {}",
                                r.label(),
                                label_ms(s.median),
                                label_ms(s.mean),
                                label_ms(s.stddev),
                                label_ms(s.min),
                                label_ms(s.max),
                                s.n
                            ))),
                    )
                    .add(
                        Line::new()
                            .set("x1", axis.x(s.min))
                            .set("x2", axis.x(s.max))
                            .set("y1", cy)
                            .set("y2", cy)
                            .set("stroke", "#000000")
                            .set("stroke-width", 1.5),
                    );
                for v in [s.min, s.max] {
                    g = g.add(
                        Line::new()
                            .set("x1", axis.x(v))
                            .set("x2", axis.x(v))
                            .set("y1", cy - 6.0)
                            .set("y2", cy + 6.0)
                            .set("stroke", "#000000")
                            .set("stroke-width", 1.5),
                    );
                }
                for v in &r.samples_ms {
                    g = g.add(
                        Circle::new()
                            .set("cx", axis.x(*v))
                            .set("cy", cy)
                            .set("r", 2.6)
                            .set("fill", "#ffffff")
                            .set("stroke", "#000000")
                            .set("stroke-width", 1),
                    );
                }
                let note = match report.ratio_to_cold(r) {
                    Some(x) if r.method != "cold" => {
                        format!("{} ms ({:.2}× cold)", label_ms(s.median), x)
                    }
                    _ => format!("{} ms", label_ms(s.median)),
                };
                g = g.add(text(WIDTH - RIGHT + 8.0, cy + 4.0, "start", 12.0, note));
            }
        }
        doc = doc.add(g);
    }
    // Legend.
    let ly = plot_bottom + 62.0;
    let mut legend = Group::new().set("class", "legend");
    let mut x = LEFT - 120.0;
    for (name, col) in [
        ("cold start", colour("cold")),
        ("crest", colour("crest")),
        ("CRIU", colour("criu")),
        ("JDK AOT cache / CDS", colour("cds")),
    ] {
        legend = legend
            .add(
                Rectangle::new()
                    .set("x", x)
                    .set("y", ly - 9.0)
                    .set("width", 14)
                    .set("height", 10)
                    .set("fill", col)
                    .set("fill-opacity", 0.8),
            )
            .add(text(x + 19.0, ly, "start", 12.0, name));
        x += 40.0 + name.len() as f64 * 7.0;
    }
    legend = legend.add(text(
        LEFT - 120.0,
        ly + 20.0,
        "start",
        12.0,
        "bar: median; whisker: min … max; dots: each run; pale bar: image evicted from the page cache",
    ));
    doc = doc.add(legend);
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::report::MethodResult;
    use super::*;

    #[test]
    fn log_ticks_cover_the_range() {
        let a = Axis {
            log: true,
            lo: 10.0,
            hi: 1000.0,
        };
        assert_eq!(
            a.ticks(),
            vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert!((a.x(10.0) - LEFT).abs() < 1e-9);
        assert!((a.x(1000.0) - (WIDTH - RIGHT)).abs() < 1e-9);
        assert_eq!((nice_below(35.0), nice_above(934.0)), (20.0, 1000.0));
        assert_eq!((nice_below(120.0), nice_above(180.0)), (100.0, 200.0));
    }

    #[test]
    fn a_failed_method_has_its_row() {
        let mut ok = MethodResult::new("cold", Cache::Warm);
        ok.samples_ms = vec![5.0, 6.0];
        let mut bad = MethodResult::new("criu", Cache::Warm);
        bad.fail("criu <missing> & broken".into());
        let rep = Report {
            command: vec![],
            probe: "x".into(),
            runs: 2,
            warmup_secs: 0.0,
            environment: serde_json::json!({}),
            results: vec![ok, bad],
        };
        let svg = render(&rep);
        assert!(svg.contains("data-method=\"criu\""));
        assert!(svg.contains("failed: criu &lt;missing&gt; &amp; broken"));
    }
}
