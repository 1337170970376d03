//! Warren's broker, sans-IO: vhosts, exchanges, bindings, queues, consumers and channels.
//!
//! # Layout
//! - [`broker`]: the [`Broker`] state machine. The server hands it every frame of an open
//!   channel and collects the frames it produces for any connection ([`Out`]).
//! - [`channel`]: per-channel state (assembler, consumers, unacked deliveries, confirms, tx).
//! - [`queue`]: a queue's ready messages and consumers.
//! - [`exchange`]: one file per exchange type behind the `Router` trait.
//! - [`message`]: a published message, shared by every queue it reaches.
//! - [`config`]: the limits and settings the broker enforces.
//! - [`definitions`]: the durable definitions snapshot.
//! - [`auth`]: the user store and SASL mechanisms.
//!
//! # Invariants
//! No sockets, no tasks, no clock: time comes in as milliseconds in arguments. The same inputs
//! give the same outputs, which is what makes the core testable without a network and what a
//! replicated log needs later.

pub mod args;
pub mod auth;
pub mod body_store;
pub mod broker;
pub mod channel;
pub mod config;
pub mod credit;
pub mod dead_letter;
pub mod dedup;
pub mod definitions;
pub mod delayed;
pub mod exchange;
pub mod hash;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod quorum;

pub use broker::limits::{UserLimit, VhostLimit};
pub use broker::management::{
    BindingSummary, Caller, ChannelSummary, ConnectionSummary, ConsumerSummary, ExchangeSummary, GetAckMode,
    GotMessage, QueueStats,
};
pub use broker::{
    Alarms, Broker, ConnInfo, Out, Overview, QueueInfo, RecoveryReport, ResourceUse, Session, Sink, Stage, StoreStats,
    SyncJob, Tally, ACK_SYNC_INTERVAL_MS, SYNC_ANY,
};
pub use config::Config;
pub use definitions::{UserLimits, VhostLimits};

/// Identifies a client connection for the lifetime of the broker process.
pub type ConnId = u64;
