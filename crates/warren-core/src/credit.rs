//! What a queue reads before it hands a message to a consumer, shared with the consumer's
//! channel and connection so that the queue never looks them up: the connection's unwritten
//! bytes ([`Outbound`]), the channel's state and prefetch ([`ChannelCredit`]), and the
//! consumer's own prefetch ([`ConsumerCredit`]).
//!
//! Each count is written by one side for what it does: the queue counts a delivery against the
//! consumer and the channel takes it back when it is settled; the broker counts bytes handed to
//! a connection and the connection's task takes off what it wrote. Today both sides run under
//! the broker's lock; the counts are atomics so that a queue owner on another thread can read
//! them without one (queue shards, issue 14).

use crate::config::CONNECTION_OUTBOUND_MAX_BYTES;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use warren_amqp::ShortStr;

/// Bytes of deliveries handed to a connection and not yet written to its socket, shared by the
/// broker (which adds what it hands over) and the connection's task (which takes off what it
/// wrote, [`Outbound::written`]). A write then needs no trip through the broker unless it makes
/// a full connection writable again (`Broker::on_writable`).
///
/// No wake-up is lost: the broker skips a connection only while the count is at the limit or
/// over it, and then bytes are in flight whose write brings it under the limit.
#[derive(Debug, Default)]
pub struct Outbound(AtomicUsize);

impl Outbound {
    pub(crate) fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }

    /// The connection can take more deliveries.
    pub fn writable(&self) -> bool {
        self.0.load(Ordering::Acquire) < CONNECTION_OUTBOUND_MAX_BYTES
    }

    /// Takes off bytes written; true when that brought a full connection under the limit (the
    /// caller then calls `Broker::on_writable`).
    pub fn written(&self, bytes: usize) -> bool {
        let before = match self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(bytes))) {
            Ok(v) | Err(v) => v,
        };
        before >= CONNECTION_OUTBOUND_MAX_BYTES && before.saturating_sub(bytes) < CONNECTION_OUTBOUND_MAX_BYTES
    }
}

/// A delivery that waits for an ack: the channel's tag for it, and where its queue keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unacked {
    pub delivery_tag: u64,
    pub queue: ShortStr,
    /// The delivery id the queue keeps the message under ([`crate::queue::Queue::check_out`]),
    /// to settle or return it.
    pub id: u64,
    /// None for basic.get.
    pub consumer: Option<ShortStr>,
    pub delivered_at_ms: u64,
}

/// A channel's delivery tags and its deliveries waiting for an ack.
///
/// Invariant: `unacked` is ordered by delivery tag (tags are handed out increasing), so the
/// oldest delivery is at the front and `multiple` acks drain a prefix; its length is the
/// channel's `unacked` count (kept by [`ChannelCredit::with_unacked`]), but for the room a
/// queue has reserved for a delivery it is making ([`ChannelCredit::try_reserve`]).
#[derive(Debug, Default)]
struct Deliveries {
    unacked: VecDeque<Unacked>,
}

/// A channel as its consumers' queues see it: open or closing, its unacked deliveries (every
/// consumer's and basic.get's), its prefetch (basic.qos global=true) and the node's cap on its
/// unacked deliveries (`unacked_max_per_channel`); and its delivery tags, which the queue that
/// delivers takes (`ChannelCredit::deliver`). The flags are written only by the channel.
///
/// `deliveries` is a leaf lock: nothing is locked while it is held but the receiving
/// connection's output (which [`ChannelCredit::deliver_reserved`] hands the delivery to under
/// it, so that deliveries from queues on different threads reach the client in tag order), so
/// a queue and the channel's session may both take it in any state.
#[derive(Debug)]
pub struct ChannelCredit {
    open: AtomicBool,
    unacked: AtomicUsize,
    /// 0 = none.
    prefetch: AtomicU16,
    unacked_max: usize,
    /// The next delivery tag, taken while holding `deliveries`, so the list stays in tag order.
    next_tag: AtomicU64,
    deliveries: Mutex<Deliveries>,
}

