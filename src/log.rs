//! Verbosity for `-v`: messages go to stderr, prefixed with `crest:`.

use std::sync::atomic::{AtomicU8, Ordering};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

pub fn set_verbosity(level: u8) {
    VERBOSITY.store(level, Ordering::Relaxed);
}

pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Prints to stderr when crest runs with at least `-v` (`$level` = 1) or `-vv` (2).
#[macro_export]
macro_rules! info {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::verbosity() >= $level {
            eprintln!("crest: {}", format_args!($($arg)*));
        }
    };
}

/// A warning is always printed.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        eprintln!("crest: warning: {}", format_args!($($arg)*));
    };
}
