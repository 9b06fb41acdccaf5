//! The `husk` command line.

mod info;
mod vmm;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "husk", version, about = "husk: containers in microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a bare VM: a kernel, an initrd and a command line, no containers.
    Vmm(Box<vmm::VmmArgs>),
    /// Print what this host offers husk, as JSON.
    Info,
}

/// Exit status for an error of the user's input or the host (bad argument, missing file,
/// no KVM).
const EXIT_ERROR: u8 = 1;
/// Exit status when the guest ended badly (triple fault, KVM internal error).
const EXIT_GUEST_FAILED: u8 = 2;

pub fn main(start: Instant) -> ExitCode {
    crate::logger::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line, like every other husk error, instead of clap's usage block.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("husk: error: {first} (see husk --help)");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = match cli.command {
        Command::Vmm(args) => vmm::run(*args, start),
        Command::Info => info::run(),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("husk: error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