impl ChannelCredit {
    pub(crate) fn new(unacked_max: usize) -> Arc<Self> {
        Arc::new(ChannelCredit {
            open: AtomicBool::new(true),
            unacked: AtomicUsize::new(0),
            prefetch: AtomicU16::new(0),
            unacked_max,
            next_tag: AtomicU64::new(1),
            deliveries: Mutex::new(Deliveries::default()),
        })
    }

    fn deliveries(&self) -> MutexGuard<'_, Deliveries> {
        // A panic while the lock was held left the list consistent (every change is one push,
        // drain or remove), so a poisoned lock is taken as it is.
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the channel's next delivery tag for a delivery; one that waits for an ack is
    /// recorded under it (its `delivery_tag` is set here) and counted.
    pub(crate) fn deliver(&self, unacked: Option<Unacked>) -> u64 {
        let mut d = self.deliveries();
        let tag = self.next_tag.fetch_add(1, Ordering::AcqRel);
        if let Some(mut u) = unacked {
            u.delivery_tag = tag;
            d.unacked.push_back(u);
            self.unacked.fetch_add(1, Ordering::AcqRel);
        }
        tag
    }

    /// A queue's delivery: takes the next tag, records a delivery that waits for an ack (its
    /// room was reserved, [`ChannelCredit::try_reserve`]) and hands the delivery on (`emit`),
    /// all under the channel's lock, so that the client sees its tags in order whichever
    /// queues deliver to the channel at once.
    pub(crate) fn deliver_reserved<R>(&self, unacked: Option<Unacked>, emit: impl FnOnce(u64) -> R) -> R {
        let mut d = self.deliveries();
        let tag = self.next_tag.fetch_add(1, Ordering::AcqRel);
        if let Some(mut u) = unacked {
            u.delivery_tag = tag;
            d.unacked.push_back(u);
        }
        emit(tag)
    }

