//! What the management API reads from and does to the broker, as plain data.
//!
//! Reads ([`Broker::connections`], [`Broker::channels`], ...) copy what they need out of the
//! broker's state. Changes to the topology (declare, delete, purge, bind) call the operations a
//! client's methods call, as the request's user (an [`Actor`](super::Actor) with that user's
//! permissions), so they get exactly the same checks and semantics, and make a durable change
//! durable before they return. Publishing and getting messages likewise call the routing and
//! the taking and settling that a client's basic.publish and basic.get call: no connection or
//! channel is made for them.

use super::{Access, Broker, Message, Out, Publish, Res, Unacked, REPLY_TO_QUEUE};
use crate::exchange::Destination;
use crate::queue::QueueCounters;
use crate::ConnId;
use bytes::Bytes;
use warren_amqp::{BasicProperties, FieldTable, ProtocolError, ReplyCode, ShortStr};

/// On whose behalf a management operation acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// The broker itself (definitions loaded at boot or imported by an administrator):
    /// everything is allowed.
    Broker,
    /// A user of the HTTP API: that user's permissions apply, as they would to a client
    /// connection of theirs.
    User(&'a str),
}

/// A client connection, for `/api/connections`.
#[derive(Debug, Clone)]
pub struct ConnectionSummary {
    pub id: ConnId,
    pub user: String,
    pub vhost: String,
    /// The client's address, `ip:port`.
    pub peer: String,
    pub client_properties: FieldTable,
    pub channels: usize,
    pub channel_max: u16,
    pub session: super::Session,
}

/// An open channel, for `/api/channels`.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub conn: ConnId,
    pub number: u16,
    pub user: String,
    pub vhost: String,
    pub peer: String,
    /// Its connection is over TLS.
    pub tls: bool,
    pub consumers: usize,
    pub unacked: usize,
    /// basic.qos global=false (the prefetch of consumers created from now on).
    pub prefetch: u16,
    /// basic.qos global=true.
    pub global_prefetch: u16,
    pub confirm: bool,
    pub transactional: bool,
}

/// A consumer, for `/api/consumers`.
#[derive(Debug, Clone)]
pub struct ConsumerSummary {
    pub conn: ConnId,
    pub channel: u16,
    pub peer: String,
    /// Its connection is over TLS.
    pub tls: bool,
    pub user: String,
    pub vhost: String,
    pub queue: String,
    pub tag: String,
    pub ack_required: bool,
    pub prefetch: u16,
    pub exclusive: bool,
}

/// An exchange, for `/api/exchanges`.
#[derive(Debug, Clone)]
pub struct ExchangeSummary {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A binding, for `/api/bindings`. The default exchange's implicit bindings (one per queue,
/// by the queue's name) are listed too, as RabbitMQ lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingSummary {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// True when the destination is a queue, false for an exchange.
    pub to_queue: bool,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// A queue's message counters, for rates.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub vhost: String,
    pub name: String,
    pub counters: QueueCounters,
}

/// What the management API's "get messages" does with what it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetAckMode {
    /// Acknowledge: the messages leave the queue.
    Ack,
    /// Reject with requeue: the messages go back, marked redelivered.
    Requeue,
    /// Reject without requeue: the messages leave the queue (dead-lettered if so configured).
    Reject,
}

/// A message taken by [`Broker::get_messages`].
#[derive(Debug, Clone)]
pub struct GotMessage {
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    /// Messages left in the queue after this one was taken.
    pub message_count: u32,
    pub properties: BasicProperties,
    pub body: Bytes,
}

