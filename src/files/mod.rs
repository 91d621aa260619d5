//! One module per kind of kernel object attached to files, each holding both how it is
//! collected at dump and how it is recreated at restore; `dump/` and `restore/` call them.

pub mod locks;
pub mod sockfilter;
pub mod sockopts;