    /// Takes room for one delivery that waits for an ack, within the channel's prefetch and
    /// cap; false when there is none. Two queues delivering to the channel at once cannot both
    /// take its last place.
    pub(crate) fn try_reserve(&self) -> bool {
        let prefetch = usize::from(self.prefetch());
        self.unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                ((prefetch == 0 || n < prefetch) && n < self.unacked_max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back room reserved for a delivery that was not made.
    pub(crate) fn unreserve(&self) {
        self.unacked.fetch_sub(1, Ordering::AcqRel);
    }

    /// Reads or changes the deliveries waiting for an ack; the count follows.
    pub(crate) fn with_unacked<R>(&self, f: impl FnOnce(&mut VecDeque<Unacked>) -> R) -> R {
        let mut d = self.deliveries();
        let before = d.unacked.len();
        let r = f(&mut d.unacked);
        let after = d.unacked.len();
        if after >= before {
            self.unacked.fetch_add(after - before, Ordering::AcqRel);
        } else {
            self.unacked.fetch_sub(before - after, Ordering::AcqRel);
        }
        r
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    pub fn unacked(&self) -> usize {
        self.unacked.load(Ordering::Acquire)
    }

    pub fn prefetch(&self) -> u16 {
        self.prefetch.load(Ordering::Acquire)
    }

    pub(crate) fn set_prefetch(&self, n: u16) {
        self.prefetch.store(n, Ordering::Release);
    }

    pub fn unacked_max(&self) -> usize {
        self.unacked_max
    }

    /// The channel's prefetch is used up. As RabbitMQ's channel limiter, this holds back the
    /// channel's no-ack consumers too, although their own deliveries never count against it.
    pub fn prefetch_reached(&self) -> bool {
        let prefetch = self.prefetch();
        prefetch != 0 && self.unacked() >= usize::from(prefetch)
    }

    /// Room for one more delivery that waits for an ack.
    pub fn has_room(&self) -> bool {
        !self.prefetch_reached() && self.unacked() < self.unacked_max
    }
}

/// A consumer's own limit (basic.qos global=false when it was created; 0 = none) and its
/// deliveries not yet settled. The queue counts a delivery; the channel counts it settled.
#[derive(Debug)]
pub struct ConsumerCredit {
    pub no_ack: bool,
    pub prefetch: u16,
    unacked: AtomicU32,
}

impl ConsumerCredit {
    pub(crate) fn new(no_ack: bool, prefetch: u16) -> Arc<Self> {
        Arc::new(ConsumerCredit { no_ack, prefetch, unacked: AtomicU32::new(0) })
    }

    pub fn unacked(&self) -> u32 {
        self.unacked.load(Ordering::Acquire)
    }

    pub(crate) fn delivered(&self) {
        self.unacked.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn settled(&self) {
        let _ = self.unacked.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(1)));
    }

    /// Room for one more delivery by the consumer's own prefetch.
    pub fn has_room(&self) -> bool {
        self.prefetch == 0 || self.unacked() < u32::from(self.prefetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_empties_a_full_connection_says_so_once() {
        let o = Outbound::default();
        o.add(CONNECTION_OUTBOUND_MAX_BYTES + 10);
        assert!(!o.writable());
        assert!(!o.written(5), "still full");
        assert!(o.written(10), "under the limit now");
        assert!(o.writable());
        assert!(!o.written(1), "it was not full");
        assert!(!o.written(usize::MAX), "never below zero");
    }

    fn pending(id: u64) -> Unacked {
        Unacked { delivery_tag: 0, queue: ShortStr::from_static("q"), id, consumer: None, delivered_at_ms: 0 }
    }

    #[test]
    fn channel_prefetch_and_cap() {
        let c = ChannelCredit::new(3);
        assert!(c.has_room());
        c.set_prefetch(2);
        assert_eq!(c.deliver(Some(pending(10))), 1);
        assert_eq!(c.deliver(None), 2, "a delivery with no ack takes a tag and no room");
        assert!(c.has_room());
        assert_eq!(c.deliver(Some(pending(11))), 3);
        assert!(c.prefetch_reached() && !c.has_room());
        c.set_prefetch(0);
        assert!(c.has_room());
        c.deliver(Some(pending(12)));
        assert!(!c.has_room() && !c.prefetch_reached(), "the cap holds, the prefetch does not");
        let tags: Vec<(u64, u64)> = c.with_unacked(|u| u.iter().map(|u| (u.delivery_tag, u.id)).collect());
        assert_eq!(tags, [(1, 10), (3, 11), (4, 12)]);
        c.with_unacked(|u| u.pop_front());
        assert_eq!(c.unacked(), 2, "the count follows the list");
        assert!(c.has_room());
    }

    #[test]
    fn reserved_room_is_counted_until_given_back() {
        let c = ChannelCredit::new(10);
        c.set_prefetch(2);
        assert!(c.try_reserve());
        assert!(c.try_reserve());
        assert!(!c.try_reserve(), "the prefetch is taken by reservations");
        c.unreserve();
        assert_eq!(c.unacked(), 1);
        let tag = c.deliver_reserved(Some(pending(7)), |tag| tag);
        assert_eq!((tag, c.unacked()), (1, 1), "a reserved delivery is not counted twice");
        assert_eq!(c.deliver_reserved(None, |tag| tag), 2);
        c.with_unacked(|u| u.clear());
        assert_eq!(c.unacked(), 0);
        let u = ChannelCredit::new(1);
        assert!(u.try_reserve() && !u.try_reserve(), "the node's cap holds without a prefetch");
    }

    #[test]
    fn consumer_prefetch() {
        let c = ConsumerCredit::new(false, 1);
        assert!(c.has_room());
        c.delivered();
        assert!(!c.has_room());
        c.settled();
        c.settled();
        assert_eq!(c.unacked(), 0);
        assert!(ConsumerCredit::new(false, 0).has_room());
    }
}
