//! Progress of long dumps and restores on a terminal: an indicatif bar on stderr (bytes done of
//! the total, and the rate) that appears only once the work has gone on for a second, so quick
//! operations print nothing extra, and never when stderr is not a terminal (a log file or a
//! pipe gets the final summary only).
//!
//! A [`Progress`] is cheap to clone and to advance from any thread; all clones drive one bar.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long an operation runs before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// The bar of one long operation (or none, when stderr is not a terminal).
#[derive(Clone)]
pub struct Progress {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    bar: ProgressBar,
    started: Instant,
    shown: AtomicBool,
    /// Not to be drawn yet (another bar is).
    held: AtomicBool,
}

impl Progress {
    /// A bar for `what` (e.g. "reading memory") over `total` bytes, drawn on stderr if it is a
    /// terminal, once a second has passed.
    pub fn bytes(what: &str, total: u64) -> Progress {
        Progress::new(what, total, false)
    }

    /// Like [`Progress::bytes`], for work that starts in the background while another bar
    /// is shown: it counts from now, but is not drawn before [`Progress::release`].
    pub fn held_bytes(what: &str, total: u64) -> Progress {
        Progress::new(what, total, true)
    }

    fn new(what: &str, total: u64, held: bool) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::none();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(
            "{msg}: [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        Progress {
            inner: Some(Arc::new(Inner {
                bar,
                started: Instant::now(),
                shown: AtomicBool::new(false),
                held: AtomicBool::new(held),
            })),
        }
    }

    /// No bar: every call does nothing.
    pub fn none() -> Progress {
        Progress { inner: None }
    }

    /// Whether this bar can ever be drawn (stderr is a terminal).
    pub fn is_drawn_somewhere(&self) -> bool {
        self.inner.is_some()
    }

    /// `bytes` more are done.
    pub fn advance(&self, bytes: u64) {
        if let Some(inner) = &self.inner {
            inner.bar.inc(bytes);
            inner.show_when_due();
        }
    }

    /// `bytes` are done in all (for work measured from outside, e.g. a counter polled).
    pub fn set(&self, bytes: u64) {
        if let Some(inner) = &self.inner {
            inner.bar.set_position(bytes);
            inner.show_when_due();
        }
    }

    /// A held bar may be drawn from now on (when it is due).
    pub fn release(&self) {
        if let Some(inner) = &self.inner {
            inner.held.store(false, Ordering::Relaxed);
            inner.show_when_due();
        }
    }

    /// The total turned out to be `bytes` (it was an estimate).
    pub fn set_total(&self, bytes: u64) {
        if let Some(inner) = &self.inner {
            inner.bar.set_length(bytes);
        }
    }

    /// The operation is over: the bar (if it was shown) is cleared, leaving the summary the
    /// command prints.
    pub fn finish(&self) {
        if let Some(inner) = &self.inner {
            inner.bar.finish_and_clear();
        }
    }
}

impl Inner {
    fn show_when_due(&self) {
        if !self.shown.load(Ordering::Relaxed)
            && !self.held.load(Ordering::Relaxed)
            && self.started.elapsed() >= SHOW_AFTER
        {
            self.shown.store(true, Ordering::Relaxed);
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bar as [`Progress::new`] makes it on a terminal, drawn nowhere, started `ago`.
    fn bar(ago: Duration, held: bool) -> Progress {
        Progress {
            inner: Some(Arc::new(Inner {
                bar: ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::hidden()),
                started: Instant::now() - ago,
                shown: AtomicBool::new(false),
                held: AtomicBool::new(held),
            })),
        }
    }

    fn shown(p: &Progress) -> bool {
        p.inner.as_ref().unwrap().shown.load(Ordering::Relaxed)
    }

    #[test]
    fn a_bar_appears_only_after_a_second_and_once_released() {
        let quick = bar(Duration::ZERO, false);
        quick.advance(10);
        assert!(!shown(&quick), "a quick operation draws nothing");

        let long = bar(SHOW_AFTER, false);
        long.advance(10);
        assert!(shown(&long));
        assert_eq!(long.inner.as_ref().unwrap().bar.position(), 10);

        let held = bar(SHOW_AFTER, true);
        held.set(50);
        assert!(!shown(&held), "a held bar waits for its release");
        held.release();
        assert!(shown(&held));
        held.set_total(60);
        assert_eq!(held.inner.as_ref().unwrap().bar.length(), Some(60));
        held.finish();
    }

    #[test]
    fn without_a_terminal_there_is_no_bar() {
        if !std::io::stderr().is_terminal() {
            assert!(Progress::bytes("reading memory", 1 << 20).inner.is_none());
        }
        let none = Progress::none();
        none.advance(1);
        none.finish();
    }
}
