//! crest: checkpoint/restore for Linux processes, built first for JVMs.
//!
//! The `crest` binary (src/main.rs, src/cli/) is a thin layer over this library:
//! - [`dump`] freezes a process with ptrace and writes an image directory;
//! - [`restore`] validates an image, forks a task with the original pid and morphs it through
//!   the restorer blob built from `parasite/`;
//! - [`check`] reports the kernel features and privileges crest relies on;
//! - [`files`] holds per-kind file state (locks) for both sides;
//! - [`show`] renders an image for people (and as JSON);
//! - [`jvm`] talks to HotSpot JVMs through their attach mechanism: the GC hint a dump runs
//!   before freezing one;
//! - [`infect`] runs the parasite blob inside a thread being dumped, [`fault`] makes a dump fail
//!   at a named step for testing, [`blob`] holds the blobs built from `parasite/`.
//!
//! The on-disk format lives in the `crest-images` crate, re-exported as [`images`].

pub use crest_images as images;

pub mod arch;
pub mod bench;
pub mod blob;
pub mod check;
pub mod crac;
pub mod dump;
pub mod events;
pub mod fault;
pub mod files;
pub mod infect;
pub mod jvm;
pub mod lazy;
pub mod log;
pub mod mapped;
pub mod net;
pub mod pages;
pub mod phases;
pub mod prefetch;
pub mod proc;
pub mod progress;
pub mod pstate;
pub mod ptrace;
pub mod restore;
pub mod show;
pub mod sys;
pub mod timens;
