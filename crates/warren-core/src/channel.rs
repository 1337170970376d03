//! Per-channel state: the command assembler, consumers, unacknowledged deliveries, prefetch,
//! confirm mode and transactions.
//!
//! The channel's delivery tags and its deliveries waiting for an ack live in its
//! [`ChannelCredit`], shared with the queues of its consumers: a queue hands out the tag and
//! records the delivery itself, without looking the channel up (see `credit.rs`).

pub use crate::credit::Unacked;
use crate::credit::{ChannelCredit, ConsumerCredit};
use crate::hash::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use warren_amqp::{ContentAssembler, Method, ShortStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// We sent channel.close and wait for close-ok; every other frame is dropped.
    Closing,
}

#[derive(Debug)]
pub struct Consumer {
    pub queue: ShortStr,
    /// Its no-ack mode, its prefetch (basic.qos global=false at the time of consume; 0 =
    /// unlimited) and its deliveries not yet settled, shared with its queue.
    pub credit: Arc<ConsumerCredit>,
}

/// An acknowledgement kept back by a transaction until commit.
#[derive(Debug, Clone, Copy)]
pub enum AckOp {
    Ack { delivery_tag: u64, multiple: bool },
    Nack { delivery_tag: u64, multiple: bool, requeue: bool },
}

/// A publish after validation, ready to route (kept back by a transaction until commit).
#[derive(Debug, Clone)]
pub struct Publish {
    /// The exchange and routing key it was published with are the message's.
    pub mandatory: bool,
    pub msg: crate::message::MessageRef,
    /// Confirm-mode sequence number.
    pub confirm_seq: Option<u64>,
}

/// The sync owner of what is not one queue's (several queues, an exchange's store): a failure
/// of it nacks every publish of its round, and a publish waiting on it is nacked by any failure.
pub const SYNC_ANY: u32 = u32::MAX;

/// What a sync round's outcome released of a channel's deferred answers
/// ([`Channel::release_deferred`]).
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    /// To send on the channel, in order (nothing once it is closing).
    pub answers: Vec<Method>,
    /// Answers still wait for a later round.
    pub waiting: bool,
    /// A tx.commit's sync failed: the channel is to be closed.
    pub commit_failed: bool,
    /// Publishes confirmed (acks, not nacks).
    pub confirms: u64,
}

/// What a deferred answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferredKind {
    /// basic.ack of a publish (confirm mode), by publish sequence number.
    Ack(u64),
    /// basic.nack of a publish the store failed to take.
    Nack(u64),
    /// tx.commit-ok of a transaction whose persistent messages must reach the disk first.
    CommitOk,
}

#[derive(Debug, Clone, Copy)]
pub struct Deferred {
    /// The store sync epoch that must complete first; 0 when nothing needs syncing.
    pub epoch: u64,
    pub kind: DeferredKind,
    /// Whose sync it waits for: the one queue's `sync_id`, or [`SYNC_ANY`]
    /// (several queues, an exchange's store): a failed sync of that owner makes it a nack.
    pub target: u32,
    /// Replicated queues (Raft groups) that have still to commit the publish.
    pub awaiting: u32,
    /// A replicated queue refused the publish or could not take it: a nack.
    pub refused: bool,
}

#[derive(Debug, Default)]
pub struct TxState {
    pub publishes: Vec<Publish>,
    pub acks: Vec<AckOp>,
    /// Delivery tags an ack or nack of this transaction names: they stay unacked until the
    /// commit (a rollback or a close leaves them unacked), but a second ack of one is refused.
    pub pending: std::collections::BTreeSet<u64>,
}

#[derive(Debug)]
pub struct Channel {
    state: ChannelState,
    pub assembler: ContentAssembler,
    pub consumers: HashMap<ShortStr, Consumer>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    pub prefetch_consumer: u16,
    /// What the queues of its consumers read: open or not, the unacked count, the channel's
    /// prefetch (basic.qos global=true) and the node's cap (`unacked_max_per_channel`).
    credit: Arc<ChannelCredit>,
    /// Confirm mode: the sequence number of the next publish.
    pub confirm_next: Option<u64>,
    /// Answers held back until the store has synced the epoch they wait for (0: none), in the
    /// order the client must see them.
    pub deferred: VecDeque<Deferred>,
    pub tx: Option<TxState>,
    /// The queue named by the last queue.declare, for methods given an empty queue name.
    pub last_queue: Option<ShortStr>,
    /// Direct reply-to: the consumer tag and the routing suffix of this channel's reply consumer.
    pub reply_to: Option<(ShortStr, ShortStr)>,
    /// Delivery tags taken back from consumers cancelled by the acknowledgement timeout: a late
    /// ack or nack of one of them is ignored rather than an unknown-tag error (as RabbitMQ 4).
    /// Bounded by the deliveries that were outstanding when the consumers timed out.
    pub reclaimed: std::collections::BTreeSet<u64>,
}

