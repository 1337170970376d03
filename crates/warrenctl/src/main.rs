//! The `warrenctl` binary: parses the command line, runs it, prints the result.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = warrenctl::Cli::parse();
    match warrenctl::run(&cli) {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`warrenctl list queues | head`) is not an error worth a message.
            let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warrenctl: {e}");
            ExitCode::FAILURE
        }
    }
}
