//! Sync scheduling: which store writes a sync round covers, and the answers (publisher
//! confirms, tx.commit-ok, definitions changes) released when it completes.
//!
//! The broker notes every write that a confirm may wait for (its queue in `dirty`, the epoch it
//! belongs to in `write_epoch`); the server runs a round's fsyncs outside the lock
//! ([`Broker::begin_sync`], [`SyncJob`]) and reports the outcome ([`Broker::end_sync`]), which
//! sends the answers of every channel that waited on that epoch, in order, or nacks those whose
//! queue's sync failed.

use super::*;

/// A store sync to run outside the broker lock: sync every handle, then call
/// [`Broker::end_sync`] with the epoch.
pub struct SyncJob {
    pub epoch: u64,
    pub handles: Vec<Arc<dyn SyncHandle>>,
    /// Whose each handle is (`owners[i]` for `handles[i]`): a queue's `sync_id`, or
    /// [`SYNC_ANY`]. A failed sync nacks only the publishes that waited on its owner.
    pub owners: Vec<u32>,
}

pub use crate::channel::SYNC_ANY;

/// The sync owner of the definitions journal: its failure nacks every publish of the round (a
/// queue they went to may not be durable) and makes the next change rewrite the snapshot.
pub(super) const SYNC_DEFINITIONS: u32 = u32::MAX - 1;

/// Whose sync a publish waits for, merged over its queues: `None` when it needs no sync.
pub(super) fn merge_sync_target(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(x), Some(y)) if x == y => Some(x),
        _ => Some(SYNC_ANY),
    }
}

/// What routing a publish asked of the store.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PublishSync {
    /// The confirm waits for a sync of this owner.
    pub(super) target: Option<u32>,
    /// A queue could not take it (its storage failed): the confirm is a nack.
    pub(super) failed: bool,
}

/// What became of a publish once routed, for its counts, return and confirm.
#[derive(Debug, Clone, Copy)]
pub(super) struct Routed {
    /// It reached a queue (or an exchange that holds it).
    pub(super) routed: bool,
    /// It was a direct reply-to answer.
    pub(super) direct_reply: bool,
    /// A queue refused it (reject-publish).
    pub(super) rejected: bool,
    pub(super) sync: PublishSync,
    /// Replicated queues (Raft groups) it went to: its confirm waits for each to commit.
    pub(super) replicated: u32,
}

