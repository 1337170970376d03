//! Replicated topology (issue 15, docs/clustering.md "The metadata group").
//!
//! In a cluster the durable topology (exchanges, queues, bindings) is the metadata group's
//! state, and each node's broker holds a copy. A change made here by a client or the
//! management API is made at once, as on one node, and kept as [`DefOp`]s for the host, which
//! proposes them to the group and answers the client only once they are committed
//! ([`Broker::take_replication`]). A change committed by another node reaches this broker
//! through [`Broker::apply_replicated`], which makes it without checks of permissions (the
//! origin checked them) and without handing it back for replication.

use super::*;
use crate::quorum::{Command as QCommand, Delivery as QDelivery, MsgId, Owner};

/// What the broker keeps for the metadata group.
#[derive(Debug, Default)]
pub(super) struct Replication {
    /// Whether changes are kept at all (only in a cluster).
    pub(super) on: bool,
    /// A change from the metadata group is being applied: it is not handed back.
    pub(super) applying: bool,
    /// Changes made and not yet taken, with the client connection whose answers wait for them
    /// (`None`: the management API or the broker itself).
    pub(super) owed: Vec<(Option<ConnId>, Vec<DefOp>)>,
    /// Whose the changes made now are when they are not a client connection's: an HTTP
    /// request's ([`Broker::set_change_owner`]), or the broker's own (`None`).
    pub(super) owner: Option<ConnId>,
    /// This node, as quorum queues' commands name it.
    pub(super) node: u32,
    /// Commands for replicated queues' groups, not yet taken by the host.
    pub(super) work: Vec<ReplicaWork>,
    /// Deliveries of replicated queues waiting for an ack here, by the id their channel's
    /// unacked record holds: the group, the message's id in it, and who holds it.
    pub(super) unacked: crate::hash::HashMap<u64, (u64, MsgId, Owner)>,
    /// Classic queues of other nodes whose home is down, by their placement's group, with the
    /// home's name ([`Broker::set_homes_down`]).
    pub(super) homes_down: crate::hash::HashMap<u64, Arc<str>>,
}

/// A command for a replicated (quorum) queue's group, made by this node's broker, for the
/// host to propose ([`Broker::take_replica_work`]).
#[derive(Debug, Clone)]
pub struct ReplicaWork {
    /// The group.
    pub group: u64,
    pub command: crate::quorum::Command,
    /// A publish's confirm waiting for the group to commit it: connection, channel, sequence
    /// number ([`Broker::replica_committed`]).
    pub confirm: Option<(ConnId, u16, u64)>,
}

impl Broker {
    /// Turns on keeping topology changes for the metadata group (a node of a cluster).
    pub fn set_replicating(&mut self, on: bool) {
        self.replication.on = on;
    }

    /// Whether topology changes are kept for the metadata group.
    pub fn is_replicating(&self) -> bool {
        self.replication.on
    }

    /// Makes the changes made from now on `owner`'s (an id that no connection has, given to
    /// a management API request, which takes them with [`Broker::take_replication`] and
    /// answers once they are committed), until called again with `None` (the broker's own).
    pub fn set_change_owner(&mut self, owner: Option<ConnId>) {
        self.replication.owner = owner;
    }