impl Channel {
    /// An open channel whose unacked deliveries the node caps at `unacked_max`.
    pub fn new(unacked_max: usize) -> Self {
        Channel {
            state: ChannelState::Open,
            assembler: ContentAssembler::default(),
            consumers: HashMap::default(),
            prefetch_consumer: 0,
            credit: ChannelCredit::new(unacked_max),
            confirm_next: None,
            deferred: VecDeque::new(),
            tx: None,
            last_queue: None,
            reply_to: None,
            reclaimed: Default::default(),
        }
    }

    /// A delivery that needs no ack (no-ack consumers, direct reply-to, basic.get no-ack).
    pub fn take_delivery_tag(&mut self) -> u64 {
        self.credit.deliver(None)
    }

    pub fn state(&self) -> ChannelState {
        self.state
    }

    /// We sent channel.close: every frame but close-ok is dropped from now on, and its
    /// consumers' queues see it closed.
    pub fn start_closing(&mut self) {
        self.state = ChannelState::Closing;
        self.credit.close();
    }

    /// What its consumers' queues read (see [`ChannelCredit`]).
    pub fn credit(&self) -> &Arc<ChannelCredit> {
        &self.credit
    }

    /// basic.qos global=true: the limit on unacked deliveries of the whole channel; 0 = none.
    pub fn prefetch_channel(&self) -> u16 {
        self.credit.prefetch()
    }

    pub fn set_prefetch_channel(&mut self, prefetch: u16) {
        self.credit.set_prefetch(prefetch);
    }

    /// The node's cap on this channel's unacked deliveries (`unacked_max_per_channel`).
    pub fn unacked_max(&self) -> usize {
        self.credit.unacked_max()
    }

    /// Deliveries (and basic.get answers) waiting for an ack.
    pub fn unacked_count(&self) -> usize {
        self.credit.unacked()
    }

    /// The oldest delivery still waiting for an ack that was made before `deadline_ms`: its
    /// consumer (None for basic.get). None when there is none.
    pub fn overdue(&self, deadline_ms: u64) -> Option<Option<ShortStr>> {
        self.credit.with_unacked(|unacked| {
            unacked.iter().find(|u| u.delivered_at_ms < deadline_ms).map(|u| u.consumer.clone())
        })
    }

    /// A basic.get answer that waits for an ack: its tag is the next one.
    pub fn push_unacked(&mut self, u: Unacked) -> u64 {
        self.credit.deliver(Some(u))
    }

    /// Takes every unacked delivery (the channel closes, or basic.recover).
    pub fn take_all_unacked(&mut self) -> Vec<Unacked> {
        self.credit.with_unacked(|unacked| unacked.drain(..).collect())
    }

    /// Takes the unacked deliveries of one consumer, keeping the others in order.
    pub fn take_unacked_of(&mut self, tag: &ShortStr) -> Vec<Unacked> {
        self.credit.with_unacked(|unacked| {
            let (mine, rest): (Vec<Unacked>, Vec<Unacked>) =
                unacked.drain(..).partition(|u| u.consumer.as_ref() == Some(tag));
            *unacked = rest.into();
            mine
        })
    }

    /// Removes and returns the unacked deliveries an ack / nack names, or None when the tag is
    /// unknown. Tag 0 with `multiple` means every outstanding delivery.
    pub fn take_acked(&mut self, delivery_tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        self.credit.with_unacked(|unacked| {
            if multiple {
                if delivery_tag == 0 {
                    return Some(unacked.drain(..).collect());
                }
                // Everything outstanding up to and including the tag; nothing there is an error.
                let end = unacked.partition_point(|u| u.delivery_tag <= delivery_tag);
                if end == 0 {
                    return None;
                }
                return Some(unacked.drain(..end).collect());
            }
            let pos = unacked.binary_search_by_key(&delivery_tag, |u| u.delivery_tag).ok()?;
            unacked.remove(pos).map(|u| vec![u])
        })
    }

