//! Consumers and deliveries: basic.consume and cancel, handing ready messages to consumers
//! within their credit, basic.get, acks, rejects and requeues, and the consumer
//! acknowledgement timeout.
//!
//! A queue delivers with nothing but its own state and its consumers' shared credit (see
//! `credit.rs`): the consumer's channel hands out the delivery tag and records where the queue
//! keeps the unsettled message; an ack or reject names that place back to the queue.

use super::*;

/// Hosts a queue's [`Queue::dispatch`]: its deliveries become `Out::Content` for their
/// connections, its counts go to the node's metrics and its storage errors to the log. Returns
/// whether it settled something (a durable queue then has writes to sync) and the messages that
/// expired, to dead-letter.
pub(super) fn host_dispatch(
    q: &mut Queue,
    vhost: &str,
    now_ms: u64,
    next_id: &std::sync::atomic::AtomicU64,
    tally: &mut Tally,
    out: &mut Vec<(ConnId, Out)>,
    sink: Sink<'_>,
) -> (bool, Vec<Queued>) {
    let done = q.dispatch(now_ms, next_id, |conn, _channel, o| match sink {
        Sink::Out => out.push((conn, o)),
        Sink::Staged(stage) => stage.stage(conn, o),
    });
    let counters = &mut tally.counters;
    counters.redelivered += done.redelivered;
    counters.delivered_consume_auto_ack += done.auto_ack;
    counters.delivered_consume_manual_ack += done.manual_ack;
    tally.errors.extend(done.errors.into_iter().map(|e| format!("{e} (vhost '{vhost}')")));
    (done.settled, done.expired)
}

impl Broker {
    pub(super) fn tick_consumer_timeouts(&mut self, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let Some(timeout) = self.config.consumer_timeout_ms else { return };
        let mut expired = Vec::new();
        for (&conn, c) in &self.conns {
            let c = c.lock();
            if c.closing {
                continue;
            }
            for (&channel, ch) in &c.channels {
                if ch.state() != ChannelState::Open {
                    continue;
                }
                if let Some(consumer) = ch.overdue(now_ms.saturating_sub(timeout)) {
                    let consumer = consumer.filter(|t| ch.consumers.contains_key(t));
                    expired.push((conn, channel, consumer, c.cancel_notify));
                }
            }
        }
        for (conn, channel, consumer, cancel_notify) in expired {
            match consumer {
                Some(tag) if cancel_notify => self.expire_consumer(conn, channel, tag, now_ms, out),
                _ => {
                    let e = precondition(format_args!(
                        "delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
                    ));
                    self.channel_error(conn, channel, e, now_ms, out);
                }
            }
        }
    }

