//! Classic queues of a cluster, reachable from every node (issue 15, docs/clustering.md
//! "Classic queues reachable from any node").
//!
//! A durable classic queue lives on one node, its home. On the other nodes the broker keeps
//! the queue's name and consumers but no messages, as for a quorum queue served by its group
//! (`Queue::replica`, flagged `forwarded`): what clients do to it becomes commands, which the
//! cluster's host sends to the home. There, each connection of another node is a connection
//! of the home's broker with no socket ([`Broker::open_virtual_connection`]) whose channels
//! mirror the client's, so that prefetch, redelivery, requeue on close, priorities, TTL and
//! dead-lettering are exactly a local client's; its output goes back to the client's node.

use super::*;

impl Broker {
    /// Makes classic queue `name` in `vhost` one that lives on another node and is reached
    /// through it (`group`: its placement's id, which names it in commands), or this node's own
    /// again (`None`; a queue served by a quorum queue's group is left alone). False when
    /// there is no such queue.
    pub fn set_forwarded(&mut self, vhost: &str, name: &str, group: Option<u64>) -> bool {
        let Some(q) = self.vhosts.get_mut(vhost).and_then(|vh| vh.queues.get_mut(name)).map(Mutex::get_mut) else {
            return false;
        };
        let was = q.replica;
        match group {
            Some(group) => {
                if was.is_some_and(|r| r.forwarded && r.group == group) {
                    return true;
                }
                q.replica = Some(crate::queue::Replica { group, ready: 0, unacked: 0, forwarded: true });
                // Consumers that came while it was this node's own go to its home now.
                self.reattach_replica(vhost, name);
            }
            None => {
                if was.is_some_and(|r| r.forwarded) {
                    q.replica = None;
                }
            }
        }
        true
    }

    /// Makes `down` (placement group -> home node's name) the classic queues of other nodes
    /// whose home is down: as in RabbitMQ, declaring, consuming from, getting from, purging,
    /// binding, unbinding or deleting one is refused with 404 until its home is back.
    pub fn set_homes_down(&mut self, down: impl IntoIterator<Item = (u64, String)>) {
        self.replication.homes_down = down.into_iter().map(|(group, home)| (group, Arc::from(home))).collect();
    }

    /// Whether queue `queue` in the vhost of connection `conn` lives on another node.
    pub(super) fn is_forwarded_for(&self, conn: ConnId, queue: &str) -> bool {
        let Some(vhost) = self.conns.get(&conn).map(|c| c.lock().vhost.clone()) else { return false };
        self.vhosts
            .get(&*vhost)
            .and_then(|vh| vh.queues.get(queue))
            .is_some_and(|q| q.lock().replica.is_some_and(|r| r.forwarded))
    }

    /// Opens a connection with no socket in `vhost`, for another node's clients (`peer` names
    /// them for the logs): its channels act for the clients' channels there, with every
    /// permission (the clients' node checked theirs), and it is neither listed nor counted
    /// against connection limits. Its output is the caller's to carry.
    pub fn open_virtual_connection(&mut self, conn: ConnId, vhost: &str, peer: String) -> Res {
        if !self.vhosts.contains_key(vhost) {
            return Err(ProtocolError::new(ReplyCode::NotAllowed, format_args!("vhost {vhost} not found")));
        }
        let permission = Permission::new("", vhost, ".*", ".*", ".*").map_err(internal)?;
        let grants = Arc::new(Grants { permission, topic: Vec::new(), impersonator: true });
        let mut capabilities = FieldTable::default();
        capabilities.insert("consumer_cancel_notify", FieldValue::Bool(true));
        let mut client_properties = FieldTable::default();
        client_properties.insert("capabilities", FieldValue::Table(capabilities));
        let info = ConnInfo {
            user: String::new(),
            vhost: vhost.to_owned(),
            peer,
            client_properties,
            channel_max: 0,
            session: Session::default(),
        };
        self.conns.insert(conn, Mutex::new(Conn::new(info, grants, true)));
        Ok(())
    }