    /// Forgets reclaimed tags an ack / nack names; true if it named any (and nothing else).
    pub fn forget_reclaimed(&mut self, delivery_tag: u64, multiple: bool) -> bool {
        if multiple {
            let before = self.reclaimed.len();
            self.reclaimed = self.reclaimed.split_off(&(delivery_tag + 1));
            before != self.reclaimed.len()
        } else {
            self.reclaimed.remove(&delivery_tag)
        }
    }

    /// An ack or nack inside a transaction: checked now as RabbitMQ checks it (the tag must be
    /// unacked and not already settled by this transaction; tag 0 with `multiple` is every
    /// one), applied at the commit. False when the tag is unknown.
    pub fn hold_for_tx(&mut self, delivery_tag: u64, multiple: bool) -> bool {
        let Some(tx) = self.tx.as_mut() else { return false };
        let all = multiple && delivery_tag == 0;
        self.credit.with_unacked(|unacked| {
            if !all {
                let known = unacked.binary_search_by_key(&delivery_tag, |u| u.delivery_tag).is_ok();
                if !known || tx.pending.contains(&delivery_tag) {
                    return false;
                }
            }
            let last = if all { u64::MAX } else { delivery_tag };
            for u in unacked.iter().take_while(|u| u.delivery_tag <= last) {
                if multiple || u.delivery_tag == delivery_tag {
                    tx.pending.insert(u.delivery_tag);
                }
            }
            true
        })
    }

    /// The deferred answers whose sync is done (their epoch is at most `synced`), in order, acks
    /// coalesced into `multiple` runs. `failed`: the epoch whose sync failed and the owners it
    /// failed for; an answer waiting on that epoch or before, on one of those owners, becomes a
    /// nack (and a commit fails instead). The channel's session decides its answers; the sync's
    /// host only tells it the outcome.
    pub fn release_deferred(&mut self, synced: u64, failed: Option<(u64, &[u32])>) -> Released {
        let open = self.state == ChannelState::Open;
        let mut r = Released::default();
        // A run of acks: (first, last) publish sequence numbers.
        let mut run: Option<(u64, u64)> = None;
        let flush = |run: &mut Option<(u64, u64)>, answers: &mut Vec<Method>| {
            if let Some((first, last)) = run.take() {
                if open {
                    answers.push(Method::BasicAck { delivery_tag: last, multiple: last > first });
                }
            }
        };
        while let Some(d) = self.deferred.front().copied() {
            if d.epoch > synced {
                r.waiting = true;
                break;
            }
            if d.awaiting > 0 {
                // Held by a replicated queue's commit, which releases it when it comes
                // (Broker::replica_committed): the channel waits for a sync round only if
                // something behind needs one. (Waiting for sync rounds here kept the sync
                // task going round after round with nothing to sync.)
                r.waiting = self.deferred.iter().any(|d| d.epoch > synced);
                break;
            }
            self.deferred.pop_front();
            let hit = d.refused
                || failed.is_some_and(|(f, owners)| {
                    d.epoch > 0
                        && d.epoch <= f
                        && (d.target == SYNC_ANY || owners.iter().any(|&o| o == d.target || o == SYNC_ANY))
                });
            match d.kind {
                DeferredKind::Ack(seq) if !hit => {
                    r.confirms += 1;
                    run = Some(match run {
                        Some((first, last)) if last + 1 == seq => (first, seq),
                        mut other => {
                            flush(&mut other, &mut r.answers);
                            (seq, seq)
                        }
                    });
                }
                DeferredKind::Ack(seq) | DeferredKind::Nack(seq) => {
                    flush(&mut run, &mut r.answers);
                    if open {
                        r.answers.push(Method::BasicNack { delivery_tag: seq, multiple: false, requeue: false });
                    }
                }
                DeferredKind::CommitOk if hit => r.commit_failed = true,
                DeferredKind::CommitOk => {
                    flush(&mut run, &mut r.answers);
                    if open {
                        r.answers.push(Method::TxCommitOk);
                    }
                }
            }
        }
        flush(&mut run, &mut r.answers);
        r
    }

    /// Queues an answer behind those already waiting.
    pub fn defer(&mut self, epoch: u64, kind: DeferredKind, target: u32) {
        self.deferred.push_back(Deferred { epoch, kind, target, awaiting: 0, refused: false });
    }

