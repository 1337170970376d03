//! Work done while the broker is shared: a whole publish handled by its own connection's
//! thread while other connections do the same, each holding only its own session's lock and
//! one queue's lock at a time (see docs/architecture.md, "Publishing in parallel").
//!
//! Everything else still runs with the broker held exclusively. A publish is taken here only
//! when nothing about it needs more: its channel open between commands and outside a
//! transaction, every check passed, no resource alarm, no exchange that keeps state of its own
//! (deduplication, delayed messages), no direct reply-to. Otherwise it is handed back
//! untouched, and the caller takes the broker exclusively and handles it as always. The checks
//! read state only, so a publish handed back has changed nothing.
//!
//! What a shared publish changes outside its session and its queues (counters, queues to sync,
//! messages to log, connections that wait for a sync) is gathered in a [`Tally`] by the thread
//! that did it, merged into the broker's pending tally once per batch
//! ([`Broker::finish_shared`]), and folded into the broker's own fields when it is next held
//! exclusively ([`Broker::fold_shared`]), always before a sync round starts.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a queue's deliveries go.
#[derive(Clone, Copy)]
pub enum Sink<'a> {
    /// Into the caller's output, handed to the connections in order while the broker is held.
    Out,
    /// Straight to the receiving connection ([`Stage`]), under the receiving channel's lock,
    /// while the broker is shared.
    Staged(&'a dyn Stage),
}

/// The host's way to hand a delivery to a connection while the broker is shared. It is called
/// with the receiving channel's lock held (so deliveries reach each channel in tag order
/// whichever threads make them), and must neither block nor call back into the broker.
pub trait Stage {
    fn stage(&self, conn: ConnId, out: Out);
}

/// What shared work leaves for the broker's bookkeeping (see the module's documentation).
#[derive(Debug, Default)]
pub struct Tally {
    pub(crate) counters: crate::metrics::Counters,
    /// Queues (vhost, name) with writes not yet synced.
    dirty: Vec<(Arc<str>, ShortStr)>,
    pub(crate) errors: Vec<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) notices: Vec<String>,
    /// Connections whose answers now wait for a sync round (true) or no longer do (false), in
    /// the order that was decided.
    waiting: Vec<(ConnId, bool)>,
    /// Publisher confirms sent.
    confirms: u64,
    /// Bytes taken in (for the memory alarm's prediction) and written to queue logs (for the
    /// disk alarm's), not yet added to the broker's counters: they are added a run at a time
    /// ([`TALLY_FLUSH_BYTES`]), since each add writes a cache line every publishing thread
    /// shares.
    pub(crate) ingested: u64,
    pub(crate) disk_written: u64,
    /// Queues reached by publishes and messages settled: what the work done so far cost,
    /// roughly, for a host that looks at the clock only now and then.
    pub work: u64,
    /// Commands for replicated queues' groups.
    pub(crate) replica_work: Vec<super::ReplicaWork>,
    /// Where routing works, kept from one publish of the batch to the next.
    route_queues: Vec<ShortStr>,
    route_dests: Vec<crate::exchange::Destination>,
}

/// How many bytes taken in or written a tally holds before it adds them to the broker's
/// counters: what another thread's prediction of an alarm may miss, per publishing thread.
const TALLY_FLUSH_BYTES: u64 = 256 * 1024;

/// Adds `bytes` to a tally's `pending` count, and the count to the broker's `counter` once it
/// reaches `run`.
fn add_run(pending: &mut u64, counter: &AtomicU64, bytes: u64, run: u64) {
    *pending += bytes;
    if *pending >= run {
        counter.fetch_add(std::mem::take(pending), Ordering::Relaxed);
    }
}

impl Tally {
    /// Marks a queue for the next sync round (a run of publishes to one queue marks it once).
    pub(crate) fn dirty(&mut self, vhost: &Arc<str>, queue: &ShortStr) {
        if self.dirty.last().is_some_and(|(v, q)| v == vhost && q == queue) {
            return;
        }
        self.dirty.push((vhost.clone(), queue.clone()));
    }

    /// Errors, warnings and notices to log, taken out.
    pub fn take_log(&mut self) -> (Vec<String>, Vec<String>, Vec<String>) {
        (std::mem::take(&mut self.errors), std::mem::take(&mut self.warnings), std::mem::take(&mut self.notices))
    }

