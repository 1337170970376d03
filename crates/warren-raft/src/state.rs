//! [`MachineStore`]: openraft's v2 [`RaftStateMachine`] around a user [`Machine`], with the
//! latest snapshot kept in memory.
//!
//! The machine, its applied position and the latest snapshot live under one lock shared with
//! the [`Group`](crate::Group), which reads the machine through it. The lock is never held across
//! an `.await`: applying a batch takes it, runs `Machine::apply` for each entry, releases it, and
//! only then hands the outputs to the applied stream (which may wait for the host to read).
//!
//! Invariant: `last_applied` is the id of the last entry whose effect is in `machine`, and
//! `membership` is the last membership among those entries; a snapshot records both.

use std::io;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::types::{Entry, Snapshot, SnapshotMeta, Types};
use crate::{Applied, Machine};

/// The machine and what Raft needs to know about it, under one lock.
pub(crate) struct MachineState<M: Machine> {
    pub(crate) machine: M,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// Counts snapshots built here, so that two built at the same log id get distinct ids.
    snapshots_built: u64,
}

/// The state machine store a group hands to openraft; clones share the same machine.
pub(crate) struct MachineStore<M: Machine> {
    state: Arc<Mutex<MachineState<M>>>,
    applied: mpsc::Sender<Applied<M::Output>>,
}

impl<M: Machine> Clone for MachineStore<M> {
    fn clone(&self) -> Self {
        MachineStore { state: Arc::clone(&self.state), applied: self.applied.clone() }
    }
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
        MachineStore { state: Arc::new(Mutex::new(state)), applied }
    }

    /// The shared state, for the group to read the machine.
    pub(crate) fn state(&self) -> Arc<Mutex<MachineState<M>>> {
        Arc::clone(&self.state)
    }

    /// Reports events to the host in order. A host that dropped its receiver wants none: that is
    /// not an error.
    async fn report(&self, events: Vec<Applied<M::Output>>) {
        for event in events {
            if self.applied.send(event).await.is_err() {
                return;
            }
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
        let index = {
            let mut state = self.state.lock();
            state.machine.restore(&snapshot).map_err(|e| snapshot_error(meta, &e))?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.snapshot = Some((meta.clone(), *snapshot));
            meta.last_log_id.map(|id| id.index)
        };
        // A snapshot with no last log id covers nothing: there is nothing to report.
        if let Some(index) = index {
            self.report(vec![Applied::Restored { index }]).await;
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<M>>, StorageError<u64>> {
        let state = self.state.lock();
        Ok(state
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: Box::new(bytes.clone()) }))
    }
}

impl<M: Machine> RaftSnapshotBuilder<Types<M>> for MachineStore<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<M>, StorageError<u64>> {
        let mut state = self.state.lock();
        state.snapshots_built += 1;
        let bytes = state.machine.snapshot();
        let snapshot_id = match state.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, state.snapshots_built),
            None => format!("0-0-{}", state.snapshots_built),
        };
        let meta =
            SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone(), snapshot_id };
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(bytes) })
    }
}

fn snapshot_error(meta: &SnapshotMeta, err: &io::Error) -> StorageError<u64> {
    StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(err)).into()
}
