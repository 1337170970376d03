//! [`MemLog`]: an in-memory Raft log, the default log store of a group.
//!
//! It implements openraft's v2 [`RaftLogStorage`] (with `storage-v2`), which is the seam a
//! durable log replaces: a group takes any `RaftLogStorage<Types<M>>` (see
//! [`Group::start_with_log`](crate::Group::start_with_log)).
//!
//! Invariants: the entries held are consecutive (no holes), all above `last_purged`; a write
//! is "persisted" the moment it is in memory, so every flush callback fires at once. Nothing
//! survives the process: a node restarted on a `MemLog` has lost its vote and log, which Raft
//! only tolerates while a quorum of the others keeps theirs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageError};
use parking_lot::Mutex;

use crate::types::{Entry, Types, Vote};
use crate::Machine;

/// An in-memory Raft log for a group replicating `M`; clones share the same log.
pub struct MemLog<M: Machine> {
    inner: Arc<Mutex<LogEntries<M>>>,
}

/// What a log holds, in memory: the vote, the committed id, the purge point and the entries
/// after it. [`MemLog`] is only this; [`FileLog`](crate::FileLog) keeps it beside its file.
pub(crate) struct LogEntries<M: Machine> {
    pub(crate) vote: Option<Vote>,
    pub(crate) committed: Option<LogId<u64>>,
    pub(crate) last_purged: Option<LogId<u64>>,
    pub(crate) entries: BTreeMap<u64, Entry<M>>,
    /// For a durable log whose group keeps its snapshots on disk ([`DurableLog`]): purges wait
    /// for the snapshot that covers them.
    gate: Option<PurgeGate>,
}

/// A durable log whose purges wait for a durable snapshot covering them.
///
/// A follower's openraft purges its log up to a snapshot the leader sent as soon as it hands the
/// snapshot to the state machine, without waiting for it to be written. A log that made such a
/// purge durable at once would, should the snapshot then fail to be written (or the process die
/// first), come back with its log purged and no snapshot in its place: a member that cannot
/// start again. So a durable log keeps (on disk and in memory) what no durable snapshot covers
/// yet, and purges the rest when the snapshot is written.
pub trait DurableLog: Send + Sync + 'static {
    /// The group's state machine store holds, on disk, a snapshot up to `last` (`None`: no
    /// snapshot). Called as the group starts, then for each snapshot written; until the first
    /// call, the log purges as openraft asks.
    fn snapshot_durable(&self, last: Option<LogId<u64>>);
}

/// The furthest purge openraft asked for and the last durable snapshot, for a gated log.
#[derive(Default)]
struct PurgeGate {
    asked: Option<LogId<u64>>,
    snapshot: Option<LogId<u64>>,
}

impl<M: Machine> LogEntries<M> {
    pub(crate) fn new() -> Self {
        LogEntries { vote: None, committed: None, last_purged: None, entries: BTreeMap::new(), gate: None }
    }

    /// The entries in `range`.
    pub(crate) fn read<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry<M>> {
        self.entries.range(range).map(|(_, entry)| entry.clone()).collect()
    }

    /// openraft's view: the purge point and the last entry (the purge point when none is left).
    pub(crate) fn log_state(&self) -> LogState<Types<M>> {
        let last_log_id = match self.entries.last_key_value() {
            Some((_, entry)) => Some(entry.log_id),
            None => self.last_purged,
        };
        LogState { last_purged_log_id: self.last_purged, last_log_id }
    }

    /// Adds entries that extend the log.
    pub(crate) fn extend(&mut self, entries: impl IntoIterator<Item = Entry<M>>) {
        for entry in entries {
            debug_assert!(
                self.entries.last_key_value().is_none_or(|(last, _)| *last + 1 == entry.log_id.index),
                "append must extend the log without a hole"
            );
            self.entries.insert(entry.log_id.index, entry);
        }
    }

    /// Drops the entry at `index` and everything after it: they conflict with the leader's log.
    pub(crate) fn truncate(&mut self, index: u64) {
        self.entries.split_off(&index);
    }

    /// Drops everything up to `log_id` and remembers it.
    pub(crate) fn purge(&mut self, log_id: LogId<u64>) {
        self.last_purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
    }

    /// openraft asks to purge up to `log_id`: purges what a durable snapshot covers (all of it
    /// for a log that is not gated) and returns how far, for the caller to record, if further
    /// than before.
    pub(crate) fn purge_asked(&mut self, log_id: LogId<u64>) -> Option<LogId<u64>> {
        let upto = match &mut self.gate {
            None => log_id,
            Some(gate) => {
                gate.asked = further(gate.asked, log_id);
                nearer(log_id, gate.snapshot?)
            }
        };
        self.purge_further(upto)
    }

    /// A snapshot up to `last` is durable: the log is gated from now on, and what was asked to
    /// be purged and the snapshot covers is purged; returns how far, if further than before.
    pub(crate) fn snapshot_durable(&mut self, last: Option<LogId<u64>>) -> Option<LogId<u64>> {
        let gate = self.gate.get_or_insert_with(PurgeGate::default);
        if let Some(last) = last {
            gate.snapshot = further(gate.snapshot, last);
        }
        let upto = nearer(gate.asked?, gate.snapshot?);
        self.purge_further(upto)
    }

    fn purge_further(&mut self, upto: LogId<u64>) -> Option<LogId<u64>> {
        if self.last_purged.is_some_and(|purged| purged.index >= upto.index) {
            return None;
        }
        self.purge(upto);
        Some(upto)
    }
}