    /// True when a connection now waits for a sync round: the host should start one.
    pub fn sync_wanted(&self) -> bool {
        self.waiting.last().is_some_and(|&(_, w)| w)
    }

    /// Counts bytes taken in, adding them to the broker's counter a run at a time.
    pub(crate) fn add_ingested(&mut self, counter: &AtomicU64, bytes: u64) {
        add_run(&mut self.ingested, counter, bytes, TALLY_FLUSH_BYTES);
    }

    /// Counts bytes written to queue logs, likewise.
    pub(crate) fn add_disk_written(&mut self, counter: &AtomicU64, bytes: u64) {
        add_run(&mut self.disk_written, counter, bytes, TALLY_FLUSH_BYTES);
    }

    fn merge(&mut self, other: Tally) {
        self.counters.add(&other.counters);
        self.dirty.extend(other.dirty);
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
        self.notices.extend(other.notices);
        self.waiting.extend(other.waiting);
        self.confirms += other.confirms;
        self.replica_work.extend(other.replica_work);
    }
}

impl Broker {
    /// Folds a tally into the broker's own fields.
    pub(super) fn fold(&mut self, t: Tally) {
        *self.ingested.get_mut() += t.ingested;
        *self.disk_written.get_mut() += t.disk_written;
        self.counters.add(&t.counters);
        self.dirty.extend(t.dirty);
        self.errors.extend(t.errors);
        self.warnings.extend(t.warnings);
        self.notices.extend(t.notices);
        for (conn, waits) in t.waiting {
            // A connection that left meanwhile waits for nothing.
            if waits && self.conns.contains_key(&conn) {
                self.waiting.insert(conn);
            } else {
                self.waiting.remove(&conn);
            }
        }
        self.stats.confirms += t.confirms;
        self.replication.work.extend(t.replica_work);
    }

    /// Folds in what shared work left since the broker was last held exclusively. The host
    /// calls it whenever it takes the broker exclusively; the broker's own readers of those
    /// fields (sync rounds, ticks) call it too.
    pub fn fold_shared(&mut self) {
        let t = std::mem::take(self.pending.get_mut());
        self.fold(t);
    }

    /// Ends a batch of shared work: its tally is kept for the next exclusive hold.
    pub fn finish_shared(&self, mut t: Tally) {
        add_run(&mut t.ingested, &self.ingested, 0, 1);
        add_run(&mut t.disk_written, &self.disk_written, 0, 1);
        self.pending.lock().merge(t);
    }

    /// Counters that shared work has added and that are not yet folded in.
    pub(super) fn pending_counters(&self) -> (crate::metrics::Counters, u64) {
        let p = self.pending.lock();
        (p.counters, p.confirms)
    }

