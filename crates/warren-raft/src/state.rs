//! [`MachineStore`]: openraft's v2 [`RaftStateMachine`] around a user [`Machine`], with the
//! latest snapshot kept in memory or, for a durable group, only in a file (written whole or not
//! at all: a synced temporary file renamed over it) before openraft hears of it, and read back
//! from there when it is asked for.
//!
//! The machine, its applied position and the latest snapshot live under one lock shared with
//! the [`Group`](crate::Group), which reads the machine through it. The lock is never held across
//! an `.await`: applying a batch takes it, runs `Machine::apply` for each entry, releases it, and
//! only then hands the outputs to the applied stream (which may wait for the host to read).
//!
//! Invariant: `last_applied` is the id of the last entry whose effect is in `machine`, and
//! `membership` is the last membership among those entries; a snapshot records both.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::log::DurableLog;
use crate::types::{Entry, Snapshot, SnapshotMeta, Types};
use crate::{Applied, Machine};

/// The machine and what Raft needs to know about it, under one lock.
pub(crate) struct MachineState<M: Machine> {
    pub(crate) machine: M,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot: Option<(SnapshotMeta, Kept)>,
    /// Counts snapshots built here, so that two built at the same log id get distinct ids.
    snapshots_built: u64,
}

/// Where the latest snapshot's bytes are.
enum Kept {
    /// In memory (a group that is not durable).
    Memory(Vec<u8>),
    /// Only in the durable group's snapshot file: a queue's snapshot names every message of a
    /// backlog, and kept in memory as well it would cost about as much again as the machine's
    /// own index of them (it is asked for only to be sent to a member that fell behind).
    File,
}

/// The state machine store a group hands to openraft; clones share the same machine.
pub(crate) struct MachineStore<M: Machine> {
    state: Arc<Mutex<MachineState<M>>>,
    applied: mpsc::Sender<Applied<M::Output>>,
    /// Where the latest snapshot is kept on disk, for a durable group.
    snapshot_file: Option<Arc<PathBuf>>,
    /// The durable group's log, told of each snapshot written (it purges only what one covers).
    log: Option<Arc<dyn DurableLog>>,
    /// The group runs ([`MachineStore::started`]): a snapshot asked for now is to be sent.
    running: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the group is still starting, and how far it replayed its log meanwhile; held
    /// while events are sent, so that they go out in log order.
    replay: Arc<tokio::sync::Mutex<Replay>>,
}

/// While a group starts, openraft applies the log it kept before the host can read the applied
/// stream: those commands are not reported one by one (a log longer than the stream's capacity
/// would wait for a reader that is not there yet) but as one [`Applied::Restored`] once the
/// group runs ([`MachineStore::started`]).
#[derive(Default)]
struct Replay {
    done: bool,
    upto: Option<u64>,
}

impl<M: Machine> Clone for MachineStore<M> {
    fn clone(&self) -> Self {
        MachineStore {
            state: Arc::clone(&self.state),
            applied: self.applied.clone(),
            snapshot_file: self.snapshot_file.clone(),
            log: self.log.clone(),
            running: Arc::clone(&self.running),
            replay: Arc::clone(&self.replay),
        }
    }
}