    /// Called as durable changes are written: takes them (the broker's list of changes made
    /// since the last write) for the metadata group.
    pub(super) fn note_replication(&mut self, for_conn: Option<ConnId>) {
        if !self.replication.on || self.replication.applying || self.def_ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.def_ops);
        let for_conn = for_conn.or(self.replication.owner);
        match self.replication.owed.iter_mut().find(|(c, _)| *c == for_conn) {
            Some((_, owed)) => owed.extend(ops),
            None => self.replication.owed.push((for_conn, ops)),
        }
    }

    /// The topology changes `conn`'s commands made (`None`: those of the management API and
    /// the broker itself), in the order they were made, for the host to propose to the
    /// metadata group before it tells anyone of them.
    pub fn take_replication(&mut self, conn: Option<ConnId>) -> Option<Vec<DefOp>> {
        let at = self.replication.owed.iter().position(|(c, _)| *c == conn)?;
        Some(self.replication.owed.remove(at).1)
    }

    /// Whether changes of the management API or the broker itself wait to be taken.
    pub fn has_unowned_replication(&self) -> bool {
        self.replication.owed.iter().any(|(c, _)| c.is_none())
    }

    /// Makes a change committed by the metadata group here, as the broker itself (no permission
    /// checks: its origin made them), without handing it back for replication. Idempotent: a
    /// declaration of what exists with the same properties, or a deletion of what is gone,
    /// changes nothing. Something here in the way with other properties (a transient exchange
    /// or queue of the same name, say) is replaced: the group's state wins.
    pub fn apply_replicated(&mut self, op: &DefOp, now_ms: u64, out: &mut Vec<(ConnId, Out)>) -> Result<(), String> {
        self.replication.applying = true;
        let result = self.apply_def_op(op, now_ms, out);
        self.replication.applying = false;
        result.map_err(|e| format!("cannot apply a replicated change ({}): {e}", describe_op(op)))
    }

    fn apply_def_op(&mut self, op: &DefOp, now_ms: u64, out: &mut Vec<(ConnId, Out)>) -> Result<(), String> {
        let text = |e: ProtocolError| e.text.to_string();
        match op {
            DefOp::PutExchange(x) => {
                let declare = |b: &mut Broker, out: &mut Vec<(ConnId, Out)>| {
                    b.declare_exchange(
                        Caller::Broker,
                        &x.vhost,
                        &x.name,
                        &x.kind,
                        true,
                        x.auto_delete,
                        x.internal,
                        x.arguments.clone(),
                        now_ms,
                        out,
                    )
                };
                if declare(self, out).is_err() && self.has_exchange(&x.vhost, &x.name) {
                    let _ = self.delete_exchange_checked(Caller::Broker, &x.vhost, &x.name, false, now_ms, out);
                }
                declare(self, out).map_err(text)
            }
            DefOp::DelExchange { vhost, name } => {
                if self.has_exchange(vhost, name) {
                    self.delete_exchange_checked(Caller::Broker, vhost, name, false, now_ms, out).map_err(text)?;
                }
                Ok(())
            }
            DefOp::PutQueue(q) => {
                let declare = |b: &mut Broker, out: &mut Vec<(ConnId, Out)>| {
                    b.declare_queue(
                        Caller::Broker,
                        &q.vhost,
                        &q.name,
                        true,
                        q.auto_delete,
                        q.arguments.clone(),
                        now_ms,
                        out,
                    )
                };
                if declare(self, out).is_err() && self.has_queue(&q.vhost, &q.name) {
                    self.delete_queue(&q.vhost, &q.name, now_ms, out);
                    self.save_definitions().map_err(text)?;
                }
                declare(self, out).map_err(text)
            }
            DefOp::DelQueue { vhost, name } => {
                if self.has_queue(vhost, name) {
                    self.delete_queue(vhost, name, now_ms, out);
                    self.save_definitions().map_err(text)?;
                }
                Ok(())
            }
            DefOp::PutBinding(b) | DefOp::DelBinding(b) => self
                .set_binding(
                    Caller::Broker,
                    matches!(op, DefOp::PutBinding(_)),
                    &b.vhost,
                    &b.source,
                    &b.destination,
                    b.destination_is_queue,
                    &b.routing_key,
                    b.arguments.clone(),
                    now_ms,
                    out,
                )
                .map_err(text),
            // Each below changes nothing (and writes nothing) when it is so already.
            DefOp::PutVhost { name } => self.add_vhost(name).map(drop).map_err(text),
            DefOp::DelVhost { name } => self.delete_vhost(name, now_ms, out).map(drop).map_err(text),
            DefOp::PutUser(u) => {
                if self.users.get(&u.name).map(super::persist::user_def).as_ref() == Some(u) {
                    return Ok(());
                }
                let password = Password::Hash {
                    password_hash: u.password_hash.clone(),
                    hashing_algorithm: u.hashing_algorithm.clone(),
                };
                self.put_user(&u.name, password, u.tags.clone()).map_err(text)
            }
            DefOp::DelUser { name } => self.delete_user(name, now_ms, out).map(drop).map_err(text),
            DefOp::PutPermission(p) => {
                if self.users.permission(&p.user, &p.vhost).map(super::persist::permission_def).as_ref() == Some(p) {
                    return Ok(());
                }
                self.set_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read).map_err(text)
            }
            DefOp::DelPermission { user, vhost } => self.clear_permissions(user, vhost).map(drop).map_err(text),
            DefOp::PutTopicPermission(p) => {
                let same = self.users.topic_permissions().any(|t| super::persist::topic_permission_def(t) == *p);
                if same {
                    return Ok(());
                }
                self.set_topic_permissions(&p.user, &p.vhost, &p.exchange, &p.write, &p.read).map_err(text)
            }
            DefOp::DelTopicPermission { user, vhost, exchange } => {
                self.clear_topic_permissions(user, vhost, Some(exchange)).map(drop).map_err(text)
            }
            DefOp::PutPolicy(p) => {
                let list = if p.operator { &self.operator_policies } else { &self.policies };
                if list.iter().any(|have| super::persist::policy_def(have, p.operator) == *p) {
                    return Ok(());
                }
                let apply_to =
                    ApplyTo::parse(&p.apply_to).ok_or_else(|| format!("a policy applying to '{}'", p.apply_to))?;
                self.set_policy(
                    &p.vhost,
                    &p.name,
                    &p.pattern,
                    apply_to,
                    p.priority,
                    p.definition.clone(),
                    p.operator,
                    now_ms,
                    out,
                )
                .map_err(text)
            }
            DefOp::DelPolicy { vhost, name, operator } => {
                self.clear_policy(vhost, name, *operator, now_ms, out).map(drop).map_err(text)
            }
            DefOp::SetVhostLimits { vhost, limits } => self.set_vhost_limits(vhost, *limits).map_err(text),
            DefOp::SetUserLimits { user, limits } => self.set_user_limits(user, *limits).map_err(text),
        }
    }

    /// Sets this node's number in quorum queues' commands.
    pub fn set_replica_node(&mut self, node: u32) {
        self.replication.node = node;
    }

    /// The owner quorum queues' commands name for `channel` of `conn` here.
    pub(super) fn replica_owner(&self, conn: ConnId, channel: u16) -> Owner {
        Owner { node: self.replication.node, conn, channel }
    }

    pub(super) fn push_replica_work(&mut self, group: u64, command: QCommand) {
        self.replication.work.push(ReplicaWork { group, command, confirm: None });
    }

    /// Makes queue `name` in `vhost` served by Raft group `group` (or a local queue again,
    /// `None`); false when there is no such queue.
    pub fn set_replica(&mut self, vhost: &str, name: &str, group: Option<u64>) -> bool {
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|vh| vh.queues.get_mut(name)).map(Mutex::get_mut) else {
            return false;
        };
        let was = q.replica.map(|r| r.group);
        q.replica = group.map(|group| crate::queue::Replica { group, ready: 0, unacked: 0, forwarded: false });
        // Consumers that came while it was not served by its group attach to it now.
        if group.is_some_and(|g| was != Some(g)) {
            self.reattach_replica(vhost, name);
        }
        true
    }

    /// Cancels this node's consumers of forwarded queue `name` in `vhost`, whose home can no
    /// longer be reached: as RabbitMQ cancels the consumers of a queue whose node went down,
    /// each is taken off its channel and sent basic.cancel when its client understands it
    /// (`consumer_cancel_notify`). Nothing goes to the home: the session their consumes
    /// belonged to is over there too. What they held stays unacked on their channels (the
    /// home requeued it; an ack of it is dropped).
    pub fn cancel_forwarded_consumers(&mut self, vhost: &str, name: &str, out: &mut Vec<(ConnId, Out)>) {
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|vh| vh.queues.get_mut(name)).map(Mutex::get_mut) else {
            return;
        };
        let keys: Vec<(ConnId, u16, ShortStr)> =
            q.consumers().iter().map(|k| (k.conn, k.channel, k.tag.clone())).collect();
        for (conn, channel, tag) in keys {
            q.remove_consumer(conn, channel, &tag);
            Self::consumer_cancelled(&mut self.conns, conn, channel, tag, out);
        }
    }

    /// Takes consumer `tag` off channel `channel` of connection `conn` (its queue went, or
    /// its queue's node) and tells its client with basic.cancel when it understands it
    /// (`consumer_cancel_notify`) and the channel is open.
    pub(super) fn consumer_cancelled(
        conns: &mut HashMap<ConnId, Mutex<Conn>>,
        conn: ConnId,
        channel: u16,
        tag: ShortStr,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let Some(c) = conns.get_mut(&conn).map(Mutex::get_mut) else { return };
        let notify = c.cancel_notify;
        let Some(ch) = c.channels.get_mut(&channel) else { return };
        if ch.consumers.remove(&tag).is_some() && notify && ch.state() == ChannelState::Open {
            let method = Method::BasicCancel { consumer_tag: tag, nowait: true };
            out.push((conn, Out::Method { channel, method }));
        }
    }

    /// Attaches this node's consumers of replicated queue `name` in `vhost` to its group
    /// again: after this node was out of touch with the leader, which may have taken them
    /// off as lost with their node. Attaching a consumer the group has changes nothing.
    pub fn reattach_replica(&mut self, vhost: &str, name: &str) {
        let node = self.replication.node;
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|vh| vh.queues.get_mut(name)).map(Mutex::get_mut) else {
            return;
        };
        let Some(replica) = q.replica else { return };
        // A queue held by an exclusive consumer has that one consumer only.
        let exclusive = q.has_exclusive_consumer();
        let attaches: Vec<QCommand> = q
            .consumers()
            .iter()
            .map(|k| QCommand::Attach {
                owner: Owner { node, conn: k.conn, channel: k.channel },
                tag: k.tag.clone(),
                prefetch: u32::from(k.credit.prefetch),
                no_ack: k.credit.no_ack,
                priority: k.priority,
                exclusive,
            })
            .collect();
        for command in attaches {
            self.push_replica_work(replica.group, command);
        }
    }

    /// The name of the queue Raft group `group` serves here, if any.
    pub fn replica_queue_name(&self, group: u64) -> Option<ShortStr> {
        self.vhosts
            .values()
            .flat_map(|vh| vh.queues.iter())
            .find_map(|(name, q)| q.lock().replica.filter(|r| r.group == group).map(|_| name.clone()))
    }

    /// The Raft group serving queue `name` in `vhost`, if one does.
    pub fn replica_group(&self, vhost: &str, name: &str) -> Option<u64> {
        self.vhosts.get(vhost)?.queues.get(name)?.lock().replica.map(|r| r.group)
    }

    /// The quorum queue settings of queue `name` in `vhost` (its arguments and policies), for
    /// its group's machine.
    pub fn replica_config(&self, vhost: &str, name: &str) -> Option<crate::quorum::QuorumConfig> {
        let q = self.vhosts.get(vhost)?.queues.get(name)?.lock();
        Some(crate::quorum::QuorumConfig::from(&q.args))
    }

    /// The replica's counts as of the last entry this node applied, for operators and
    /// queue.declare-ok.
    pub fn set_replica_counts(&mut self, vhost: &str, name: &str, ready: u64, unacked: u64) {
        let q = self.vhosts.get_mut(vhost).and_then(|vh| vh.queues.get_mut(name)).map(Mutex::get_mut);
        if let Some(r) = q.and_then(|q| q.replica.as_mut()) {
            r.ready = ready;
            r.unacked = unacked;
        }
    }

    /// The commands made for replicated queues since the last call, in order.
    pub fn take_replica_work(&mut self) -> Vec<ReplicaWork> {
        std::mem::take(&mut self.replication.work)
    }

    /// A replicated queue's group committed publish `seq` of `channel` on `conn` (`ok`), or
    /// refused or lost it: its confirm goes out once every queue it reached has.
    pub fn replica_committed(&mut self, conn: ConnId, channel: u16, seq: u64, ok: bool, out: &mut Vec<(ConnId, Out)>) {
        let synced = self.synced_epoch;
        let Some(ch) = self.conns.get_mut(&conn).map(Mutex::get_mut).and_then(|c| c.channels.get_mut(&channel)) else {
            return;
        };
        if !ch.replicated(seq, ok) {
            return;
        }
        let released = ch.release_deferred(synced, None);
        self.stats.confirms += released.confirms;
        out.extend(released.answers.into_iter().map(|method| (conn, Out::Method { channel, method })));
        if released.waiting {
            // What the commit let through next waits for a sync round.
            self.waiting.insert(conn);
        }
    }

    /// Delivers a message of replicated queue `queue` (group `group`) to consumer `tag` of
    /// `owner`'s channel here. False when that consumer is gone: the host returns the message
    /// to the group.
    #[allow(clippy::too_many_arguments)]
    pub fn replica_deliver(
        &mut self,
        vhost: &str,
        queue: &ShortStr,
        group: u64,
        owner: Owner,
        tag: &ShortStr,
        delivery: &QDelivery,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> bool {
        let id = *self.next_delivery_id.get_mut();
        let Some(c) = self.conns.get_mut(&owner.conn).map(Mutex::get_mut) else { return false };
        if &*c.vhost != vhost {
            return false;
        }
        let Some(ch) = c.channels.get_mut(&owner.channel) else { return false };
        let Some(credit) = ch.consumers.get(tag).filter(|k| k.queue == *queue).map(|k| k.credit.clone()) else {
            return false;
        };
        let msg = if delivery.delivery_count > 0 {
            delivery.msg.with_delivery_count(delivery.delivery_count)
        } else {
            delivery.msg.clone()
        };
        let delivery_tag = if credit.no_ack {
            ch.take_delivery_tag()
        } else {
            credit.delivered();
            let tag = ch.push_unacked(Unacked {
                delivery_tag: 0,
                queue: queue.clone(),
                id,
                consumer: Some(tag.clone()),
                delivered_at_ms: now_ms,
            });
            *self.next_delivery_id.get_mut() += 1;
            self.replication.unacked.insert(id, (group, delivery.id, owner));
            tag
        };
        if credit.no_ack {
            self.counters.delivered_consume_auto_ack += 1;
        } else {
            self.counters.delivered_consume_manual_ack += 1;
        }
        self.counters.redelivered += u64::from(delivery.redelivered);
        out.push((
            owner.conn,
            Out::Deliver {
                channel: owner.channel,
                consumer_tag: tag.clone(),
                delivery_tag,
                redelivered: delivery.redelivered,
                msg,
            },
        ));
        true
    }

    /// Answers a basic.get of `owner`'s channel here from replicated queue `queue` (group
    /// `group`): with the message the group handed it (`got`, and how many are left ready),
    /// with get-empty, or, when the group did not commit the get (`None`), by closing the
    /// channel (the client cannot tell whether the message was taken). False when the group
    /// checked a message out to a channel that is gone: the host returns it to the group.
    #[allow(clippy::too_many_arguments)]
    pub fn replica_got(
        &mut self,
        queue: &ShortStr,
        group: u64,
        owner: Owner,
        no_ack: bool,
        got: Option<(Option<&QDelivery>, u64)>,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> bool {
        let open = self
            .conns
            .get_mut(&owner.conn)
            .map(Mutex::get_mut)
            .and_then(|c| c.channels.get(&owner.channel))
            .is_some_and(|ch| ch.state() == crate::channel::ChannelState::Open);
        let forwarded = self.is_forwarded_for(owner.conn, queue);
        let Some((delivery, remaining)) = got else {
            if open {
                let e = if forwarded {
                    ProtocolError::new(
                        ReplyCode::InternalError,
                        format_args!("basic.get from queue '{queue}' was not answered by the node it lives on in time"),
                    )
                } else {
                    ProtocolError::new(
                        ReplyCode::InternalError,
                        format_args!(
                            "basic.get from quorum queue '{queue}' was not committed by a majority of its members in time"
                        ),
                    )
                }
                .on((60, 70));
                self.channel_error(owner.conn, owner.channel, e, now_ms, out);
            }
            return true;
        };
        let Some(delivery) = delivery else {
            if open {
                out.push((owner.conn, Out::Method { channel: owner.channel, method: Method::BasicGetEmpty }));
            }
            return true;
        };
        if !open {
            return no_ack;
        }
        let id = *self.next_delivery_id.get_mut();
        let Some(ch) =
            self.conns.get_mut(&owner.conn).map(Mutex::get_mut).and_then(|c| c.channels.get_mut(&owner.channel))
        else {
            return no_ack;
        };
        let delivery_tag = if no_ack {
            ch.take_delivery_tag()
        } else {
            let tag = ch.push_unacked(Unacked {
                delivery_tag: 0,
                queue: queue.clone(),
                id,
                consumer: None,
                delivered_at_ms: now_ms,
            });
            *self.next_delivery_id.get_mut() += 1;
            self.replication.unacked.insert(id, (group, delivery.id, owner));
            tag
        };
        if no_ack {
            self.counters.delivered_get_auto_ack += 1;
        } else {
            self.counters.delivered_get_manual_ack += 1;
        }
        self.counters.redelivered += u64::from(delivery.redelivered);
        // basic.get from a quorum queue always carries the count, 0 on a first delivery (as
        // RabbitMQ 3.10); a classic queue's never does.
        let msg =
            if forwarded { delivery.msg.clone() } else { delivery.msg.with_delivery_count(delivery.delivery_count) };
        out.push((
            owner.conn,
            Out::Content {
                channel: owner.channel,
                method: Method::BasicGetOk {
                    delivery_tag,
                    redelivered: delivery.redelivered,
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                    message_count: u32::try_from(remaining).unwrap_or(u32::MAX),
                },
                msg,
            },
        ));
        true
    }

    /// Dead-letters a message that replicated queue `queue` let go (`reason`: expired,
    /// maxlen, rejected, delivery_limit), through the queue's dead-letter exchange as a local
    /// queue's would be. The leader's host calls it, once per message (at most once, as
    /// RabbitMQ's quorum queues dead-letter by default).
    #[allow(clippy::too_many_arguments)]
    pub fn replica_dead_letter(
        &mut self,
        vhost: &str,
        queue: &ShortStr,
        msg: MessageRef,
        reason: &'static str,
        delivery_count: u32,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let mut item = crate::queue::Queued::unqueued(0, msg, None);
        item.returns = delivery_count;
        self.dead_letter(&Arc::from(vhost), vec![(queue.clone(), item, reason)], now_ms, out);
    }

    /// The messages of group `group` delivered here and waiting for an ack.
    pub fn replica_unacked(&self, group: u64) -> std::collections::BTreeSet<MsgId> {
        self.replication.unacked.values().filter(|(g, _, _)| *g == group).map(|(_, id, _)| *id).collect()
    }

    /// Hands settled deliveries of replicated queues to their groups (acked: settle;
    /// `requeue` true: return; false: discard, which dead-letters); returns the others.
    pub(super) fn settle_replicas(&mut self, settled: Vec<Unacked>, requeue: Option<bool>) -> Vec<Unacked> {
        if self.replication.unacked.is_empty() {
            return settled;
        }
        let mut local = Vec::with_capacity(settled.len());
        let mut by_group: Vec<(u64, Owner, Vec<MsgId>)> = Vec::new();
        for u in settled {
            let Some((group, mid, owner)) = self.replication.unacked.remove(&u.id) else {
                local.push(u);
                continue;
            };
            match by_group.iter_mut().find(|(g, o, _)| *g == group && *o == owner) {
                Some((_, _, ids)) => ids.push(mid),
                None => by_group.push((group, owner, vec![mid])),
            }
        }
        for (group, owner, ids) in by_group {
            let command = match requeue {
                None => QCommand::Settle { owner, ids },
                Some(true) => QCommand::Return { owner, ids },
                Some(false) => QCommand::Discard { owner, ids },
            };
            self.push_replica_work(group, command);
        }
        local
    }

    fn has_exchange(&self, vhost: &str, name: &str) -> bool {
        self.vhosts.get(vhost).is_some_and(|vh| vh.exchanges.contains_key(name))
    }

    /// The durable topology as this node holds it: exchanges, queues and bindings (the rest of
    /// the definitions left empty).
    pub fn durable_topology(&self) -> Definitions {
        let d = self.definitions();
        Definitions { exchanges: d.exchanges, queues: d.queues, bindings: d.bindings, ..Definitions::default() }
    }

    /// Everything the metadata group replicates, as this node holds it (the metadata group's
    /// state is compared with it): vhosts, their limits, users, their limits, permissions,
    /// topic permissions, policies, operator policies and the durable topology.
    pub fn replicated_definitions(&self) -> Definitions {
        self.definitions()
    }
}

/// A change in a few words, for logs.
pub fn describe_op(op: &DefOp) -> String {
    match op {
        DefOp::PutExchange(x) => format!("declare exchange '{}' in vhost '{}'", x.name, x.vhost),
        DefOp::DelExchange { vhost, name } => format!("delete exchange '{name}' in vhost '{vhost}'"),
        DefOp::PutQueue(q) => format!("declare queue '{}' in vhost '{}'", q.name, q.vhost),
        DefOp::DelQueue { vhost, name } => format!("delete queue '{name}' in vhost '{vhost}'"),
        DefOp::PutBinding(b) => format!("bind '{}' to '{}' in vhost '{}'", b.destination, b.source, b.vhost),
        DefOp::DelBinding(b) => format!("unbind '{}' from '{}' in vhost '{}'", b.destination, b.source, b.vhost),
        DefOp::PutVhost { name } => format!("create vhost '{name}'"),
        DefOp::DelVhost { name } => format!("delete vhost '{name}'"),
        DefOp::PutUser(u) => format!("set user '{}'", u.name),
        DefOp::DelUser { name } => format!("delete user '{name}'"),
        DefOp::PutPermission(p) => format!("set permissions of '{}' in vhost '{}'", p.user, p.vhost),
        DefOp::DelPermission { user, vhost } => format!("clear permissions of '{user}' in vhost '{vhost}'"),
        DefOp::PutTopicPermission(p) => {
            format!("set topic permissions of '{}' on '{}' in vhost '{}'", p.user, p.exchange, p.vhost)
        }
        DefOp::DelTopicPermission { user, vhost, exchange } => {
            format!("clear topic permissions of '{user}' on '{exchange}' in vhost '{vhost}'")
        }
        DefOp::PutPolicy(p) => {
            format!("set {} '{}' in vhost '{}'", if p.operator { "operator policy" } else { "policy" }, p.name, p.vhost)
        }
        DefOp::DelPolicy { vhost, name, operator } => {
            format!("clear {} '{name}' in vhost '{vhost}'", if *operator { "operator policy" } else { "policy" })
        }
        DefOp::SetVhostLimits { vhost, .. } => format!("set the limits of vhost '{vhost}'"),
        DefOp::SetUserLimits { user, .. } => format!("set the limits of user '{user}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops_of(b: &mut Broker) -> Vec<DefOp> {
        b.take_replication(None).unwrap_or_default()
    }

    #[test]
    fn changes_are_kept_for_the_group_and_applied_elsewhere_without_coming_back() {
        let (mut here, mut there) = (Broker::new(Config::default()), Broker::new(Config::default()));
        here.set_replicating(true);
        there.set_replicating(true);
        let mut out = Vec::new();
        let caller = Caller::User("guest");
        here.declare_exchange(caller, "/", "logs", "fanout", true, false, false, FieldTable::new(), 0, &mut out)
            .expect("exchange");
        here.declare_queue(caller, "/", "jobs", true, false, FieldTable::new(), 0, &mut out).expect("queue");
        here.declare_queue(caller, "/", "scratch", false, false, FieldTable::new(), 0, &mut out).expect("queue");
        here.set_binding(caller, true, "/", "logs", "jobs", true, "", FieldTable::new(), 0, &mut out).expect("bind");
        let ops = ops_of(&mut here);
        // Durable things only, in the order they were made; nothing owed to a connection.
        assert_eq!(
            ops.iter().map(describe_op).collect::<Vec<_>>(),
            [
                "declare exchange 'logs' in vhost '/'",
                "declare queue 'jobs' in vhost '/'",
                "bind 'jobs' to 'logs' in vhost '/'",
            ]
        );
        assert!(ops_of(&mut here).is_empty(), "taken twice");

        for op in &ops {
            there.apply_replicated(op, 0, &mut out).expect("apply");
        }
        assert!(ops_of(&mut there).is_empty(), "a replicated change came back for replication");
        assert_eq!(there.durable_topology(), here.durable_topology());
        // Applying again changes nothing.
        for op in &ops {
            there.apply_replicated(op, 0, &mut out).expect("apply again");
        }
        assert_eq!(there.durable_topology(), here.durable_topology());

        // A deletion made here takes the queue's bindings there too.
        here.delete_queue_checked(caller, "/", "jobs", false, false, 0, &mut out).expect("delete");
        let ops = ops_of(&mut here);
        assert_eq!(ops, vec![DefOp::DelQueue { vhost: "/".into(), name: "jobs".into() }]);
        there.apply_replicated(&ops[0], 0, &mut out).expect("apply delete");
        assert!(!there.has_queue("/", "jobs"));
        assert_eq!(there.durable_topology(), here.durable_topology());
        assert!(there.durable_topology().bindings.is_empty());
    }

    #[test]
    fn the_groups_declaration_replaces_one_in_the_way() {
        let mut b = Broker::new(Config::default());
        b.set_replicating(true);
        let mut out = Vec::new();
        b.declare_exchange(Caller::Broker, "/", "x", "direct", false, false, false, FieldTable::new(), 0, &mut out)
            .expect("transient exchange");
        let def = crate::definitions::ExchangeDef {
            vhost: "/".into(),
            name: "x".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        };
        b.apply_replicated(&DefOp::PutExchange(def.clone()), 0, &mut out).expect("replaced");
        assert_eq!(b.durable_topology().exchanges, vec![def]);
        assert!(b.take_replication(None).is_none());
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;
    use crate::broker::limits::{UserLimit, VhostLimit};

    fn ops_of(b: &mut Broker) -> Vec<DefOp> {
        b.take_replication(None).unwrap_or_default()
    }

    fn ttl(ms: i64) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert("message-ttl", FieldValue::I64(ms));
        t
    }

    #[test]
    fn access_changes_are_kept_in_order_with_the_topology_and_applied_elsewhere() {
        let (mut here, mut there) = (Broker::new(Config::default()), Broker::new(Config::default()));
        here.set_replicating(true);
        there.set_replicating(true);
        let mut out = Vec::new();
        // The default user's password is salted differently on each: made the same first.
        let guest = super::persist::user_def(here.user("guest").expect("the default user"));
        there.apply_replicated(&DefOp::PutUser(guest), 0, &mut out).expect("guest");
        here.add_vhost("prod").expect("vhost");
        here.put_user("alice", Password::Clear("s3cret".into()), vec!["management".into()]).expect("user");
        here.set_permissions("alice", "prod", "^alice", ".*", ".*").expect("permissions");
        here.set_topic_permissions("alice", "prod", "amq.topic", "^a", ".*").expect("topic permissions");
        here.set_vhost_limit("prod", VhostLimit::MaxQueues, 10).expect("vhost limit");
        here.set_user_limit("alice", UserLimit::MaxChannels, 4).expect("user limit");
        here.declare_queue(Caller::Broker, "prod", "tasks", true, false, FieldTable::new(), 0, &mut out)
            .expect("queue");
        here.set_policy("prod", "ttl", "^t", ApplyTo::Queues, 1, ttl(500), false, 0, &mut out).expect("policy");
        here.set_policy("prod", "cap", ".*", ApplyTo::Queues, 1, ttl(100), true, 0, &mut out).expect("operator");
        let ops = ops_of(&mut here);
        assert_eq!(
            ops.iter().map(describe_op).collect::<Vec<_>>(),
            [
                "create vhost 'prod'",
                "set user 'alice'",
                "set permissions of 'alice' in vhost 'prod'",
                "set topic permissions of 'alice' on 'amq.topic' in vhost 'prod'",
                "set the limits of vhost 'prod'",
                "set the limits of user 'alice'",
                "declare queue 'tasks' in vhost 'prod'",
                "set policy 'ttl' in vhost 'prod'",
                "set operator policy 'cap' in vhost 'prod'",
            ]
        );
        // The password travels hashed, as stored.
        let DefOp::PutUser(u) = &ops[1] else { panic!("{:?}", ops[1]) };
        assert!(!u.password_hash.is_empty() && !u.password_hash.contains("s3cret"));

        for op in &ops {
            there.apply_replicated(op, 0, &mut out).expect("apply");
        }
        assert!(ops_of(&mut there).is_empty(), "a replicated change came back for replication");
        assert_eq!(there.replicated_definitions(), here.replicated_definitions());
        assert!(there.users.check("alice", "s3cret", true).is_ok(), "the replicated user cannot log in");
        let policy = there.queue_details(&[("prod".into(), "tasks".into())]);
        assert_eq!(policy.first().and_then(|q| q.0.policy.clone()).as_deref(), Some("ttl"));
        // Applying again changes nothing (nor writes anything).
        for op in &ops {
            there.apply_replicated(op, 0, &mut out).expect("apply again");
        }
        assert_eq!(there.replicated_definitions(), here.replicated_definitions());

        // Clearing and deleting, then the vhost with what it held.
        here.clear_user_limit("alice", UserLimit::MaxChannels).expect("clear user limit");
        here.clear_topic_permissions("alice", "prod", None).expect("clear topic permissions");
        here.clear_policy("prod", "cap", true, 0, &mut out).expect("clear operator policy");
        here.clear_permissions("alice", "prod").expect("clear permissions");
        here.delete_user("alice", 0, &mut out).expect("delete user");
        here.delete_vhost("prod", 0, &mut out).expect("delete vhost");
        let ops = ops_of(&mut here);
        assert_eq!(
            ops.iter().map(describe_op).collect::<Vec<_>>(),
            [
                "set the limits of user 'alice'",
                "clear topic permissions of 'alice' on 'amq.topic' in vhost 'prod'",
                "clear operator policy 'cap' in vhost 'prod'",
                "clear permissions of 'alice' in vhost 'prod'",
                "delete user 'alice'",
                "delete queue 'tasks' in vhost 'prod'",
                "delete vhost 'prod'",
            ]
        );
        for op in &ops {
            there.apply_replicated(op, 0, &mut out).expect("apply");
        }
        assert_eq!(there.replicated_definitions(), here.replicated_definitions());
        assert!(!there.has_vhost("prod") && there.user("alice").is_none());
    }

    #[test]
    fn a_request_owns_its_changes_and_the_broker_the_rest() {
        let mut b = Broker::new(Config::default());
        b.set_replicating(true);
        b.set_change_owner(Some(77));
        b.add_vhost("mine").expect("vhost");
        b.set_change_owner(None);
        b.add_vhost("the-brokers").expect("vhost");
        assert_eq!(b.take_replication(Some(77)), Some(vec![DefOp::PutVhost { name: "mine".into() }]));
        assert_eq!(b.take_replication(None), Some(vec![DefOp::PutVhost { name: "the-brokers".into() }]));
        // On one node nothing is kept.
        let mut single = Broker::new(Config::default());
        single.add_vhost("v").expect("vhost");
        assert!(single.take_replication(None).is_none());
    }
}