    /// A whole publish, handled while the broker is shared (see the module's documentation).
    /// Deliveries go to `stage`, the publisher's own answers (returns) to `out`. Hands the
    /// publish back, having changed nothing, when it needs the broker held exclusively.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_shared(
        &self,
        conn: ConnId,
        channel: u16,
        content: Assembled,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
        tally: &mut Tally,
        stage: &dyn Stage,
    ) -> Option<Assembled> {
        let Assembled::Content {
            method: Method::BasicPublish { exchange, routing_key, immediate: false, .. },
            properties,
            body,
            ..
        } = &content
        else {
            return Some(content);
        };
        // In a cluster, publishes are handled with the broker held: one that reaches a
        // replicated queue makes a command for its group and a confirm that waits for it.
        if self.alarms.any() || self.replication.on {
            return Some(content);
        }
        let Some(cell) = self.conns.get(&conn) else { return Some(content) };
        let mut c = cell.lock();
        let simple = !c.closing
            && c.channels
                .get(&channel)
                .is_some_and(|ch| ch.state() == ChannelState::Open && !ch.assembler.in_progress() && ch.tx.is_none());
        let direct_reply = properties.reply_to.as_ref().is_some_and(|r| r.as_str() == REPLY_TO_QUEUE)
            || (exchange.is_empty() && routing_key.starts_with(REPLY_TO_PREFIX));
        // An exchange that keeps state of its own (deduplication, delayed messages) needs the
        // broker held.
        let plain_exchange = |x: &Exchange| x.dedup.is_none() && x.delayed.is_none();
        if !simple
            || direct_reply
            || !Self::check_publish(&self.vhosts, c.publisher(), exchange, routing_key, properties)
                .is_ok_and(plain_exchange)
            || self.near_resource_limit(body.len(), tally)
        {
            return Some(content);
        }
        let Assembled::Content {
            method: Method::BasicPublish { exchange, routing_key, mandatory, .. },
            properties,
            raw_properties,
            body,
        } = content
        else {
            unreachable!("matched above")
        };
        // From here on the publish is taken.
        if c.write_ok.as_ref() != Some(&exchange) {
            c.write_ok = Some(exchange.clone());
        }
        if self.memory_headroom.is_some() {
            tally.add_ingested(&self.ingested, body.len() as u64 + alarms::MESSAGE_OVERHEAD_BYTES);
        }
        tally.counters.messages_received += 1;
        let vhost = c.vhost.clone();
        let ch = c.channels.get_mut(&channel).expect("checked above");
        let confirm_seq = ch.confirm_next;
        if let Some(n) = confirm_seq {
            ch.confirm_next = Some(n + 1);
        }
        let msg = Message::published(exchange, routing_key, properties, raw_properties, body);
        let p = Publish { mandatory, msg, confirm_seq };
        let (extra_keys, msg) = crate::dead_letter::sender_selected(&p.msg);
        let headers = msg.properties.headers.as_ref();
        let (mut queues, mut dests) = (std::mem::take(&mut tally.route_queues), std::mem::take(&mut tally.route_dests));
        let (exchange, raw) = (&p.msg.exchange, &msg.raw_properties);
        if extra_keys.is_empty() {
            self.route_into(&vhost, exchange, &[&p.msg.routing_key], headers, raw, &mut queues, &mut dests);
        } else {
            let mut keys: Vec<&str> = vec![&p.msg.routing_key];
            keys.extend(extra_keys.iter().map(String::as_str));
            self.route_into(&vhost, exchange, &keys, headers, raw, &mut queues, &mut dests);
        }
        tally.work += 1 + queues.len() as u64;
        let (queued, rejected, paged) = self.enqueue(&vhost, &queues, &msg, now_ms, out, tally, Sink::Staged(stage));
        if paged {
            c.flow_blocked = true;
        }
        let outcome = Routed { routed: !queues.is_empty(), direct_reply: false, rejected, sync: queued, replicated: 0 };
        queues.clear();
        (tally.route_queues, tally.route_dests) = (queues, dests);
        match Self::finish_publish(&mut c, conn, channel, &p, &outcome, self.write_epoch, &mut tally.counters, out) {
            Ok(true) => tally.waiting.push((conn, true)),
            Ok(false) => {}
            Err(e) => tally.errors.push(format!("connection {conn}: {}", e.text)),
        }
        None
    }

    /// True when a publish of `body` bytes could cross the memory or disk headroom predicted
    /// since the last measurement: it is then handled with the broker held, which sets the
    /// alarm when it is crossed.
    fn near_resource_limit(&self, body: usize, tally: &Tally) -> bool {
        // Generous: what a message may cost in memory or on disk beyond its body, and what
        // other publishing threads may hold in their tallies.
        let cost = 2 * body as u64 + 4 * alarms::MESSAGE_OVERHEAD_BYTES + TALLY_FLUSH_BYTES;
        let memory =
            self.memory_headroom.is_some_and(|h| self.ingested.load(Ordering::Relaxed) + tally.ingested + cost > h);
        let disk = self
            .disk_headroom
            .is_some_and(|h| self.disk_written.load(Ordering::Relaxed) + tally.disk_written + cost > h);
        memory || disk
    }

    /// Ends a batch of shared work for `conn`: the confirms that need no sync go out (as
    /// [`Broker::end_batch`]), and whether the connection still waits for a sync is tallied.
    pub fn end_batch_shared(&self, conn: ConnId, out: &mut Vec<(ConnId, Out)>, tally: &mut Tally) {
        let Some(cell) = self.conns.get(&conn) else { return };
        let mut c = cell.lock();
        let mut still_waiting = false;
        let mut channels: Vec<u16> = c.channels.keys().copied().collect();
        channels.sort_unstable();
        for channel in channels {
            let Some(ch) = c.channels.get_mut(&channel) else { continue };
            let released = ch.release_deferred(self.synced_epoch, None);
            tally.confirms += released.confirms;
            out.extend(released.answers.into_iter().map(|method| (conn, Out::Method { channel, method })));
            still_waiting |= released.waiting;
        }
        tally.waiting.push((conn, still_waiting));
    }

    /// An ack, or a reject or nack that does not requeue, handled while the broker is shared:
    /// the deliveries leave the channel and their queues (rejected ones are dead-lettered),
    /// and the channel's queues deliver again, to `stage`. False, having changed nothing, when
    /// it needs the broker held: another method, a transaction, a tag the channel does not
    /// hold (an error, or one reclaimed from a timed-out consumer), a requeue.
    #[allow(clippy::too_many_arguments)]
    pub fn settle_shared(
        &self,
        conn: ConnId,
        channel: u16,
        method: &Method,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
        tally: &mut Tally,
        stage: &dyn Stage,
    ) -> bool {
        let (tag, multiple, reject) = match *method {
            Method::BasicAck { delivery_tag, multiple } => (delivery_tag, multiple, false),
            Method::BasicNack { delivery_tag, multiple, requeue: false } => (delivery_tag, multiple, true),
            Method::BasicReject { delivery_tag, requeue: false } => (delivery_tag, false, true),
            _ => return false,
        };
        // Deliveries of replicated queues are settled through their groups, with the broker
        // held.
        if self.replication.on {
            return false;
        }
        let Some(cell) = self.conns.get(&conn) else { return false };
        let (vhost, settled, mut queues) = {
            let mut c = cell.lock();
            if c.closing {
                return false;
            }
            let vhost = c.vhost.clone();
            let Some(ch) = c.channels.get_mut(&channel) else { return false };
            if ch.state() != ChannelState::Open || ch.assembler.in_progress() || ch.tx.is_some() {
                return false;
            }
            let Some(settled) = ch.take_acked(tag, multiple) else { return false };
            for u in &settled {
                if let Some(co) = u.consumer.as_ref().and_then(|t| ch.consumers.get(t)) {
                    co.credit.settled();
                }
            }
            let queues: Vec<ShortStr> = ch.consumers.values().map(|co| co.queue.clone()).collect();
            (vhost, settled, queues)
        };
        tally.work += 1 + settled.len() as u64;
        if !reject {
            tally.counters.acknowledged += settled.len() as u64;
        }
        let mut rejected = Vec::new();
        if let Some(vh) = self.vhosts.get(&*vhost) {
            for u in settled {
                let Some(mut q) = vh.queues.get(&u.queue).map(|q| q.lock()) else { continue };
                let Some(item) = q.take_checked_out(u.id) else { continue };
                q.counters.ack += u64::from(!reject);
                if let Err(e) = q.settle(&item) {
                    tally.errors.push(format!("cannot settle a message of queue '{}': {e}", u.queue));
                }
                if q.durable {
                    tally.dirty(&vhost, &u.queue);
                }
                if reject {
                    rejected.push((u.queue, item, "rejected"));
                }
            }
        }
        self.dead_letter_in(&vhost, rejected, now_ms, out, tally, Sink::Staged(stage));
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch_in(&vhost, &q, now_ms, out, tally, Sink::Staged(stage));
        }
        true
    }

    /// [`Broker::on_writable`] while the broker is shared: the connection's consumers' queues
    /// deliver what they held back for it, to `stage`.
    pub fn on_writable_shared(
        &self,
        conn: ConnId,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
        tally: &mut Tally,
        stage: &dyn Stage,
    ) {
        let Some(cell) = self.conns.get(&conn) else { return };
        let (vhost, mut queues) = {
            let c = cell.lock();
            let queues: Vec<ShortStr> =
                c.channels.values().flat_map(|ch| ch.consumers.values().map(|co| co.queue.clone())).collect();
            (c.vhost.clone(), queues)
        };
        self.flow_released.store(true, Ordering::Release);
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch_in(&vhost, &q, now_ms, out, tally, Sink::Staged(stage));
        }
    }

    /// Takes the connection's flow block (see [`Broker::take_flow_blocked`]) while the broker
    /// is shared.
    pub fn take_flow_blocked_shared(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| std::mem::take(&mut c.lock().flow_blocked))
    }
}
