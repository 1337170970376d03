//! Publishing: a publish checked, routed through exchanges (alternate exchanges, exchange
//! bindings, direct reply-to), enqueued on every queue it reaches with what each queue's
//! limits decide, and dead-lettering, which routes again.

use super::*;

impl Broker {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        exchange: ShortStr,
        routing_key: ShortStr,
        mandatory: bool,
        mut properties: PublishProperties,
        mut raw: Bytes,
        body: Bytes,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let c = self.conns.get_mut(&conn).map(Mutex::get_mut).ok_or_else(|| internal("unknown connection"))?;
        Self::check_publish(&self.vhosts, c.publisher(), &exchange, &routing_key, &properties)?;
        c.write_ok = Some(exchange.clone());
        self.count_ingest(body.len());
        self.counters.messages_received += 1;
        let ch = self.channel_mut(conn, channel)?;
        if properties.reply_to.as_ref().is_some_and(|r| r.as_str() == REPLY_TO_QUEUE) {
            let Some((_, suffix)) = &ch.reply_to else {
                return Err(precondition("fast reply consumer does not exist"));
            };
            // The whole list is decoded to rewrite it (it decoded when it arrived).
            let mut all = BasicProperties::decode(raw.clone())?;
            let reply_to = ShortStr::from(format!("{REPLY_TO_PREFIX}{suffix}"));
            all.reply_to = Some(reply_to.clone());
            properties.reply_to = Some(reply_to);
            raw = all.to_bytes();
        }
        let confirm_seq = ch.confirm_next;
        if let Some(n) = confirm_seq {
            ch.confirm_next = Some(n + 1);
        }
        let msg = Message::published(exchange, routing_key, properties, raw, body);
        let p = Publish { mandatory, msg, confirm_seq };
        if let Some(tx) = ch.tx.as_mut() {
            tx.publishes.push(p);
            return Ok(());
        }
        self.route_publish(conn, channel, p, now_ms, out).map(|_| ())
    }

    /// What a publish must pass, read without changing anything: the write permission (checked
    /// only when the exchange differs from the last one allowed, `Conn::write_ok`: a publisher
    /// sending to one exchange pays one comparison per message), the exchange, topic
    /// permissions, the expiration and the user id. Returns the exchange.
    pub(super) fn check_publish<'v>(
        vhosts: &'v HashMap<String, VHost>,
        c: Publisher<'_>,
        exchange: &ShortStr,
        routing_key: &str,
        properties: &PublishProperties,
    ) -> Result<&'v Exchange, ProtocolError> {
        if c.write_ok != Some(exchange)
            && !c.grants.permission.allows(Access::Write, permission_name("exchange", exchange))
        {
            return Err(access_refused("exchange", exchange, c.vhost, c.user));
        }
        let vhost = c.vhost;
        let vh = vhosts.get(vhost).ok_or_else(|| not_found("vhost", vhost, vhost))?;
        let x = vh.exchanges.get(exchange).ok_or_else(|| not_found("exchange", exchange, vhost))?;
        if x.internal {
            return Err(ProtocolError::new(
                ReplyCode::AccessRefused,
                format_args!("cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"),
            ));
        }
        if x.kind == ExchangeKind::Topic
            && !c.grants.topic.is_empty()
            && !c.grants.topic_allows(exchange, Access::Write, routing_key)
        {
            return Err(topic_refused(routing_key, exchange, vhost, c.user));
        }
        if let Some(expiration) = &properties.expiration {
            crate::args::message_ttl_ms(expiration)?;
        }
        if let Some(uid) = &properties.user_id {
            let user = c.user;
            if uid.as_str() != user && !c.grants.impersonator {
                return Err(precondition(format_args!(
                    "user_id property set to '{uid}' but authenticated user was '{user}'"
                )));
            }
        }
        Ok(x)
    }

    /// Routes a publish to its queues, returns it when unroutable and mandatory, and records
    /// its confirm.
    pub(super) fn route_publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        p: Publish,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<PublishSync, ProtocolError> {
        let vhost = self.vhost_of(conn)?;
        let work_before = self.replication.work.len();
        let (mut outcome, paged) = self.route_message(&vhost, &p, now_ms, out)?;
        // The publishes to replicated queues this made wait for their groups: its confirm
        // goes out once each committed.
        let replicated = &mut self.replication.work[work_before..];
        outcome.replicated = replicated.len() as u32;
        if let Some(seq) = p.confirm_seq {
            for w in replicated {
                w.confirm = Some((conn, channel, seq));
            }
        }
        let c = self.conns.get_mut(&conn).map(Mutex::get_mut).ok_or_else(|| internal("unknown connection"))?;
        c.flow_blocked |= paged;
        if Self::finish_publish(c, conn, channel, &p, &outcome, self.write_epoch, &mut self.counters, out)? {
            self.waiting.insert(conn);
        }
        Ok(outcome.sync)
    }

    /// Routes a message to its queues and enqueues it there, whoever published it (a client's
    /// channel or the management API): direct reply-to, sender-selected distribution,
    /// deduplication and delayed-message exchanges, exchanges and their bindings. Returns what
    /// came of it, and whether it was paged to disk behind a consumer whose connection is full.
    pub(super) fn route_message(
        &mut self,
        vhost: &Arc<str>,
        p: &Publish,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<(Routed, bool), ProtocolError> {
        let vhost = vhost.clone();
        let mut paged_behind = false;
        let mut sync = PublishSync::default();
        let mut rejected = false;
        let direct_reply = p.msg.exchange.is_empty() && p.msg.routing_key.starts_with(REPLY_TO_PREFIX);
        let routed = if direct_reply {
            self.deliver_reply(p, out)
        } else {
            // Sender-selected distribution: the CC and BCC headers add routing keys; BCC is
            // taken off the message that queues see.
            let (extra_keys, msg) = crate::dead_letter::sender_selected(&p.msg);
            let headers = msg.properties.headers.as_ref();
            // A deduplication exchange drops a message it has seen, before any routing; a
            // delayed-message exchange holds a message with x-delay until it is due. One lookup
            // serves both (and ordinary exchanges skip both).
            let mut duplicate = false;
            let mut held = None;
            let exchange = self.vhosts.get_mut(&*vhost).and_then(|vh| vh.exchanges.get_mut(&p.msg.exchange));
            if let Some(x) = exchange.filter(|x| x.dedup.is_some() || x.delayed.is_some()) {
                if let Some(cache) = x.dedup.as_mut() {
                    match cache.check_and_insert(headers, now_ms) {
                        Ok(dup) => {
                            if cache.dirty {
                                // A confirm promises the cache entry is on disk too.
                                self.dirty_exchanges.insert((vhost.clone(), p.msg.exchange.clone()));
                                sync.target = Some(SYNC_ANY);
                            }
                            duplicate = dup;
                        }
                        // The cache could not be written: let the message through rather than
                        // drop one that may be new.
                        Err(e) => {
                            self.errors.push(format!("deduplication cache of exchange '{}': {e}", p.msg.exchange))
                        }
                    }
                }
                if let (Some(delay_ms), Some(store)) = (crate::delayed::delay_of(headers), x.delayed.as_mut()) {
                    let durable = store
                        .hold(msg.clone(), now_ms.saturating_add(delay_ms))
                        .map_err(|e| internal(format_args!("cannot hold a delayed message: {e}")))?;
                    if durable {
                        self.dirty_exchanges.insert((vhost.clone(), p.msg.exchange.clone()));
                    }
                    held = Some(durable);
                }
            }
            if held == Some(true) {
                // Accepted: confirmed once on disk (durable exchange), routed when due.
                sync.target = Some(SYNC_ANY);
            }
            let queues = if duplicate || held.is_some() {
                Vec::new()
            } else if extra_keys.is_empty() {
                self.route(&vhost, &p.msg.exchange, &[&p.msg.routing_key], headers, &msg.raw_properties)
            } else {
                let mut keys: Vec<&str> = vec![&p.msg.routing_key];
                keys.extend(extra_keys.iter().map(String::as_str));
                self.route(&vhost, &p.msg.exchange, &keys, headers, &msg.raw_properties)
            };
            let mut tally = Tally::default();
            let (queued, rejected_by, paged) = self.enqueue(&vhost, &queues, &msg, now_ms, out, &mut tally, Sink::Out);
            self.fold(tally);
            self.predict_disk_alarm();
            paged_behind = paged;
            sync.target = merge_sync_target(sync.target, queued.target);
            sync.failed = queued.failed;
            rejected = rejected_by;
            !queues.is_empty() || held.is_some()
        };
        Ok((Routed { routed, direct_reply, rejected, sync, replicated: 0 }, paged_behind))
    }

    /// What follows routing, the same whether the broker is held or shared: the counts, the
    /// return of a mandatory publish that reached nothing, and the confirm, recorded on the
    /// channel to go out when `outcome.sync` allows. True when the connection now waits for
    /// a sync round.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_publish(
        c: &mut Conn,
        conn: ConnId,
        channel: u16,
        p: &Publish,
        outcome: &Routed,
        write_epoch: u64,
        counters: &mut crate::metrics::Counters,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        let Routed { routed, rejected, sync, replicated, .. } = *outcome;
        Self::count_routed(counters, p, outcome);
        if !routed && p.mandatory {
            out.push((
                conn,
                Out::Content {
                    channel,
                    method: Method::BasicReturn {
                        reply_code: ReplyCode::NoRoute.code(),
                        reply_text: ShortStr::from_static("NO_ROUTE"),
                        exchange: p.msg.exchange.clone(),
                        routing_key: p.msg.routing_key.clone(),
                    },
                    msg: p.msg.clone(),
                },
            ));
        }
        let Some(seq) = p.confirm_seq else { return Ok(false) };
        // A persistent message in a durable queue is confirmed once it is on disk.
        let epoch = if sync.target.is_some() { write_epoch } else { 0 };
        // A queue that refused it (reject-publish) or could not store it makes it a nack.
        let kind = if rejected || sync.failed { DeferredKind::Nack(seq) } else { DeferredKind::Ack(seq) };
        let ch = c.channels.get_mut(&channel).ok_or_else(|| {
            ProtocolError::new(ReplyCode::ChannelError, format_args!("channel {channel} is not open"))
        })?;
        if replicated > 0 && matches!(kind, DeferredKind::Ack(_)) {
            ch.defer_replicated(epoch, seq, sync.target.unwrap_or(SYNC_ANY), replicated);
            return Ok(sync.target.is_some());
        }
        ch.defer(epoch, kind, sync.target.unwrap_or(SYNC_ANY));
        Ok(sync.target.is_some())
    }

    /// Counts a publish by what came of it.
    pub(super) fn count_routed(counters: &mut crate::metrics::Counters, p: &Publish, outcome: &Routed) {
        // Confirm mode and transactions exclude each other, so this is the publish as received.
        counters.messages_received_confirm += u64::from(p.confirm_seq.is_some());
        // RabbitMQ 3.10 counts a direct reply-to answer as unroutable and dropped (no queue took
        // it) and its hand-over as no delivery: the metrics follow.
        if outcome.routed && !outcome.direct_reply {
            counters.messages_routed += 1;
        } else if p.mandatory && !outcome.routed {
            counters.messages_unroutable_returned += 1;
        } else {
            counters.messages_unroutable_dropped += 1;
        }
    }

    /// The disk alarm, predicted: a flood that would fill the disk past its limit before the
    /// next measurement sets it now.
    pub(super) fn predict_disk_alarm(&mut self) {
        let written = *self.disk_written.get_mut();
        if self.disk_headroom.is_some_and(|h| written > h) && !self.alarms.disk {
            self.alarms.disk = true;
            self.warnings.push(format!(
                "disk resource limit alarm set: {written} bytes written since free space was measured, \
                 more than the {} bytes left above the limit. Publishers will be blocked until \
                 this alarm clears",
                self.disk_headroom.unwrap_or(0)
            ));
        }
    }

    /// Appends a message to each queue (routing result) and hands it to consumers. Messages
    /// the queues drop to make room are dead-lettered. Returns whose sync must precede the
    /// confirm (or that a queue's storage could not take it: the confirm is a nack, and nothing
    /// else is affected), whether a queue refused the message (reject-publish), and whether it
    /// was paged to disk behind a consumer whose connection is full.
    ///
    /// It takes one queue's lock at a time, so it runs as well while the broker is shared
    /// (`Sink::Staged`) as while it is held (`Sink::Out`); what it leaves for the broker's
    /// bookkeeping goes to `tally`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enqueue(
        &self,
        vhost: &Arc<str>,
        queues: &[ShortStr],
        msg: &MessageRef,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
        tally: &mut Tally,
        sink: Sink<'_>,
    ) -> (PublishSync, bool, bool) {
        let mut sync = PublishSync::default();
        let mut rejected = false;
        let mut paged_behind_consumer = false;
        let mut dead: Vec<(ShortStr, Queued, &'static str)> = Vec::new();
        if let Some(vh) = self.vhosts.get(&**vhost) {
            for q in queues {
                let Some(mut queue) = vh.queues.get(q).map(|q| q.lock()) else { continue };
                let queue = &mut *queue;
                if let Some(replica) = queue.replica {
                    // Its group takes it; the confirm waits for the commit.
                    let command = crate::quorum::Command::Enqueue { msg: msg.clone() };
                    tally.replica_work.push(ReplicaWork { group: replica.group, command, confirm: None });
                    continue;
                }
                if self.replication.on && queue.args.queue_type == QueueType::Quorum {
                    // In a cluster a quorum queue holds messages only in its group, which
                    // this node has not joined yet (it is starting): refused, so nacked.
                    rejected = true;
                    continue;
                }
                'push: {
                    queue.memory_pressure = self.alarms.memory;
                    // A TTL of 0 lets a message through only to a consumer that takes it at once
                    // (nothing ahead of it, a consumer with room); otherwise it expires on arrival,
                    // as in RabbitMQ.
                    let may_have_ttl = msg.properties.expiration.is_some() || queue.args.message_ttl_ms.is_some();
                    if may_have_ttl
                        && queue.expiry_for(msg, now_ms) == Some(now_ms)
                        && !(queue.is_empty() && queue.choose_consumer().is_some())
                    {
                        dead.push((q.clone(), Queued::unqueued(0, msg.clone(), Some(now_ms)), "expired"));
                        break 'push;
                    }
                    let outcome = match queue.push(msg.clone(), now_ms) {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            // The log says why once (report_storage); it is retried at every round.
                            sync.failed = true;
                            Self::report_storage(&mut tally.warnings, &mut tally.notices, vhost, queue);
                            tally.dirty(vhost, q);
                            break 'push;
                        }
                    };
                    if outcome.needs_sync || !outcome.dropped.is_empty() {
                        tally.dirty(vhost, q);
                    }
                    if outcome.needs_sync {
                        sync.target = merge_sync_target(sync.target, Some(queue.sync_id));
                    }
                    if outcome.stored_bytes > 0 {
                        tally.add_disk_written(&self.disk_written, outcome.stored_bytes);
                    }
                    if outcome.paged && !paged_behind_consumer {
                        paged_behind_consumer = queue.consumers().iter().any(|k| !k.outbound.writable());
                    }
                    if outcome.rejected {
                        rejected = true;
                        if queue.args.overflow == crate::args::Overflow::RejectPublishDlx {
                            let expires_at = queue.expiry_for(msg, now_ms);
                            let item = Queued::unqueued(0, msg.clone(), expires_at);
                            dead.push((q.clone(), item, "maxlen"));
                        }
                    }
                    dead.extend(outcome.dropped.into_iter().map(|d| (q.clone(), d, "maxlen")));
                }
                // Delivered at once, while the queue is at hand (one lookup per queue reached).
                let (settled, expired) =
                    super::delivery::host_dispatch(queue, vhost, now_ms, &self.next_delivery_id, tally, out, sink);
                if settled && queue.durable {
                    tally.dirty(vhost, q);
                }
                dead.extend(expired.into_iter().map(|m| (q.clone(), m, "expired")));
            }
        }
        self.dead_letter_in(vhost, dead, now_ms, out, tally, sink);
        (sync, rejected, paged_behind_consumer)
    }

    /// Dead-letters messages that left `queue`s (already settled there): each goes to its
    /// queue's dead-letter exchange with an updated `x-death` header, or is dropped when the
    /// queue has none. Messages that the target queues drop in turn are dead-lettered too,
    /// from a work list (bounded), so chains of queues cannot recurse without end.
    pub(super) fn dead_letter(
        &mut self,
        vhost: &Arc<str>,
        work: Vec<(ShortStr, Queued, &'static str)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let mut tally = Tally::default();
        self.dead_letter_in(vhost, work, now_ms, out, &mut tally, Sink::Out);
        self.fold(tally);
    }

    /// [`Broker::dead_letter`], one queue's lock at a time (see [`Broker::enqueue`]).
    pub(super) fn dead_letter_in(
        &self,
        vhost: &Arc<str>,
        work: Vec<(ShortStr, Queued, &'static str)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
        tally: &mut Tally,
        sink: Sink<'_>,
    ) {
        if work.is_empty() {
            return;
        }
        // First in, first out: messages reach the dead-letter queues in the order they died.
        let mut work: std::collections::VecDeque<_> = work.into();
        /// A bound on dead-lettering caused by one event (each step moves one message).
        const DEAD_LETTER_STEPS_MAX: usize = 100_000;
        let mut touched: Vec<ShortStr> = Vec::new();
        let mut steps = 0;
        while let Some((from, item, reason)) = work.pop_front() {
            steps += 1;
            if steps > DEAD_LETTER_STEPS_MAX {
                tally
                    .errors
                    .push(format!("dead-lettering from queue '{from}' stopped after {DEAD_LETTER_STEPS_MAX} steps"));
                break;
            }
            let Some(vh) = self.vhosts.get(&**vhost) else { return };
            let Some(q) = vh.queues.get(&from).map(|q| q.lock()) else { continue };
            let dlx = q.args.dead_letter_exchange.clone();
            let dlrk = q.args.dead_letter_routing_key.clone();
            drop(q);
            tally.counters.count_dead_lettered(reason, dlx.is_some());
            let Some(dlx) = dlx else { continue };
            // As RabbitMQ: the queue's dead-letter routing key replaces every key of the message
            // (and its CC and BCC headers go); without one, the message's own keys, CC included.
            let routing_key = dlrk.clone().unwrap_or_else(|| item.msg.routing_key.clone());
            let msg =
                crate::dead_letter::dead_lettered(&item.msg, &dlx, &routing_key, &from, reason, now_ms, dlrk.is_some());
            let cc = if dlrk.is_some() { Vec::new() } else { crate::dead_letter::cc_keys(&msg) };
            let mut keys: Vec<&str> = vec![&routing_key];
            keys.extend(cc.iter().map(String::as_str));
            let mut targets = self.route(vhost, &dlx, &keys, msg.properties.headers.as_ref(), &msg.raw_properties);
            targets.retain(|t| !crate::dead_letter::is_cycle(&msg, t));
            for t in &targets {
                let Some(mut queue) = vh.queues.get(t).map(|q| q.lock()) else { continue };
                if let Some(replica) = queue.replica {
                    // A quorum queue's group takes it.
                    let command = crate::quorum::Command::Enqueue { msg: msg.clone() };
                    tally.replica_work.push(ReplicaWork { group: replica.group, command, confirm: None });
                    continue;
                }
                queue.memory_pressure = self.alarms.memory;
                match queue.push(msg.clone(), now_ms) {
                    Ok(outcome) => {
                        if outcome.needs_sync || !outcome.dropped.is_empty() {
                            tally.dirty(vhost, t);
                        }
                        work.extend(outcome.dropped.into_iter().map(|d| (t.clone(), d, "maxlen")));
                    }
                    Err(e) => tally.errors.push(format!("cannot dead-letter a message into queue '{t}': {e}")),
                }
                if !touched.contains(t) {
                    touched.push(t.clone());
                }
            }
        }
        for t in touched {
            self.dispatch_in(vhost, &t, now_ms, out, tally, sink);
        }
    }

    /// The queues a message reaches from `exchange`, following exchange-to-exchange bindings
    /// (each exchange visited once, so cycles end), without duplicates.
    ///
    /// `keys` are the routing key and the `CC`/`BCC` keys: as RabbitMQ, every hop routes the
    /// whole set. A queue reached several ways is listed once; the check is a hash set once the
    /// list is long, so a fanout to thousands of queues stays linear.
    pub(super) fn route(
        &self,
        vhost: &str,
        exchange: &ShortStr,
        keys: &[&str],
        headers: Option<&FieldTable>,
        raw_properties: &Bytes,
    ) -> Vec<ShortStr> {
        let mut queues = Vec::new();
        self.route_into(vhost, exchange, keys, headers, raw_properties, &mut queues, &mut Vec::new());
        queues
    }

    /// [`Broker::route`] into `queues`, with `dests` to work in: both cleared first, and kept
    /// by a caller that routes many messages so that routing allocates nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_into(
        &self,
        vhost: &str,
        exchange: &ShortStr,
        keys: &[&str],
        headers: Option<&FieldTable>,
        raw_properties: &Bytes,
        queues: &mut Vec<ShortStr>,
        dests: &mut Vec<Destination>,
    ) {
        queues.clear();
        dests.clear();
        let Some(vh) = self.vhosts.get(vhost) else { return };
        let mut seen: Option<HashSet<ShortStr>> = None;
        let mut add = |queues: &mut Vec<ShortStr>, q: ShortStr| {
            /// Past this many queues, duplicates are found with a hash set, not a scan.
            const SCAN_MAX: usize = 16;
            if queues.len() < SCAN_MAX && seen.is_none() {
                if !queues.contains(&q) {
                    queues.push(q);
                }
                return;
            }
            let set = seen.get_or_insert_with(|| queues.iter().cloned().collect());
            if set.insert(q.clone()) {
                queues.push(q);
            }
        };
        if exchange.is_empty() {
            for key in keys {
                // The queue's own name, shared rather than copied.
                if let Some((name, _)) = vh.queues.get_key_value(*key) {
                    add(queues, name.clone());
                }
            }
            return;
        }
        // Exchanges reached besides the first, and those still to route through: most
        // messages stop at the first, and these stay empty (unallocated).
        let mut visited: Vec<ShortStr> = Vec::new();
        let mut pending: Vec<ShortStr> = Vec::new();
        let mut next = Some(exchange.clone());
        while let Some(x) = next.take().or_else(|| pending.pop()) {
            let Some(ex) = vh.exchanges.get(&x) else { continue };
            dests.clear();
            for key in keys {
                ex.route(key, headers, raw_properties, dests);
            }
            let mut reach = |e: ShortStr, pending: &mut Vec<ShortStr>| {
                if e != *exchange && !visited.contains(&e) {
                    visited.push(e.clone());
                    pending.push(e);
                }
            };
            if dests.is_empty() {
                // Unroutable here: the alternate exchange, if any, gets it.
                let own = ex.arguments.get("alternate-exchange").and_then(FieldValue::as_str).map(ShortStr::from);
                if let Some(ae) = own.or_else(|| ex.policy_alternate_exchange.clone()) {
                    reach(ae, &mut pending);
                }
            }
            for d in dests.drain(..) {
                match d {
                    Destination::Queue(q) => add(queues, q),
                    Destination::Exchange(e) => reach(e, &mut pending),
                }
            }
        }
    }

    /// Direct reply-to: hand the message straight to the requester's reply consumer.
    pub(super) fn deliver_reply(&mut self, p: &Publish, out: &mut Vec<(ConnId, Out)>) -> bool {
        let suffix = &p.msg.routing_key[REPLY_TO_PREFIX.len()..];
        let Some(target) = self.reply_targets.get(suffix).cloned() else { return false };
        let Some(ch) =
            self.conns.get_mut(&target.conn).map(Mutex::get_mut).and_then(|c| c.channels.get_mut(&target.channel))
        else {
            return false;
        };
        let delivery_tag = ch.take_delivery_tag();
        if let Some(c) = self.conns.get_mut(&target.conn).map(Mutex::get_mut) {
            c.out_bytes.add(p.msg.wire_size());
        }
        out.push((
            target.conn,
            Out::Deliver {
                channel: target.channel,
                consumer_tag: target.consumer_tag,
                delivery_tag,
                redelivered: false,
                msg: p.msg.clone(),
            },
        ));
        true
    }
}

/// Who publishes, as [`Broker::check_publish`] needs it: a client connection, or the
/// management API acting as a user.
#[derive(Clone, Copy)]
pub(super) struct Publisher<'a> {
    pub(super) vhost: &'a str,
    pub(super) user: &'a str,
    pub(super) grants: &'a Grants,
    /// The exchange a publish was last allowed to write to (see `Conn::write_ok`).
    pub(super) write_ok: Option<&'a ShortStr>,
}

impl Conn {
    pub(super) fn publisher(&self) -> Publisher<'_> {
        Publisher { vhost: &self.vhost, user: &self.info.user, grants: &self.grants, write_ok: self.write_ok.as_ref() }
    }
}

impl Actor {
    pub(super) fn publisher(&self) -> Publisher<'_> {
        Publisher { vhost: &self.vhost, user: &self.user, grants: &self.grants, write_ok: None }
    }
}
