use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    // The boot timer measures from here: as close to process start as Rust gets.
    let start = Instant::now();
    husk_runtime::cli::main(start)
}
