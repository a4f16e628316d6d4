//! `plasma_store`: the daemon. Its command line lives in [`plasma_store::cli`], which the
//! Python package's console script runs too.

fn main() -> std::process::ExitCode {
    plasma_store::cli::run(std::env::args().skip(1))
}
