//! Idle connections: open `--count` connections with one channel each, `--parallel` at a time,
//! then print `ready` on stdout and hold them, untouched, until SIGINT, SIGTERM or `--duration`,
//! so that a script can read the broker's memory per connection. Heartbeats are off, so an idle
//! connection costs the broker nothing but memory.

use std::io::Write;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

use crate::args::IdleArgs;
use crate::client::Connection;

/// Opens, holds and closes the connections; `Err` when one could not be opened.
pub async fn run(args: &IdleArgs) -> Result<(), String> {
    let start = Instant::now();
    let mut held: Vec<Connection> = Vec::with_capacity(args.count as usize);
    let mut opening = JoinSet::new();
    let mut next = 0u32;
    let mut last_report = start;
    while held.len() < args.count as usize {
        while next < args.count && opening.len() < args.parallel as usize {
            let uri = args.uri.clone();
            let i = next;
            opening.spawn(async move {
                let mut c = Connection::open(&uri, &format!("warren-perf idle {i}")).await?;
                c.channel_open(1).await?;
                Ok::<_, crate::client::Error>(c)
            });
            next += 1;
        }
        match opening.join_next().await {
            Some(Ok(Ok(c))) => held.push(c),
            Some(Ok(Err(e))) => return Err(format!("connection {} of {}: {e}", held.len() + 1, args.count)),
            Some(Err(e)) => return Err(format!("task failed: {e}")),
            None => break,
        }
        if !args.quiet && last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("{:6.1} s  {} of {} connections open", start.elapsed().as_secs_f64(), held.len(), args.count);
            last_report = Instant::now();
        }
    }
    if !args.quiet {
        eprintln!("{} connections open in {:.2} s", held.len(), start.elapsed().as_secs_f64());
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    match args.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(d)) => {}
                _ = super::terminated() => {}
            }
        }
        None => super::terminated().await,
    }
    let total = held.len();
    let mut closing = JoinSet::new();
    let mut failed = 0;
    for c in held {
        closing.spawn(c.close());
        while closing.len() >= args.parallel as usize {
            if !matches!(closing.join_next().await, Some(Ok(Ok(())))) {
                failed += 1;
            }
        }
    }
    while let Some(r) = closing.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            failed += 1;
        }
    }
    if !args.quiet {
        eprintln!("closed {} connections ({failed} did not close cleanly)", total);
    }
    Ok(())
}
