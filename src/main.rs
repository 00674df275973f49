//! The `strata` binary: parse the command line, set up logging, run.
//! Everything else is in `strata::cli`.

use clap::Parser;

fn main() {
    strata::cli::init_tracing();
    // Parsing exits with status 2 on a usage error (0 for --help), as clap does.
    let cli = strata::cli::Cli::parse();
    let argv = std::env::args_os().skip(1).collect();
    std::process::exit(strata::cli::run(cli, argv));
}