    /// Puts `msg`, which another node routed to queue `queue` (it lives here), in that queue
    /// through channel `channel` of virtual connection `conn`: as a publish of the channel
    /// (its confirm, when the channel is in confirm mode, goes out once the queue holds the
    /// message as a local publish's would), but to that one queue whatever its exchange and
    /// routing key, which the message keeps for its consumers.
    pub fn forwarded_publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: &ShortStr,
        msg: MessageRef,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Res {
        let vhost = self.vhost_of(conn)?;
        let ch = self.channel_mut(conn, channel)?;
        let confirm_seq = ch.confirm_next;
        if let Some(n) = confirm_seq {
            ch.confirm_next = Some(n + 1);
        }
        let p = Publish { mandatory: false, msg, confirm_seq };
        let mut tally = Tally::default();
        let queues = std::slice::from_ref(queue);
        let (sync, rejected, _paged) = self.enqueue(&vhost, queues, &p.msg, now_ms, out, &mut tally, Sink::Out);
        self.fold(tally);
        self.predict_disk_alarm();
        let outcome = Routed { routed: true, direct_reply: false, rejected, sync, replicated: 0 };
        let c = self.conns.get_mut(&conn).map(Mutex::get_mut).ok_or_else(|| internal("unknown connection"))?;
        // The publish was counted on the node its client published through.
        let mut uncounted = crate::metrics::Counters::default();
        if Self::finish_publish(c, conn, channel, &p, &outcome, self.write_epoch, &mut uncounted, out)? {
            self.waiting.insert(conn);
        }
        Ok(())
    }

    /// Closes channel `channel` of `conn` with the error `code`, `text` (its code's name
    /// first, as sent) and method ids, as an error of its own would: what another node's
    /// queue said of the client's channel (a consumer refused, say).
    #[allow(clippy::too_many_arguments)]
    pub fn close_channel_with(
        &mut self,
        conn: ConnId,
        channel: u16,
        code: u16,
        text: &str,
        ids: (u16, u16),
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) {
        let open = self
            .conns
            .get(&conn)
            .map(|c| c.lock())
            .is_some_and(|c| c.channels.get(&channel).is_some_and(|ch| ch.state() == ChannelState::Open));
        if !open {
            return;
        }
        let code = ReplyCode::from_code(code).unwrap_or(ReplyCode::InternalError);
        let e = ProtocolError { code, text: text.to_owned(), class_id: ids.0, method_id: ids.1 };
        self.channel_error(conn, channel, e, now_ms, out);
    }

    /// Whether connection `conn` is open here with channel `channel` open (`None`: whether the
    /// connection is).
    pub fn has_channel(&self, conn: ConnId, channel: Option<u16>) -> bool {
        self.conns.get(&conn).map(|c| c.lock()).is_some_and(|c| channel.is_none_or(|ch| c.channels.contains_key(&ch)))
    }

    /// The ready and unacked counts of durable classic queue `name` in `vhost`, if it lives
    /// here (not served from elsewhere, not exclusive).
    pub fn home_queue_counts(&self, vhost: &str, name: &str) -> Option<(u64, u64)> {
        let q = self.vhosts.get(vhost)?.queues.get(name)?.lock();
        Self::lives_here(&q).then(|| (u64::from(q.message_count()), q.unacked() as u64))
    }

    /// The counts of every durable classic queue that lives here: vhost, name, ready, unacked.
    pub fn all_home_queue_counts(&self) -> Vec<(String, ShortStr, u64, u64)> {
        let mut all = Vec::new();
        for vh in self.vhosts.values() {
            for (name, q) in &vh.queues {
                let q = q.lock();
                if Self::lives_here(&q) {
                    all.push((vh.name.clone(), name.clone(), u64::from(q.message_count()), q.unacked() as u64));
                }
            }
        }
        all
    }

    fn lives_here(q: &Queue) -> bool {
        q.replica.is_none() && q.durable && q.exclusive_owner.is_none()
    }
}

/// RabbitMQ's refusal of a durable queue whose node is down (404), when `q` lives on a node
/// `down` says is down.
pub(super) fn home_down(
    down: &crate::hash::HashMap<u64, Arc<str>>,
    q: &crate::queue::Queue,
    vhost: &str,
) -> Result<(), ProtocolError> {
    match q.replica.filter(|r| r.forwarded).and_then(|r| down.get(&r.group)) {
        None => Ok(()),
        Some(home) => Err(ProtocolError::new(
            ReplyCode::NotFound,
            format_args!("home node '{home}' of durable queue '{}' in vhost '{vhost}' is down or inaccessible", q.name),
        )),
    }
}
