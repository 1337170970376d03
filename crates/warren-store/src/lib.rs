//! warren-store: AMQP-agnostic persistence for Warren.
//!
//! # Layout
//!
//! - `backend`: the seam between the log and the file system ([`Backend`]), with [`FsBackend`]
//!   (real files) and [`MemBackend`] (in memory, with "written" and "durable" bytes kept apart for
//!   crash tests).
//! - `format`: the byte layout of segment and ack files; pure, no I/O, total over any input.
//! - `bitmap`: the settled-record bitmap, the only per-record memory the log keeps.
//! - `log`: [`SegmentLog`], one queue's messages: append, streaming read, settle, recovery.
//!
//! The store knows nothing of AMQP: a payload is opaque bytes, a record is (seq, persistent,
//! payload). docs/store-format.md describes the files, the fsync points and recovery.
//!
//! Durability: nothing is durable until the caller syncs every handle `pending_sync` returned;
//! then every append and settle made before that call survives a crash. An unsynced settle may be
//! lost (the record comes back: at-least-once).

pub mod backend;
mod bitmap;
pub mod format;
pub mod log;

pub use backend::{AppendFile, Backend, FsBackend, MemBackend, SyncHandle};
pub use log::{Corruption, LogConfig, Lost, Record, Recovered, SegmentLog};
