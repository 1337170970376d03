//! The `warren-perf` binary: parses the command line, builds the runtime (one thread unless
//! `--threads`), runs the test or scenario and prints its summary. Exit code 0 on success,
//! 1 when the broker refused or closed a connection (its reply code and text are printed),
//! 2 on a usage error.

use clap::Parser;
use std::process::ExitCode;
use warren_perf::args::{Cli, Scenario};
use warren_perf::{run, scenario};

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

fn usage_error(e: String) -> ExitCode {
    eprintln!("warren-perf: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let validated = match &cli.scenario {
        None => cli.perf.validate(),
        Some(Scenario::ConnectionChurn(a)) => a.validate(),
        Some(Scenario::QueueChurn(a)) => a.validate(),
        Some(Scenario::IdleConnections(a)) => a.validate(),
    };
    if let Err(e) = validated {
        return usage_error(e);
    }
    let threads = if cli.scenario.is_none() { cli.perf.threads } else { 1 };
    let rt = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (output, error) = match &cli.scenario {
        None => match rt.block_on(run::run(&cli.perf)) {
            Ok(s) => (if cli.perf.json { s.to_json() + "\n" } else { s.table() }, s.error),
            Err(e) => (String::new(), Some(e)),
        },
        Some(Scenario::ConnectionChurn(a)) => {
            let s = rt.block_on(scenario::connection_churn::run(a));
            (if a.json { json(&s) } else { s.table() }, s.error)
        }
        Some(Scenario::QueueChurn(a)) => {
            let s = rt.block_on(scenario::queue_churn::run(a));
            (if a.json { json(&s) } else { s.table() }, s.error)
        }
        Some(Scenario::IdleConnections(a)) => (String::new(), rt.block_on(scenario::idle_connections::run(a)).err()),
    };
    print!("{output}");
    match error {
        Some(e) => {
            eprintln!("warren-perf: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the summary: {e}\"}}")) + "\n"
}