    /// A consumer that held a message past the timeout and understands basic.cancel: cancel
    /// it and put all its unacked messages back.
    pub(super) fn expire_consumer(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: ShortStr,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
        let vhost = c.vhost.clone();
        let Some(ch) = c.channels.get_mut(&channel) else { return };
        let mine = ch.take_unacked_of(&tag);
        ch.reclaimed.extend(mine.iter().map(|u| u.delivery_tag));
        out.push((
            conn,
            Out::Method { channel, method: Method::BasicCancel { consumer_tag: tag.clone(), nowait: true } },
        ));
        let queue = self.detach_consumer(conn, channel, &tag, now_ms);
        self.requeue(&vhost, mine, now_ms, out);
        if let Some(queue) = queue {
            self.after_consumer_left(&vhost, &queue, now_ms, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn consume(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: ShortStr,
        tag: ShortStr,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: &FieldTable,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let tag = if tag.is_empty() { generated_name(&mut self.rng, "amq.ctag-") } else { tag };
        let priority = match arguments.get("x-priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                precondition(format_args!("invalid arg 'x-priority' for consumer '{tag}': not an integer"))
            })?,
        };
        if self.channel_mut(conn, channel)?.consumers.contains_key(&tag) {
            return Err(ProtocolError::new(
                ReplyCode::NotAllowed,
                format_args!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if queue.as_str() == REPLY_TO_QUEUE {
            return self.consume_reply_to(conn, channel, tag, no_ack, nowait, out);
        }
        let queue = self.resolve_queue_name(conn, channel, queue)?;
        self.check(conn, Access::Read, "queue", &queue)?;
        let ch = self.channel_mut(conn, channel)?;
        let credit = ConsumerCredit::new(no_ack, ch.prefetch_consumer);
        let channel_credit = ch.credit().clone();
        let outbound =
            self.conns.get(&conn).map(|c| c.lock()).ok_or_else(|| internal("unknown connection"))?.out_bytes.clone();
        let (vhost, q) = self.queue_for_use(conn, &queue)?;
        if q.has_exclusive_consumer() || (exclusive && !q.consumers().is_empty()) {
            return Err(ProtocolError::new(
                ReplyCode::AccessRefused,
                format_args!("queue '{queue}' in vhost '{vhost}' in exclusive use"),
            ));
        }
        q.add_consumer(
            ConsumerKey { conn, channel, tag: tag.clone(), priority, credit: credit.clone(), channel_credit, outbound },
            exclusive,
        );
        q.last_used_ms = now_ms;
        let replica = q.replica;
        if let Some(replica) = replica {
            let owner = self.replica_owner(conn, channel);
            let command = crate::quorum::Command::Attach {
                owner,
                tag: tag.clone(),
                prefetch: u32::from(credit.prefetch),
                no_ack,
                priority,
                exclusive,
            };
            self.push_replica_work(replica.group, command);
        }
        let ch = self.channel_mut(conn, channel)?;
        ch.consumers.insert(tag.clone(), Consumer { queue: queue.clone(), credit });
        if !nowait {
            Self::reply(out, conn, channel, Method::BasicConsumeOk { consumer_tag: tag });
        }
        self.dispatch(&vhost, &queue, now_ms, out);
        Ok(())
    }

    pub(super) fn consume_reply_to(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: ShortStr,
        no_ack: bool,
        nowait: bool,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        if !no_ack {
            return Err(precondition("reply consumer cannot acknowledge"));
        }
        let suffix = generated_name(&mut self.rng, "");
        let ch = self.channel_mut(conn, channel)?;
        if ch.reply_to.is_some() {
            return Err(precondition("reply consumer already set"));
        }

        ch.reply_to = Some((tag.clone(), suffix.clone()));
        self.reply_targets.insert(suffix, ReplyTarget { conn, channel, consumer_tag: tag.clone() });
        if !nowait {
            Self::reply(out, conn, channel, Method::BasicConsumeOk { consumer_tag: tag });
        }
        Ok(())
    }

    /// Removes a consumer (basic.cancel, channel close, timeout). Its unacked messages stay
    /// unacked on the channel. An auto-delete queue losing its last consumer is deleted.
    pub(super) fn remove_consumer(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: &ShortStr,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
        let vhost = c.vhost.clone();
        let Some(ch) = c.channels.get_mut(&channel) else { return };
        if ch.reply_to.as_ref().is_some_and(|(t, _)| t == tag) {
            if let Some((_, suffix)) = ch.reply_to.take() {
                self.reply_targets.remove(&suffix);
            }
            return;
        }
        if let Some(queue) = self.detach_consumer(conn, channel, tag, now_ms) {
            self.after_consumer_left(&vhost, &queue, now_ms, out);
        }
    }

    /// Takes a consumer off its channel and queue; returns the queue.
    pub(super) fn detach_consumer(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: &ShortStr,
        now_ms: u64,
    ) -> Option<ShortStr> {
        let c = self.conns.get_mut(&conn).map(Mutex::get_mut)?;
        let consumer = c.channels.get_mut(&channel)?.consumers.remove(tag)?;
        let q = self.vhosts.get_mut(&*c.vhost).and_then(|v| v.queues.get_mut(&consumer.queue).map(Mutex::get_mut))?;
        q.remove_consumer(conn, channel, tag);
        q.last_used_ms = now_ms;
        if let Some(replica) = q.replica {
            let owner = self.replica_owner(conn, channel);
            self.push_replica_work(replica.group, crate::quorum::Command::Cancel { owner, tag: tag.clone() });
        }
        Some(consumer.queue)
    }

    /// A consumer left `queue`: an auto-delete queue left without consumers goes; otherwise
    /// the queue delivers again (with a single active consumer, the next one takes over).
    pub(super) fn after_consumer_left(
        &mut self,
        vhost: &str,
        queue: &ShortStr,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(due) = self.vhosts.get(vhost).and_then(|v| v.queues.get(queue).map(|q| q.lock().auto_delete_due()))
        else {
            return;
        };
        if due {
            self.delete_queue(vhost, queue, now_ms, out);
        } else {
            self.dispatch(vhost, queue, now_ms, out);
        }
    }

    /// Hands ready messages of a queue to its consumers: to the highest-priority consumers
    /// that can take more (round-robin among equals), within their prefetch limits and while
    /// their connections can take more; with a single active consumer, only to the first.
    /// Expired messages met at the head are dead-lettered instead.
    pub(super) fn dispatch(&mut self, vhost: &str, queue: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let mut tally = Tally::default();
        self.dispatch_in(vhost, queue, now_ms, out, &mut tally, Sink::Out);
        self.fold(tally);
    }

    /// [`Broker::dispatch`], holding only the queue's lock (see [`Broker::enqueue`]).
    pub(super) fn dispatch_in(
        &self,
        vhost: &str,
        queue: &str,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
        tally: &mut Tally,
        sink: Sink<'_>,
    ) {
        let Some(mut q) = self.vhosts.get(vhost).and_then(|v| v.queues.get(queue)).map(|q| q.lock()) else { return };
        let (settled, expired) = host_dispatch(&mut q, vhost, now_ms, &self.next_delivery_id, tally, out, sink);
        let vhost: Arc<str> = Arc::from(vhost);
        if settled && q.durable {
            tally.dirty(&vhost, &q.name);
        }
        let name = q.name.clone();
        drop(q);
        if !expired.is_empty() {
            let expired = expired.into_iter().map(|m| (name.clone(), m, "expired")).collect();
            self.dead_letter_in(&vhost, expired, now_ms, out, tally, sink);
        }
    }

    /// Drops (dead-letters) the expired messages at the head of a queue.
    pub(super) fn expire(&mut self, vhost: &str, queue: &str, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let mut expired = Vec::new();
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue).map(Mutex::get_mut)) else {
            return;
        };
        loop {
            match q.pop_expired(now_ms) {
                Ok(Some(m)) => {
                    if let Err(e) = q.settle(&m) {
                        self.errors.push(format!("cannot settle an expired message of queue '{queue}': {e}"));
                    }
                    expired.push((q.name.clone(), m, "expired"));
                }
                Ok(None) => break,
                Err(e) => {
                    self.errors.push(format!("cannot read queue '{queue}' in vhost '{vhost}' from disk: {e}"));
                    break;
                }
            }
        }
        if !expired.is_empty() {
            if q.durable {
                self.dirty.insert((Arc::from(vhost), q.name.clone()));
            }
            self.dead_letter(&Arc::from(vhost), expired, now_ms, out);
        }
    }

    pub(super) fn dispatch_channel_queues(
        &mut self,
        conn: ConnId,
        channel: u16,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(c) = self.conns.get_mut(&conn).map(Mutex::get_mut) else { return };
        let vhost = c.vhost.clone();
        let Some(ch) = c.channels.get(&channel) else { return };
        let mut queues: Vec<ShortStr> = ch.consumers.values().map(|co| co.queue.clone()).collect();
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dispatch(&vhost, &q, now_ms, out);
        }
    }

    pub(super) fn get(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: ShortStr,
        no_ack: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let queue = self.resolve_queue_name(conn, channel, queue)?;
        self.check(conn, Access::Read, "queue", &queue)?;
        let (vhost, q) = self.queue_for_use(conn, &queue)?;
        let replica = q.replica.map(|r| r.group);
        let ch = self.channel_mut(conn, channel)?;
        if !no_ack && ch.unacked_count() >= ch.unacked_max() {
            return Err(precondition(format_args!(
                "unacked message limit of the channel ({}) is reached: acknowledge deliveries before getting more",
                ch.unacked_max()
            )));
        }
        if let Some(group) = replica {
            // A quorum queue's group takes the message at its head; the answer goes out once
            // the group committed that (Broker::replica_got).
            let owner = self.replica_owner(conn, channel);
            self.push_replica_work(group, crate::quorum::Command::Get { owner, no_ack });
            return Ok(());
        }
        let Some(got) = self.take_one(&vhost, &queue, no_ack, now_ms, out)? else {
            Self::reply(out, conn, channel, Method::BasicGetEmpty);
            return Ok(());
        };
        let ch = self.channel_mut(conn, channel)?;
        let delivery_tag = match got.id {
            Some(id) => ch.push_unacked(Unacked {
                delivery_tag: 0,
                queue: got.queue,
                id,
                consumer: None,
                delivered_at_ms: now_ms,
            }),
            None => ch.take_delivery_tag(),
        };
        out.push((
            conn,
            Out::Content {
                channel,
                method: Method::BasicGetOk {
                    delivery_tag,
                    redelivered: got.redelivered,
                    exchange: got.msg.exchange.clone(),
                    routing_key: got.msg.routing_key.clone(),
                    message_count: got.message_count,
                },
                msg: got.msg,
            },
        ));
        Ok(())
    }

    /// Takes the message at the head of a queue (basic.get, whoever gets it: a client's
    /// channel or the management API), after the queue's expired messages went. Without
    /// `no_ack` it stays checked out under the returned id until settled.
    pub(super) fn take_one(
        &mut self,
        vhost: &Arc<str>,
        queue: &ShortStr,
        no_ack: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<Option<Taken>, ProtocolError> {
        self.expire(vhost, queue, now_ms, out);
        let id = *self.next_delivery_id.get_mut();
        let q = self
            .vhosts
            .get_mut(&**vhost)
            .and_then(|v| v.queues.get_mut(queue).map(Mutex::get_mut))
            .ok_or_else(|| not_found("queue", queue, vhost))?;
        q.last_used_ms = now_ms;
        let popped = q.pop().map_err(|e| internal(format_args!("cannot read queue '{queue}' from disk: {e}")))?;
        let Some(m) = popped else { return Ok(None) };
        q.mark_delivered(&m);
        let redelivered = m.redelivered;
        let msg = q.got_message(&m);
        let mut checked_out = None;
        if no_ack {
            q.settle(&m).map_err(|e| internal(format_args!("cannot settle a message of queue '{queue}': {e}")))?;
        } else {
            q.check_out(id, m);
            checked_out = Some(id);
        }
        let message_count = q.message_count();
        let qname = q.name.clone();
        if q.durable {
            self.dirty.insert((vhost.clone(), qname.clone()));
        }
        if no_ack {
            self.counters.delivered_get_auto_ack += 1;
        } else {
            self.counters.delivered_get_manual_ack += 1;
        }
        self.counters.redelivered += u64::from(redelivered);
        if checked_out.is_some() {
            *self.next_delivery_id.get_mut() += 1;
        }
        Ok(Some(Taken { msg, redelivered, message_count, queue: qname, id: checked_out }))
    }

    pub(super) fn settle(
        &mut self,
        conn: ConnId,
        channel: u16,
        op: AckOp,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let ch = self.channel_mut(conn, channel)?;
        if ch.tx.is_some() {
            let (tag, multiple) = match op {
                AckOp::Ack { delivery_tag, multiple } | AckOp::Nack { delivery_tag, multiple, .. } => {
                    (delivery_tag, multiple)
                }
            };
            if !ch.hold_for_tx(tag, multiple) {
                return Err(precondition(format_args!("unknown delivery tag {tag}")));
            }
            if let Some(tx) = ch.tx.as_mut() {
                tx.acks.push(op);
            }
            return Ok(());
        }
        self.apply_settle(conn, channel, op, now_ms, out)
    }

    pub(super) fn apply_settle(
        &mut self,
        conn: ConnId,
        channel: u16,
        op: AckOp,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let vhost = self.vhost_of(conn)?;
        let (tag, multiple, requeue) = match op {
            AckOp::Ack { delivery_tag, multiple } => (delivery_tag, multiple, None),
            AckOp::Nack { delivery_tag, multiple, requeue } => (delivery_tag, multiple, Some(requeue)),
        };
        let ch = self.channel_mut(conn, channel)?;
        let Some(settled) = ch.take_acked(tag, multiple) else {
            if ch.forget_reclaimed(tag, multiple) {
                return Ok(());
            }
            return Err(precondition(format_args!("unknown delivery tag {tag}")));
        };
        self.forget_consumer_unacked(conn, channel, &settled);
        self.settle_taken(&vhost, settled, requeue, now_ms, out);
        self.dispatch_channel_queues(conn, channel, now_ms, out);
        Ok(())
    }

    /// Settles deliveries taken from their channel (or got by the management API): acked
    /// (`requeue` None), requeued, or rejected (dead-lettered).
    pub(super) fn settle_taken(
        &mut self,
        vhost: &Arc<str>,
        settled: Vec<Unacked>,
        requeue: Option<bool>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        if requeue.is_none() {
            self.counters.acknowledged += settled.len() as u64;
        }
        let settled = self.settle_replicas(settled, requeue);
        if requeue == Some(true) {
            self.requeue(vhost, settled, now_ms, out);
        } else {
            let mut rejected = Vec::new();
            if let Some(vh) = self.vhosts.get_mut(&**vhost) {
                for u in settled {
                    let Some(q) = vh.queues.get_mut(&u.queue).map(Mutex::get_mut) else { continue };
                    let Some(item) = q.take_checked_out(u.id) else { continue };
                    q.counters.ack += u64::from(requeue.is_none());
                    if let Err(e) = q.settle(&item) {
                        self.errors.push(format!("cannot settle a message of queue '{}': {e}", u.queue));
                    }
                    if q.durable {
                        self.dirty.insert((vhost.clone(), u.queue.clone()));
                    }
                    if requeue == Some(false) {
                        rejected.push((u.queue, item, "rejected"));
                    }
                }
            }
            self.dead_letter(vhost, rejected, now_ms, out);
        }
    }

    /// Lowers the per-consumer unacked counts for deliveries leaving the channel's unacked set.
    pub(super) fn forget_consumer_unacked(&mut self, conn: ConnId, channel: u16, settled: &[Unacked]) {
        let Some(ch) = self.conns.get_mut(&conn).map(Mutex::get_mut).and_then(|c| c.channels.get_mut(&channel)) else {
            return;
        };
        for u in settled {
            if let Some(co) = u.consumer.as_ref().and_then(|t| ch.consumers.get(t)) {
                co.credit.settled();
            }
        }
    }

    /// Puts deliveries back in their queues (in their original order) and delivers again. A
    /// message returned more often than its queue's delivery limit is dead-lettered instead.
    pub(super) fn requeue(&mut self, vhost: &str, unacked: Vec<Unacked>, now_ms: u64, out: &mut Vec<(ConnId, Out)>) {
        let unacked = self.settle_replicas(unacked, Some(true));
        if unacked.is_empty() {
            return;
        }
        let mut touched: Vec<ShortStr> = Vec::new();
        let mut over_limit = Vec::new();
        if let Some(vh) = self.vhosts.get_mut(vhost) {
            for u in unacked {
                let Some(q) = vh.queues.get_mut(&u.queue).map(Mutex::get_mut) else { continue };
                let Some(mut item) = q.take_checked_out(u.id) else { continue };
                item.returns = item.returns.saturating_add(1);
                if q.args.delivery_limit.is_some_and(|limit| u64::from(item.returns) > limit) {
                    if let Err(e) = q.settle(&item) {
                        self.errors.push(format!("cannot settle a message of queue '{}': {e}", u.queue));
                    }
                    if q.durable {
                        self.dirty.insert((Arc::from(vhost), u.queue.clone()));
                    }
                    over_limit.push((u.queue.clone(), item, "delivery_limit"));
                } else if q.args.queue_type == QueueType::Quorum {
                    // To the back of the queue, as RabbitMQ's quorum queues do.
                    if let Err(e) = q.requeue_to_back(item) {
                        self.errors.push(format!("cannot requeue a message of queue '{}' to its back: {e}", u.queue));
                    }
                    if q.durable {
                        self.dirty.insert((Arc::from(vhost), u.queue.clone()));
                    }
                } else {
                    q.requeue(item);
                }
                if !touched.contains(&u.queue) {
                    touched.push(u.queue);
                }
            }
        }
        // As RabbitMQ: requeued messages count against a drop-head length limit, and being at
        // the head they are the ones dropped.
        if let Some(vh) = self.vhosts.get_mut(vhost) {
            for name in &touched {
                let Some(q) = vh.queues.get_mut(name).map(Mutex::get_mut) else { continue };
                if q.args.overflow != crate::args::Overflow::DropHead {
                    continue;
                }
                match q.trim_to_limit() {
                    Ok(dropped) => {
                        if !dropped.is_empty() && q.durable {
                            self.dirty.insert((Arc::from(vhost), name.clone()));
                        }
                        over_limit.extend(dropped.into_iter().map(|d| (name.clone(), d, "maxlen")));
                    }
                    Err(e) => self.errors.push(format!("cannot apply the length limit of queue '{name}': {e}")),
                }
            }
        }
        self.dead_letter(&Arc::from(vhost), over_limit, now_ms, out);
        for q in touched {
            self.dispatch(vhost, &q, now_ms, out);
        }
    }
}

/// A message taken from a queue by [`Broker::take_one`].
pub(super) struct Taken {
    pub(super) msg: MessageRef,
    pub(super) redelivered: bool,
    /// Messages left in the queue.
    pub(super) message_count: u32,
    pub(super) queue: ShortStr,
    /// The id it is checked out under, unless it was settled at once (no-ack).
    pub(super) id: Option<u64>,
}
