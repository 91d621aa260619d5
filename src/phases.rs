//! Wall-clock time per phase of a dump or a restore, for their statistics: each phase ends
//! where the next begins, and a phase run once per process adds up under one name.

use std::time::Instant;

pub struct Phases {
    last: Instant,
    /// (phase, microseconds), in the order the phases first ended.
    pub done: Vec<(String, u64)>,
}

impl Phases {
    pub fn new() -> Phases {
        Phases {
            last: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the phase `name`; a phase that runs once per process adds up.
    pub fn end(&mut self, name: &str) {
        let now = Instant::now();
        let us = (now - self.last).as_micros() as u64;
        match self.done.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += us,
            None => self.done.push((name.to_string(), us)),
        }
        self.last = now;
    }

    /// Microseconds of every phase so far.
    pub fn total_us(&self) -> u64 {
        self.done.iter().map(|(_, us)| us).sum()
    }
}

impl Default for Phases {
    fn default() -> Phases {
        Phases::new()
    }
}

/// "validate 1.2 ms, files 3.4 ms, ...".
pub fn text(phases: &[(String, u64)]) -> String {
    phases
        .iter()
        .map(|(name, us)| format!("{name} {:.1} ms", *us as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}