impl Broker {
    /// True when answers wait for a store sync: the server should start one now.
    pub fn sync_wanted(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// True when some log has writes that a sync round should pick up now: appends at once,
    /// settles once [`ACK_SYNC_INTERVAL_MS`] has passed since the acks were last synced.
    pub fn has_unsynced_writes(&self, now_ms: u64) -> bool {
        !self.dirty.is_empty() || !self.dirty_exchanges.is_empty() || self.journal_unsynced || self.acks_due(now_ms)
    }

    pub(super) fn acks_due(&self, now_ms: u64) -> bool {
        !self.ack_dirty.is_empty() && now_ms >= self.acks_synced_ms.saturating_add(ACK_SYNC_INTERVAL_MS)
    }

    /// Starts a store sync: takes the files written since the last one. Group commit: one
    /// sync covers every write made before this call, from every connection.
    ///
    /// Confirms wait only for appends, so the ack files (settles) are left out of most rounds
    /// and synced together every [`ACK_SYNC_INTERVAL_MS`], or in every round with `all`: an
    /// acknowledged message may come back after a crash within that window (at-least-once), a
    /// confirmed one is never lost.
    pub fn begin_sync(&mut self, now_ms: u64, all: bool) -> SyncJob {
        self.fold_shared();
        let epoch = self.write_epoch;
        self.write_epoch += 1;
        let mut handles = Vec::new();
        let acks = all || self.acks_due(now_ms);
        if acks {
            self.acks_synced_ms = now_ms;
            self.dirty.extend(std::mem::take(&mut self.ack_dirty));
        }
        let mut owners = Vec::new();
        for (vhost, name) in std::mem::take(&mut self.dirty) {
            if let Some(q) = self.vhosts.get_mut(&*vhost).and_then(|v| v.queues.get_mut(&name).map(Mutex::get_mut)) {
                handles.extend(q.pending_sync(acks));
                owners.resize(handles.len(), q.sync_id);
                if !acks && q.has_pending_sync() {
                    self.ack_dirty.insert((vhost.clone(), name));
                }
                Self::report_storage(&mut self.warnings, &mut self.notices, &vhost, q);
                if q.storage_trouble().is_some() {
                    // Keep coming back until it is made good: it owes writes.
                    self.ack_dirty.insert((vhost, q.name.clone()));
                }
            }
        }
        for (vhost, name) in std::mem::take(&mut self.dirty_exchanges) {
            let exchange = self.vhosts.get_mut(&*vhost).and_then(|v| v.exchanges.get_mut(&name));
            if let Some(x) = exchange {
                if let Some(d) = x.delayed.as_mut() {
                    handles.extend(d.pending_sync());
                }
                if let Some(c) = x.dedup.as_mut() {
                    handles.extend(c.pending_sync());
                }
            }
        }
        if std::mem::take(&mut self.journal_unsynced) {
            // Topology a confirm may depend on (a queue just declared) is made durable with it.
            if let Some(j) = self.store.journal.as_ref() {
                owners.resize(handles.len(), SYNC_ANY);
                handles.push(j.sync_handle());
                owners.push(SYNC_DEFINITIONS);
            }
        }
        owners.resize(handles.len(), SYNC_ANY);
        self.stats.sync_rounds += 1;
        self.stats.fsyncs += handles.len() as u64;
        SyncJob { epoch, handles, owners }
    }

    /// Logs once when a queue's storage becomes degraded, and once when it is healthy again.
    pub(super) fn report_storage(warnings: &mut Vec<String>, notices: &mut Vec<String>, vhost: &str, q: &mut Queue) {
        match (q.storage_trouble(), q.storage_reported.is_some()) {
            (Some(why), false) => {
                warnings.push(format!(
                    "queue '{}' in vhost '{vhost}': storage degraded ({why}); publishes that need it are \
                     nacked and its writes retried until they succeed",
                    q.name
                ));
                q.storage_reported = Some(why.to_string());
            }
            (None, true) => {
                notices.push(format!("queue '{}' in vhost '{vhost}': storage healthy again", q.name));
                q.storage_reported = None;
            }
            _ => {}
        }
    }

    pub(super) fn take_sync_id(&mut self) -> u32 {
        // SYNC_ANY and SYNC_DEFINITIONS are never a queue's; wrapping past them only makes
        // nacks coarser.
        let id = self.next_sync_id;
        self.next_sync_id = self.next_sync_id.wrapping_add(1) % SYNC_DEFINITIONS;
        id
    }

    /// How many queues have degraded storage (see [`QueueInfo::storage_trouble`]).
    pub fn degraded_queues(&self) -> usize {
        self.vhosts
            .values()
            .flat_map(|v| v.queues.values().map(|q| q.lock()))
            .filter(|q| q.storage_trouble().is_some())
            .count()
    }

    /// Warnings and notices since the last call, for the log.
    pub fn take_warnings(&mut self) -> (Vec<String>, Vec<String>) {
        (std::mem::take(&mut self.warnings), std::mem::take(&mut self.notices))
    }

    /// A sync finished: answers waiting for it go out. On failure the confirms waiting for it
    /// are nacked: those messages may not be on disk.
    ///
    /// `failures` are the owners (from [`SyncJob::owners`]) whose sync failed, with the error:
    /// only the confirms that waited on one of them are nacked.
    pub fn end_sync(
        &mut self,
        epoch: u64,
        failures: Vec<(u32, std::io::Error)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        self.fold_shared();
        let mut failed: Vec<u32> = Vec::with_capacity(failures.len());
        for (owner, e) in failures {
            let owner = if owner == SYNC_DEFINITIONS {
                self.definitions_sync_failed(&e);
                SYNC_ANY
            } else {
                owner
            };
            if !failed.contains(&owner) {
                self.errors.push(format!("store sync failed: {e}; confirms waiting for it are nacked"));
                failed.push(owner);
            }
        }
        self.synced_epoch = self.synced_epoch.max(epoch);
        let mut waiting: Vec<ConnId> = self.waiting.iter().copied().collect();
        waiting.sort_unstable();
        let failed = (!failed.is_empty()).then_some((epoch, failed.as_slice()));
        for conn in waiting {
            self.release_deferred(conn, failed, now_ms, out);
        }
    }

    /// Sends the deferred answers of `conn` whose sync is done, in order, acks coalesced into
    /// `multiple` runs. `failed`: the epoch whose sync failed and the owners it failed for;
    /// answers waiting on this epoch or before, on one of those owners, become nacks (and a
    /// commit fails: its channel is closed).
    pub(super) fn release_deferred(
        &mut self,
        conn: ConnId,
        failed: Option<(u64, &[u32])>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let synced = self.synced_epoch;
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else {
            self.waiting.remove(&conn);
            return;
        };
        let mut still_waiting = false;
        let mut failed_commits: Vec<u16> = Vec::new();
        let mut channels: Vec<u16> = c.channels.keys().copied().collect();
        channels.sort_unstable();
        for channel in channels {
            let Some(ch) = c.channels.get_mut(&channel) else { continue };
            let released = ch.release_deferred(synced, failed);
            self.stats.confirms += released.confirms;
            out.extend(released.answers.into_iter().map(|method| (conn, Out::Method { channel, method })));
            still_waiting |= released.waiting;
            if released.commit_failed {
                failed_commits.push(channel);
            }
        }
        if still_waiting {
            self.waiting.insert(conn);
        } else {
            self.waiting.remove(&conn);
        }
        for channel in failed_commits {
            let e = ProtocolError::new(
                ReplyCode::PreconditionFailed,
                "tx.commit failed: the store could not make the transaction's messages durable",
            )
            .on((90, 20));
            self.channel_error(conn, channel, e, now_ms, out);
        }
    }
}