/// Of two positions in a log, the one with the lower index.
fn nearer(a: LogId<u64>, b: LogId<u64>) -> LogId<u64> {
    if b.index < a.index {
        b
    } else {
        a
    }
}

/// `id` if it is further along the log than `than`, else `than`.
fn further(than: Option<LogId<u64>>, id: LogId<u64>) -> Option<LogId<u64>> {
    match than {
        Some(than) if than.index >= id.index => Some(than),
        _ => Some(id),
    }
}

impl<M: Machine> MemLog<M> {
    /// An empty log with no vote.
    pub fn new() -> Self {
        MemLog { inner: Arc::new(Mutex::new(LogEntries::new())) }
    }
}

impl<M: Machine> Default for MemLog<M> {
    fn default() -> Self {
        MemLog::new()
    }
}

impl<M: Machine> Clone for MemLog<M> {
    fn clone(&self) -> Self {
        MemLog { inner: Arc::clone(&self.inner) }
    }
}

impl<M: Machine> RaftLogReader<Types<M>> for MemLog<M> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<M>>, StorageError<u64>> {
        Ok(self.inner.lock().read(range))
    }
}

impl<M: Machine> RaftLogStorage<Types<M>> for MemLog<M> {
    type LogReader = MemLog<M>;

    async fn get_log_state(&mut self) -> Result<LogState<Types<M>>, StorageError<u64>> {
        Ok(self.inner.lock().log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        self.inner.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        Ok(crate::types::startup_vote(self.inner.lock().vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        self.inner.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Types<M>>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.lock().extend(entries);
        // In memory, written is as durable as it gets.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.inner.lock().truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.inner.lock();
        debug_assert!(inner.last_purged <= Some(log_id), "purge must not go backwards");
        inner.purge(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    use crate::test_machine::Nop;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry<Nop> {
        openraft::Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(index) }
    }

    async fn indexes(log: &mut MemLog<Nop>) -> Vec<u64> {
        let entries = log.try_get_log_entries(..).await.expect("read");
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn truncate_drops_the_suffix_from_the_given_index() {
        let mut log = MemLog::<Nop>::new();
        log.blocking_append((1..=5).map(|i| entry(1, i))).await.expect("append");
        log.truncate(log_id(1, 3)).await.expect("truncate");
        assert_eq!(indexes(&mut log).await, vec![1, 2]);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_purged_log_id, None);
    }

    #[tokio::test]
    async fn purge_drops_the_prefix_and_remembers_it() {
        let mut log = MemLog::<Nop>::new();
        log.blocking_append((1..=5).map(|i| entry(1, i))).await.expect("append");
        log.purge(log_id(1, 3)).await.expect("purge");
        assert_eq!(indexes(&mut log).await, vec![4, 5]);
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    }

    #[tokio::test]
    async fn purging_everything_keeps_the_last_log_id() {
        let mut log = MemLog::<Nop>::new();
        log.blocking_append((1..=3).map(|i| entry(2, i))).await.expect("append");
        log.purge(log_id(2, 3)).await.expect("purge");
        assert!(indexes(&mut log).await.is_empty());
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(2, 3)));
        // The log goes on from the purged point.
        log.blocking_append([entry(3, 4)]).await.expect("append");
        assert_eq!(indexes(&mut log).await, vec![4]);
    }

    #[test]
    fn a_gated_log_purges_only_what_a_durable_snapshot_covers() {
        let mut log = LogEntries::<Nop>::new();
        log.extend((1..=8).map(|i| entry(1, i)));
        // Not gated: purged as asked.
        assert_eq!(log.purge_asked(log_id(1, 2)), Some(log_id(1, 2)));
        // Gated with a snapshot up to 3: a purge to 6 goes only to 3.
        assert_eq!(log.snapshot_durable(Some(log_id(1, 3))), None, "nothing asked past 2 yet");
        assert_eq!(log.purge_asked(log_id(1, 6)), Some(log_id(1, 3)));
        assert_eq!(log.entries.keys().copied().collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
        // A snapshot up to 10 (a leader's, past the log's end) purges what was asked, no more.
        assert_eq!(log.snapshot_durable(Some(log_id(2, 10))), Some(log_id(1, 6)));
        assert_eq!(log.entries.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
        // Asked past the log's end, with the snapshot there: everything goes.
        assert_eq!(log.purge_asked(log_id(2, 10)), Some(log_id(2, 10)));
        assert!(log.entries.is_empty());
        assert_eq!(log.log_state().last_log_id, Some(log_id(2, 10)));
        assert_eq!(log.purge_asked(log_id(2, 10)), None, "not again");
        // Gated with no snapshot on disk: nothing is purged until one is.
        let mut log = LogEntries::<Nop>::new();
        log.extend((1..=4).map(|i| entry(1, i)));
        assert_eq!(log.snapshot_durable(None), None);
        assert_eq!(log.purge_asked(log_id(1, 3)), None);
        assert_eq!(log.entries.len(), 4);
        assert_eq!(log.snapshot_durable(Some(log_id(1, 4))), Some(log_id(1, 3)));
        assert_eq!(log.entries.keys().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[tokio::test]
    async fn vote_and_committed_read_back() {
        let mut log = MemLog::<Nop>::new();
        assert_eq!(log.read_vote().await.expect("vote"), None);
        let vote = Vote::new(3, 2);
        log.save_vote(&vote).await.expect("save");
        assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
        log.save_committed(Some(log_id(3, 7))).await.expect("save");
        assert_eq!(log.read_committed().await.expect("read"), Some(log_id(3, 7)));
    }
}
