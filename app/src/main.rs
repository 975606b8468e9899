//! Neoscope: a desktop app for looking inside language models, and a CLI over the same engine.
//! `neoscope` with no subcommand opens the app; `neoscope <subcommand>` runs headless.

use clap::Parser;
use neoscope::{cli, gui};

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let result = match args.command {
        Some(cmd) => cli::run(&args.global, cmd),
        None => gui::run(&args.global),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