/// Writes a snapshot to `path` so that a crash leaves either the old file or the new one whole:
/// a temporary file beside it, synced, renamed over it, and the directory synced.
fn write_snapshot_file(path: &Path, meta: &SnapshotMeta, bytes: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut encoded_meta = Vec::new();
    crate::codec::encode_snapshot_meta(meta, &mut encoded_meta);
    out.extend_from_slice(&(encoded_meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded_meta);
    out.extend_from_slice(bytes);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&out)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The snapshot a [`write_snapshot_file`] left, if there is one.
fn read_snapshot_file(path: &Path) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
    if bytes.len() < 8 {
        return Err(bad("too short for a snapshot"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(bad("its checksum does not hold"));
    }
    let meta_len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if body.len() - 4 < meta_len {
        return Err(bad("it ends inside its metadata"));
    }
    let meta = crate::codec::decode_snapshot_meta(&body[4..4 + meta_len])?;
    Ok(Some((meta, body[4 + meta_len..].to_vec())))
}

impl<M: Machine> MachineStore<M> {
    /// A store around `machine`, which is taken to hold the state before the first log entry.
    pub(crate) fn new(machine: M, applied: mpsc::Sender<Applied<M::Output>>) -> Self {
        let state = MachineState {
            machine,
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        MachineStore {
            state: Arc::new(Mutex::new(state)),
            applied,
            snapshot_file: None,
            log: None,
            running: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            replay: Arc::new(tokio::sync::Mutex::new(Replay::default())),
        }
    }

    /// A store that keeps its snapshots in `path`, starting from the one there if there is one
    /// (`machine` restored from it); otherwise as [`MachineStore::new`]. `log` is told which
    /// snapshot is on disk, now and after each one written.
    pub(crate) fn durable(
        machine: M,
        applied: mpsc::Sender<Applied<M::Output>>,
        path: PathBuf,
        log: Arc<dyn DurableLog>,
    ) -> io::Result<Self> {
        let kept = read_snapshot_file(&path)?;
        let mut store = MachineStore::new(machine, applied);
        let mut last = None;
        if let Some((meta, bytes)) = kept {
            let mut state = store.state.lock();
            state.machine.restore(&bytes)?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            last = meta.last_log_id;
            state.snapshot = Some((meta, Kept::File));
        }
        log.snapshot_durable(last);
        store.snapshot_file = Some(Arc::new(path));
        store.log = Some(log);
        Ok(store)
    }

    /// How the latest snapshot, `bytes`, is kept once it is persisted.
    fn keep(&self, bytes: Vec<u8>) -> Kept {
        if self.snapshot_file.is_some() {
            Kept::File
        } else {
            Kept::Memory(bytes)
        }
    }

    /// The bytes of the latest snapshot, `meta`, as `kept`.
    #[allow(clippy::result_large_err)]
    fn snapshot_bytes<'a>(
        &self,
        meta: &SnapshotMeta,
        kept: &'a Kept,
    ) -> Result<std::borrow::Cow<'a, [u8]>, StorageError<u64>> {
        let path = match kept {
            Kept::Memory(bytes) => return Ok(std::borrow::Cow::Borrowed(bytes)),
            Kept::File => self.snapshot_file.as_ref().ok_or_else(|| {
                snapshot_error(meta, &io::Error::other("a snapshot kept in a file by a group with no snapshot file"))
            })?,
        };
        match read_snapshot_file(path) {
            Ok(Some((on_disk, bytes))) if on_disk == *meta => Ok(std::borrow::Cow::Owned(bytes)),
            Ok(_) => Err(snapshot_error(meta, &io::Error::other("the snapshot file holds another snapshot"))),
            Err(e) => Err(snapshot_error(meta, &e)),
        }
    }

    /// Keeps a snapshot on disk, for a durable store, before openraft is told of it. (The
    /// error is openraft's own type, large as it is: it goes straight back to openraft.)
    #[allow(clippy::result_large_err)]
    fn persist(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), StorageError<u64>> {
        let Some(path) = &self.snapshot_file else { return Ok(()) };
        write_snapshot_file(path, meta, bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?;
        if let Some(log) = &self.log {
            log.snapshot_durable(meta.last_log_id);
        }
        Ok(())
    }

    /// The shared state, for the group to read the machine.
    pub(crate) fn state(&self) -> Arc<Mutex<MachineState<M>>> {
        Arc::clone(&self.state)
    }

    /// Reports events to the host in order. A host that dropped its receiver wants none: that is
    /// not an error.
    ///
    /// While the group starts, the events are not sent: how far the log was applied is kept,
    /// to be reported as one `Restored` first.
    async fn report(&self, events: Vec<Applied<M::Output>>) {
        let mut replay = self.replay.lock().await;
        if !replay.done {
            if let Some(last) = events.last() {
                replay.upto = Some(last.index());
            }
            return;
        }
        let restored = replay.upto.take().map(|index| Applied::Restored { index });
        for event in restored.into_iter().chain(events) {
            if self.applied.send(event).await.is_err() {
                return;
            }
        }
    }

    /// The group runs and its host reads the applied stream: what was applied while it
    /// started is reported (as one `Restored`), and every event from now on.
    pub(crate) async fn started(&self) {
        self.running.store(true, std::sync::atomic::Ordering::Release);
        let mut replay = self.replay.lock().await;
        replay.done = true;
        if let Some(index) = replay.upto.take() {
            // The stream is empty (nothing was sent before), so this does not wait.
            let _ = self.applied.send(Applied::Restored { index }).await;
        }
    }
}

/// Applies one entry to the locked state; returns openraft's response and the host's event.
fn apply_entry<M: Machine>(
    state: &mut MachineState<M>,
    entry: Entry<M>,
) -> (Option<M::Output>, Option<Applied<M::Output>>) {
    let index = entry.log_id.index;
    debug_assert!(state.last_applied.is_none_or(|last| last.index < index), "entries are applied once, in log order");
    state.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => (None, None),
        EntryPayload::Membership(membership) => {
            state.membership = StoredMembership::new(Some(entry.log_id), membership);
            (None, None)
        }
        EntryPayload::Normal(command) => {
            let output = state.machine.apply(index, &command);
            let event = Applied::Command { index, output: output.clone() };
            (Some(output), Some(event))
        }
    }
}

impl<M: Machine> RaftStateMachine<Types<M>> for MachineStore<M> {
    type SnapshotBuilder = MachineStore<M>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<M::Output>>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        {
            let mut state = self.state.lock();
            for entry in entries {
                let (response, event) = apply_entry(&mut state, entry);
                responses.push(response);
                events.extend(event);
            }
        }
        self.report(events).await;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError<u64>> {
        Ok(Box::default())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Vec<u8>>) -> Result<(), StorageError<u64>> {
        // On disk first: the log behind it may be purged once openraft hears it is installed.
        self.persist(meta, &snapshot)?;
        let index = {
            let mut state = self.state.lock();
            state.machine.restore(&snapshot).map_err(|e| snapshot_error(meta, &e))?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            // The same state as this member keeps it, if that is smaller (a queue's member
            // keeps a backlog's bodies in its own store, not in its snapshot).
            let mut kept = *snapshot;
            if state.machine.prepare_snapshot().is_ok() {
                let own = state.machine.snapshot();
                if own.len() < kept.len() && self.persist(meta, &own).is_ok() {
                    kept = own;
                }
            }
            state.machine.snapshot_written();
            state.snapshot = Some((meta.clone(), self.keep(kept)));
            meta.last_log_id.map(|id| id.index)
        };
        // A snapshot with no last log id covers nothing: there is nothing to report.
        if let Some(index) = index {
            self.report(vec![Applied::Restored { index }]).await;
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<M>>, StorageError<u64>> {
        // Under the lock, file read and all: a later snapshot written meanwhile could let go
        // of the paged records this one names.
        let state = self.state.lock();
        let Some((meta, kept)) = state.snapshot.as_ref() else { return Ok(None) };
        let bytes = self.snapshot_bytes(meta, kept)?;
        // openraft asks at start for the snapshot's metadata only (`get_initial_state`); once
        // the group runs, only to send it to another member, whole.
        if !self.running.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Some(Snapshot { meta: meta.clone(), snapshot: Box::new(bytes.into_owned()) }));
        }
        let whole = state.machine.snapshot_to_send(&bytes).map_err(|e| snapshot_error(meta, &e))?;
        Ok(Some(Snapshot { meta: meta.clone(), snapshot: Box::new(whole) }))
    }
}

impl<M: Machine> RaftSnapshotBuilder<Types<M>> for MachineStore<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<M>, StorageError<u64>> {
        let mut state = self.state.lock();
        state.snapshots_built += 1;
        state
            .machine
            .prepare_snapshot()
            .map_err(|e| StorageError::from(StorageIOError::<u64>::write_snapshot(None, AnyError::new(&e))))?;
        let bytes = state.machine.snapshot();
        let snapshot_id = match state.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, state.snapshots_built),
            None => format!("0-0-{}", state.snapshots_built),
        };
        let meta =
            SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
        // On disk before openraft hears of it (and purges the log behind it).
        self.persist(&meta, &bytes)?;
        state.machine.snapshot_written();
        let kept = if self.snapshot_file.is_some() { Kept::File } else { Kept::Memory(bytes.clone()) };
        state.snapshot = Some((meta.clone(), kept));
        Ok(Snapshot { meta, snapshot: Box::new(bytes) })
    }
}

fn snapshot_error(meta: &SnapshotMeta, err: &io::Error) -> StorageError<u64> {
    StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(err)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};

    #[test]
    fn a_snapshot_file_reads_back_and_a_damaged_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("warren-raft-snapfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("group.snapshot");
        assert!(read_snapshot_file(&path).expect("no file is no snapshot").is_none());
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 42)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-42-1".into(),
        };
        write_snapshot_file(&path, &meta, b"state bytes").expect("write");
        let (back, bytes) = read_snapshot_file(&path).expect("read").expect("a snapshot");
        assert_eq!((back, bytes.as_slice()), (meta, &b"state bytes"[..]));
        let mut damaged = std::fs::read(&path).expect("read");
        damaged[5] ^= 1;
        std::fs::write(&path, &damaged).expect("write");
        assert_eq!(read_snapshot_file(&path).expect_err("refused").kind(), io::ErrorKind::InvalidData);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
