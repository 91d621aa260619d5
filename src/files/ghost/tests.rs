//! Unit tests of the ghost module (real files in a temporary directory).
use super::*;