impl Broker {
    /// The open client connections, by id.
    pub fn connections(&self) -> Vec<ConnectionSummary> {
        let mut v: Vec<ConnectionSummary> = self
            .conns
            .iter()
            .map(|(id, c)| (id, c.lock()))
            .filter(|(_, c)| !c.hidden)
            .map(|(id, c)| ConnectionSummary {
                id: *id,
                user: c.info.user.clone(),
                vhost: c.info.vhost.clone(),
                peer: c.info.peer.clone(),
                client_properties: c.info.client_properties.clone(),
                channels: c.channels.len(),
                channel_max: c.info.channel_max,
                session: c.info.session.clone(),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The open channels, by connection and number.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        let mut v = Vec::new();
        for (id, c) in self.conns.iter().map(|(k, c)| (k, c.lock())) {
            for (n, ch) in &c.channels {
                v.push(ChannelSummary {
                    conn: *id,
                    number: *n,
                    user: c.info.user.clone(),
                    vhost: c.info.vhost.clone(),
                    peer: c.info.peer.clone(),
                    tls: c.info.session.tls,
                    consumers: ch.consumers.len(),
                    unacked: ch.unacked_count(),
                    prefetch: ch.prefetch_consumer,
                    global_prefetch: ch.prefetch_channel(),
                    confirm: ch.confirm_next.is_some(),
                    transactional: ch.tx.is_some(),
                });
            }
        }
        v.sort_by_key(|c| (c.conn, c.number));
        v
    }

    /// The consumers of every channel.
    pub fn consumers(&self) -> Vec<ConsumerSummary> {
        let mut v = Vec::new();
        for (id, c) in &self.conns {
            let c = c.lock();
            for (n, ch) in &c.channels {
                for (tag, co) in &ch.consumers {
                    let exclusive = self
                        .vhosts
                        .get(&*c.vhost)
                        .and_then(|vh| vh.queues.get(&co.queue).map(|q| q.lock()))
                        .is_some_and(|q| q.has_exclusive_consumer());
                    v.push(ConsumerSummary {
                        conn: *id,
                        channel: *n,
                        peer: c.info.peer.clone(),
                        tls: c.info.session.tls,
                        user: c.info.user.clone(),
                        vhost: c.info.vhost.clone(),
                        queue: co.queue.to_string(),
                        tag: tag.to_string(),
                        ack_required: !co.credit.no_ack,
                        prefetch: co.credit.prefetch,
                        exclusive,
                    });
                }
            }
        }
        v.sort_by(|a, b| (a.conn, a.channel, &a.tag).cmp(&(b.conn, b.channel, &b.tag)));
        v
    }

    /// Every exchange of every vhost (the built-in ones included), by vhost and name.
    pub fn exchanges(&self) -> Vec<ExchangeSummary> {
        let mut v: Vec<ExchangeSummary> = self
            .vhosts
            .values()
            .flat_map(|vh| {
                vh.exchanges.values().map(move |x| ExchangeSummary {
                    vhost: vh.name.clone(),
                    name: x.name.to_string(),
                    kind: x.kind.as_str().to_string(),
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        v
    }

    /// Every binding of every vhost, the default exchange's implicit ones first.
    pub fn bindings(&self) -> Vec<BindingSummary> {
        let mut v = Vec::new();
        let mut vhosts: Vec<_> = self.vhosts.values().collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in vhosts {
            let mut queues: Vec<&ShortStr> = vh.queues.keys().collect();
            queues.sort();
            for q in queues {
                v.push(BindingSummary {
                    vhost: vh.name.clone(),
                    source: String::new(),
                    destination: q.to_string(),
                    to_queue: true,
                    routing_key: q.to_string(),
                    arguments: FieldTable::new(),
                });
            }
            let mut explicit = Vec::new();
            for x in vh.exchanges.values().filter(|x| !x.name.is_empty()) {
                for b in x.bindings() {
                    explicit.push(BindingSummary {
                        vhost: vh.name.clone(),
                        source: x.name.to_string(),
                        destination: b.destination.name().to_string(),
                        to_queue: matches!(b.destination, Destination::Queue(_)),
                        routing_key: b.routing_key.to_string(),
                        arguments: b.arguments.clone(),
                    });
                }
            }
            explicit.sort_by(|a, b| {
                (&a.source, !a.to_queue, &a.destination, &a.routing_key).cmp(&(
                    &b.source,
                    !b.to_queue,
                    &b.destination,
                    &b.routing_key,
                ))
            });
            v.extend(explicit);
        }
        v
    }

    /// The message counters of every queue.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        self.vhosts
            .values()
            .flat_map(|vh| {
                vh.queues.values().map(|q| q.lock()).map(move |q| QueueStats {
                    vhost: vh.name.clone(),
                    name: q.name.to_string(),
                    counters: q.counters,
                })
            })
            .collect()
    }

    /// Closes a client connection from the broker's side with 320 CONNECTION_FORCED and
    /// `reason` (the server then waits for close-ok, as for any connection error). False when
    /// there is no such connection.
    pub fn close_connection(&mut self, conn: ConnId, reason: &str, out: &mut Vec<(ConnId, Out)>) -> bool {
        if self.conns.get(&conn).map(|c| c.lock()).is_none_or(|c| c.closing) {
            return false;
        }
        let e = ProtocolError::new(ReplyCode::ConnectionForced, reason);
        self.connection_error(conn, e, out);
        true
    }

    /// Declares a queue (as queue.declare, not exclusive) in `vhost`.
    #[allow(clippy::too_many_arguments)]
    pub fn declare_queue(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        name: &str,
        durable: bool,
        auto_delete: bool,
        arguments: FieldTable,
        now_ms: u64,
        _out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let who = self.management_actor(vhost, caller)?;
        let name = name_of(name)?;
        self.queue_declare(&who, name, false, durable, false, auto_delete, arguments, now_ms)?;
        self.counters.queues_declared += 1;
        self.save_definitions()
    }

    /// Deletes a queue (as queue.delete). Fails with NOT_FOUND when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn delete_queue_checked(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        self.require_queue(vhost, name)?;
        let who = self.management_actor(vhost, caller)?;
        self.queue_delete(&who, &name_of(name)?, if_unused, if_empty, now_ms, out)?;
        self.save_definitions()
    }

    /// Drops a queue's ready messages (as queue.purge); returns how many there were.
    pub fn purge_queue(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        name: &str,
        _now_ms: u64,
        _out: &mut Vec<(ConnId, Out)>,
    ) -> Result<u32, ProtocolError> {
        self.require_queue(vhost, name)?;
        let who = self.management_actor(vhost, caller)?;
        // As queue.purge: the name is taken as it is.
        self.queue_purge(&who, &short(name)?)
    }

    /// Declares an exchange (as exchange.declare).
    #[allow(clippy::too_many_arguments)]
    pub fn declare_exchange(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        name: &str,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
        _now_ms: u64,
        _out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let who = self.management_actor(vhost, caller)?;
        let (name, kind) = (name_of(name)?, short(kind)?);
        self.exchange_declare(&who, &name, &kind, false, durable, auto_delete, internal, arguments)?;
        self.save_definitions()
    }

    /// Deletes an exchange (as exchange.delete). Fails with NOT_FOUND when it does not exist.
    pub fn delete_exchange_checked(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        name: &str,
        if_unused: bool,
        _now_ms: u64,
        _out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let exists = self.vhosts.get(vhost).is_some_and(|vh| vh.exchanges.contains_key(name));
        if !exists {
            return Err(super::not_found("exchange", name, vhost));
        }
        let who = self.management_actor(vhost, caller)?;
        self.exchange_delete(&who, &name_of(name)?, if_unused)?;
        self.save_definitions()
    }

    /// Binds (`bind`) or unbinds a queue or exchange to the exchange `source`.
    #[allow(clippy::too_many_arguments)]
    pub fn set_binding(
        &mut self,
        caller: Caller<'_>,
        bind: bool,
        vhost: &str,
        source: &str,
        destination: &str,
        to_queue: bool,
        routing_key: &str,
        arguments: FieldTable,
        _now_ms: u64,
        _out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let who = self.management_actor(vhost, caller)?;
        let (source, dest, routing_key) = (name_of(source)?, name_of(destination)?, short(routing_key)?);
        let dest = if to_queue { Destination::Queue(dest) } else { Destination::Exchange(dest) };
        if bind {
            self.bind(&who, dest, &source, routing_key, arguments)?;
        } else {
            self.unbind(&who, dest, &source, routing_key, arguments)?;
        }
        self.save_definitions()
    }

    /// Publishes a message (as basic.publish, mandatory); true when it reached at least one
    /// queue.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_message(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: Bytes,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<bool, ProtocolError> {
        let who = self.management_actor(vhost, caller)?;
        let (exchange, routing_key) = (short(exchange)?, short(routing_key)?);
        Self::check_publish(&self.vhosts, who.publisher(), &exchange, &routing_key, &(&properties).into())?;
        if properties.reply_to.as_ref().is_some_and(|r| r.as_str() == REPLY_TO_QUEUE) {
            // Direct reply-to needs a consumer on the publishing channel: there is none here.
            return Err(super::precondition("fast reply consumer does not exist"));
        }
        self.count_ingest(body.len());
        self.counters.messages_received += 1;
        let raw = properties.to_bytes();
        let msg = Message::new(exchange, routing_key, properties, raw, body);
        let p = Publish { mandatory: true, msg, confirm_seq: None };
        let (outcome, _paged) = self.route_message(&who.vhost, &p, now_ms, out)?;
        Self::count_routed(&mut self.counters, &p, &outcome);
        Ok(outcome.routed)
    }

    /// Takes up to `count` messages from a queue (as basic.get), then settles them as `mode`
    /// says. Messages requeued come back at their place, marked redelivered, after the call.
    #[allow(clippy::too_many_arguments)]
    pub fn get_messages(
        &mut self,
        caller: Caller<'_>,
        vhost: &str,
        queue: &str,
        count: usize,
        mode: GetAckMode,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<Vec<GotMessage>, ProtocolError> {
        self.require_queue(vhost, queue)?;
        let who = self.management_actor(vhost, caller)?;
        let queue = short(queue)?;
        who.check(Access::Read, "queue", &queue)?;
        let owner = self.vhosts.get(vhost).and_then(|v| v.queues.get(&queue)).and_then(|q| q.lock().exclusive_owner);
        if who.locked_out(owner) {
            return Err(super::locked(&queue, vhost));
        }
        let mut got = Vec::new();
        let mut taken = Vec::new();
        for _ in 0..count {
            let Some(t) = self.take_one(&who.vhost, &queue, false, now_ms, out)? else { break };
            got.push(GotMessage {
                exchange: t.msg.exchange.to_string(),
                routing_key: t.msg.routing_key.to_string(),
                redelivered: t.redelivered,
                message_count: t.message_count,
                properties: t.msg.decode_properties(),
                body: t.msg.body.clone(),
            });
            if let Some(id) = t.id {
                taken.push(Unacked { delivery_tag: 0, queue: t.queue, id, consumer: None, delivered_at_ms: now_ms });
            }
        }
        let requeue = match mode {
            GetAckMode::Ack => None,
            GetAckMode::Requeue => Some(true),
            GetAckMode::Reject => Some(false),
        };
        self.settle_taken(&who.vhost, taken, requeue, now_ms, out);
        Ok(got)
    }

    fn require_queue(&self, vhost: &str, name: &str) -> Res {
        if self.vhosts.get(vhost).is_some_and(|vh| vh.queues.contains_key(name)) {
            Ok(())
        } else {
            Err(super::not_found("queue", name, vhost))
        }
    }
}

/// A queue's or exchange's name for a declare, delete or bind: without CR and LF, as a
/// client's would be (see `strip_cr_lf_names`).
fn name_of(s: &str) -> Result<ShortStr, ProtocolError> {
    let mut name = short(s)?;
    super::strip_cr_lf(&mut name);
    Ok(name)
}

fn short(s: &str) -> Result<ShortStr, ProtocolError> {
    if s.len() > 255 {
        return Err(ProtocolError::new(ReplyCode::PreconditionFailed, format_args!("name too long: '{s}'")));
    }
    Ok(ShortStr::from(s.to_string()))
}
