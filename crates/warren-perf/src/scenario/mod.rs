//! Scenarios in the manner of lavinmqperf: one file each, all reporting once a second on stderr
//! and a summary at the end (one JSON object with `--json`).
//!
//! - [`connection_churn`]: connections opened and closed per second.
//! - [`queue_churn`]: queues declared and deleted per second.
//! - [`idle_connections`]: N open connections held still, for measuring the broker's memory.

pub mod connection_churn;
pub mod idle_connections;
pub mod queue_churn;

/// Resolves on SIGINT or SIGTERM (SIGINT only where SIGTERM cannot be watched).
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
