//! `warren-perf`: a load generator for AMQP 0-9-1 brokers, with the flags RabbitMQ's PerfTest
//! users know, and a scenario mode like lavinmqperf's.
//!
//! It shares a small machine with the broker it measures, so it is lean on purpose: its own
//! minimal client on tokio over Warren's codec crate, one connection per producer and per
//! consumer, every frame of a batch built in one buffer and written with one write, every frame
//! of a read parsed before the next read, and a single-threaded runtime by default.
//!
//! # Layout
//! - [`args`]: the command line (flags, subcommands) and its validation.
//! - [`uri`]: `amqp://user:pass@host:port/vhost` parsing.
//! - [`client`]: the AMQP client: handshake, synchronous methods, the close handshake.
//! - [`topology`]: which queues, bindings and routing keys a run uses, and where each
//!   producer's messages must arrive.
//! - [`stamp`]: the 16 bytes at the front of every body (send time, producer, sequence).
//! - [`producer`], [`consumer`]: the two hot loops.
//! - [`histogram`]: latency percentiles in bounded memory.
//! - [`tracker`]: per-producer bitmaps over sequence numbers, for loss and duplicate counts.
//! - [`report`]: counters shared by the tasks, the progress line, the summary and its JSON.
//! - [`procstat`]: CPU time and RSS of a process from `/proc`.
//! - [`run`]: a throughput run from declare to summary.
//! - [`scenario`]: connection churn, queue churn, idle connections.
//!
//! # Invariants
//! A message's end-to-end latency is the consumer's clock at read time minus the producer's clock
//! at write time, both `SystemTime` on the same machine. A run's rates count body bytes only.

pub mod args;
pub mod client;
pub mod consumer;
pub mod histogram;
pub mod procstat;
pub mod producer;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stamp;
pub mod topology;
pub mod tracker;
pub mod uri;