    /// Queues the confirm of publish `seq` behind those already waiting, to go out once
    /// `groups` replicated queues committed it (and the sync `epoch` of any other queue it
    /// reached completed).
    pub fn defer_replicated(&mut self, epoch: u64, seq: u64, target: u32, groups: u32) {
        self.deferred.push_back(Deferred {
            epoch,
            kind: DeferredKind::Ack(seq),
            target,
            awaiting: groups,
            refused: false,
        });
    }

    /// One replicated queue committed publish `seq` (`ok`), or refused or lost it (not `ok`).
    /// False when no confirm of that number waits.
    pub fn replicated(&mut self, seq: u64, ok: bool) -> bool {
        let Some(d) = self.deferred.iter_mut().find(|d| d.kind == DeferredKind::Ack(seq) && d.awaiting > 0) else {
            return false;
        };
        d.awaiting -= 1;
        d.refused |= !ok;
        true
    }
}

impl Default for Channel {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(delivery_tag: u64, multiple: bool) -> Method {
        Method::BasicAck { delivery_tag, multiple }
    }

    fn nack(delivery_tag: u64) -> Method {
        Method::BasicNack { delivery_tag, multiple: false, requeue: false }
    }

    #[test]
    fn synced_answers_go_in_order_with_acks_coalesced() {
        let mut ch = Channel::default();
        for seq in 1..=3 {
            ch.defer(1, DeferredKind::Ack(seq), 7);
        }
        ch.defer(0, DeferredKind::Nack(4), SYNC_ANY);
        ch.defer(1, DeferredKind::Ack(5), 7);
        ch.defer(2, DeferredKind::Ack(6), 7);
        let r = ch.release_deferred(1, None);
        assert_eq!(r.answers, [ack(3, true), nack(4), ack(5, false)]);
        assert!(r.waiting, "seq 6 waits for epoch 2");
        assert_eq!(r.confirms, 4);
        let r = ch.release_deferred(2, None);
        assert_eq!(r.answers, [ack(6, false)]);
        assert!(!r.waiting && !r.commit_failed);
    }

    #[test]
    fn a_failed_sync_nacks_what_waited_on_its_owner_and_fails_a_commit() {
        let mut ch = Channel::default();
        ch.defer(3, DeferredKind::Ack(1), 7);
        ch.defer(3, DeferredKind::Ack(2), 8);
        ch.defer(3, DeferredKind::Ack(3), SYNC_ANY);
        ch.defer(4, DeferredKind::Ack(4), 7);
        let r = ch.release_deferred(4, Some((3, &[7])));
        assert_eq!(r.answers, [nack(1), ack(2, false), nack(3), ack(4, false)], "epoch 4 came after the failure");
        assert_eq!(r.confirms, 2);
        ch.defer(5, DeferredKind::CommitOk, SYNC_ANY);
        let r = ch.release_deferred(5, Some((5, &[9])));
        assert!(r.commit_failed && r.answers.is_empty());
        // A closing channel answers nothing, but its answers are still taken.
        ch.defer(6, DeferredKind::Ack(5), 7);
        ch.start_closing();
        let r = ch.release_deferred(6, None);
        assert!(r.answers.is_empty() && !r.waiting);
        assert!(ch.deferred.is_empty());
    }

    #[test]
    fn a_confirm_held_by_a_replicated_queue_waits_for_no_sync_round() {
        let mut ch = Channel::default();
        ch.defer_replicated(0, 1, SYNC_ANY, 1);
        let r = ch.release_deferred(0, None);
        assert!(r.answers.is_empty() && !r.waiting, "{r:?}");
        // A confirm behind it that needs a sync makes the channel wait for one.
        ch.defer(5, DeferredKind::Ack(2), 3);
        assert!(ch.release_deferred(0, None).waiting);
        // The commit comes: the first goes out, the second once synced.
        assert!(ch.replicated(1, true));
        let r = ch.release_deferred(0, None);
        assert_eq!(r.answers, vec![Method::BasicAck { delivery_tag: 1, multiple: false }]);
        assert!(r.waiting);
        let r = ch.release_deferred(5, None);
        assert_eq!(r.answers, vec![Method::BasicAck { delivery_tag: 2, multiple: false }]);
        // A refused one is a nack.
        ch.defer_replicated(0, 3, SYNC_ANY, 2);
        assert!(ch.replicated(3, true) && ch.replicated(3, false));
        let r = ch.release_deferred(5, None);
        assert_eq!(r.answers, vec![Method::BasicNack { delivery_tag: 3, multiple: false, requeue: false }]);
    }
}
