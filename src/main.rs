//! The `crest` command line: argument parsing only; every command calls the library.

mod cli;

fn main() {
    std::process::exit(cli::run());
}
