//! The knobs of a group that matter to Warren, and their translation to openraft's `Config`.
//!
//! Invariant: `election_timeout_min_ms > heartbeat_ms` and `election_timeout_max_ms >
//! election_timeout_min_ms`; [`GroupConfig::to_openraft`] rejects anything else.

use openraft::SnapshotPolicy;

use crate::StartError;

/// Default interval between a leader's heartbeats, in milliseconds.
///
/// openraft also uses it as the timeout of one append-entries RPC, so it must cover a round trip
/// plus the follower's log write; 100 ms leaves room for an fsync on a slow disk.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;

/// Default lower bound of the election timeout, in milliseconds: several heartbeats may be lost
/// before a follower calls an election.
///
/// A follower that heard a leader waits the leader lease (openraft takes it to be the upper
/// bound below) on top of its timeout: 0.9 to 1.2 s in all, doubled when it saw a longer log
/// than its own. (At 500-1000 ms a paused or cut-off leader was replaced only after 1.5 to 4 s,
/// too slow for the 5 s a publisher may wait; a killed one is replaced sooner: the host calls
/// an election when the leader's node connection closes, `Group::campaign`.)
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 300;

/// Default upper bound of the election timeout, in milliseconds. openraft draws each node's
/// timeout once, at start, from `[min, max)`; a wide range makes split votes unlikely.
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 600;

/// Default number of applied entries after which a node snapshots its machine again
/// (openraft's own default).
pub const DEFAULT_SNAPSHOT_EVERY_ENTRIES: u64 = 5000;

/// Default number of entries kept in the log behind a snapshot, so that a follower only a little
/// behind is caught up from the log rather than sent the whole snapshot (openraft's default).
pub const DEFAULT_KEPT_AFTER_SNAPSHOT_ENTRIES: u64 = 1000;

/// Default time, in milliseconds, allowed for sending and installing one snapshot.
pub const DEFAULT_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

/// Default capacity of the applied stream, in events.
///
/// The stream is bounded so a host that stops reading cannot grow memory without limit; when it
/// is full, applying waits (and with it, the replies to proposals) until the host reads.
pub const DEFAULT_APPLIED_CAPACITY: usize = 1024;

/// Configuration of one [`Group`](crate::Group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Interval between a leader's heartbeats, in milliseconds; also the timeout of one
    /// append-entries RPC.
    pub heartbeat_ms: u64,
    /// Lower bound of the election timeout, in milliseconds; must exceed `heartbeat_ms`.
    pub election_timeout_min_ms: u64,
    /// Upper bound (exclusive) of the election timeout, in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Snapshot the machine after this many entries have been applied since the last snapshot;
    /// `0` never snapshots on its own.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind the latest snapshot; older ones are purged.
    pub kept_after_snapshot_entries: u64,
    /// Time allowed for sending and installing one snapshot, in milliseconds.
    pub snapshot_timeout_ms: u64,
    /// Capacity of the applied stream, in events (see [`DEFAULT_APPLIED_CAPACITY`]).
    pub applied_capacity: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            snapshot_every_entries: DEFAULT_SNAPSHOT_EVERY_ENTRIES,
            kept_after_snapshot_entries: DEFAULT_KEPT_AFTER_SNAPSHOT_ENTRIES,
            snapshot_timeout_ms: DEFAULT_SNAPSHOT_TIMEOUT_MS,
            applied_capacity: DEFAULT_APPLIED_CAPACITY,
        }
    }
}

impl GroupConfig {
    /// openraft's configuration for these knobs, checked.
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, StartError> {
        if self.applied_capacity == 0 {
            return Err(StartError::Config { reason: "applied_capacity must be at least 1".to_owned() });
        }
        let snapshot_policy = match self.snapshot_every_entries {
            0 => SnapshotPolicy::Never,
            n => SnapshotPolicy::LogsSinceLast(n),
        };
        let config = openraft::Config {
            cluster_name: "warren".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.snapshot_timeout_ms,
            snapshot_policy,
            max_in_snapshot_log_to_keep: self.kept_after_snapshot_entries,
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| StartError::Config { reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(GroupConfig::default().to_openraft().is_ok());
    }

    #[test]
    fn election_timeout_must_exceed_heartbeat() {
        let config = GroupConfig {
            heartbeat_ms: 200,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            ..GroupConfig::default()
        };
        assert!(matches!(config.to_openraft(), Err(StartError::Config { .. })));
    }

    #[test]
    fn election_range_must_not_be_empty() {
        let config =
            GroupConfig { election_timeout_min_ms: 300, election_timeout_max_ms: 300, ..GroupConfig::default() };
        assert!(matches!(config.to_openraft(), Err(StartError::Config { .. })));
    }

    #[test]
    fn applied_capacity_must_be_positive() {
        let config = GroupConfig { applied_capacity: 0, ..GroupConfig::default() };
        assert!(matches!(config.to_openraft(), Err(StartError::Config { .. })));
    }

    #[test]
    fn zero_snapshot_interval_never_snapshots() {
        let config = GroupConfig { snapshot_every_entries: 0, ..GroupConfig::default() };
        let raft = config.to_openraft().expect("valid");
        assert_eq!(raft.snapshot_policy, SnapshotPolicy::Never);
    }
}
