//! Topology: exchanges, bindings and queues declared, bound and deleted by clients (the
//! management API goes through the same methods), with RabbitMQ's checks of equivalence,
//! permissions and exclusivity.

use super::*;

impl Broker {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn exchange_declare(
        &mut self,
        who: &Actor,
        name: &ShortStr,
        kind: &str,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Res {
        let vhost = who.vhost.clone();
        let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
        if passive {
            // As RabbitMQ: even a passive declare of the default exchange is refused.
            if name.is_empty() {
                return Err(default_exchange_refused());
            }
            return if vh.exchanges.contains_key(name) { Ok(()) } else { Err(not_found("exchange", name, &vhost)) };
        }
        who.check(Access::Configure, "exchange", name)?;
        if let Some(ae) = arguments.get("alternate-exchange").and_then(FieldValue::as_str) {
            who.check(Access::Write, "exchange", ae)?;
            who.check(Access::Read, "exchange", name)?;
        }
        let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
        let Some(kind) = ExchangeKind::parse(kind) else {
            return Err(ProtocolError::new(ReplyCode::CommandInvalid, format_args!("unknown exchange type '{kind}'")));
        };
        if kind == ExchangeKind::Deduplication {
            crate::dedup::DedupCache::from_arguments(&arguments, name)?;
        }
        if kind == ExchangeKind::DelayedMessage && crate::exchange::delayed_type(&arguments).is_none() {
            return Err(precondition("Invalid argument, 'x-delayed-type' must be an existing exchange type"));
        }
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        match vh.exchanges.get(name) {
            Some(x) => {
                if x.kind != kind {
                    return Err(inequivalent("type", "exchange", name, &vhost, kind.as_str(), x.kind.as_str()));
                }
                if x.durable != durable {
                    return Err(inequivalent("durable", "exchange", name, &vhost, durable, x.durable));
                }
                if x.auto_delete != auto_delete {
                    return Err(inequivalent("auto_delete", "exchange", name, &vhost, auto_delete, x.auto_delete));
                }
                if x.internal != internal {
                    return Err(inequivalent("internal", "exchange", name, &vhost, internal, x.internal));
                }
                let (new_ae, cur_ae) = (arguments.get("alternate-exchange"), x.arguments.get("alternate-exchange"));
                if !args_equal(new_ae, cur_ae) {
                    let shown = |v: Option<&FieldValue>| match v {
                        None => "none".to_string(),
                        Some(v) => format!("'{}'", describe(Some(v))),
                    };
                    let current = match cur_ae {
                        None => "none".to_string(),
                        Some(v) => format!("the value '{}' of type 'longstr'", describe(Some(v))),
                    };
                    return Err(precondition(format_args!(
                        "inequivalent arg 'alternate-exchange' for exchange '{name}' in vhost '{vhost}': received {} but current is {current}",
                        shown(new_ae)
                    )));
                }
                Ok(())
            }
            None => {
                if name.starts_with("amq.") {
                    return Err(ProtocolError::new(
                        ReplyCode::AccessRefused,
                        format_args!("exchange name '{name}' contains reserved prefix 'amq.*'"),
                    ));
                }
                let mut exchange = Exchange::new(name.clone(), kind, durable, auto_delete, internal, arguments);
                exchange.policy_alternate_exchange =
                    crate::policy::policy_alternate_exchange(&vhost, name, &self.policies).map(ShortStr::from);
                if kind == ExchangeKind::DelayedMessage {
                    let (store, _) = self.store.open_delayed(&vhost, name, durable).map_err(|e| {
                        self::internal(format_args!("cannot create the delayed store of '{name}': {e}"))
                    })?;
                    exchange.delayed = Some(store);
                }
                self.store.attach_dedup_log(&vhost, &mut exchange).map_err(|e| {
                    self::internal(format_args!("cannot create the deduplication cache of '{name}': {e}"))
                })?;
                let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
                if durable {
                    self.def_ops.push(DefOp::PutExchange(exchange_def(&vhost, &exchange)));
                }
                vh.exchanges.insert(name.clone(), exchange);
                Ok(())
            }
        }
    }

    pub(super) fn exchange_delete(&mut self, who: &Actor, name: &ShortStr, if_unused: bool) -> Res {
        who.check(Access::Configure, "exchange", name)?;
        let vhost = who.vhost.clone();
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(ProtocolError::new(
                ReplyCode::AccessRefused,
                format_args!("deletion of system exchange '{name}' in vhost '{vhost}' refused"),
            ));
        }
        let Some(vh) = self.vhosts.get_mut(&*vhost) else { return Ok(()) };
        let Some(x) = vh.exchanges.get(name) else { return Ok(()) };
        if if_unused && x.has_bindings() {
            return Err(precondition(format_args!("exchange '{name}' in vhost '{vhost}' in use")));
        }
        Self::remove_exchange(vh, name, &mut self.def_ops);
        Ok(())
    }

    /// Removes an exchange, the bindings to it, and auto-delete exchanges left without bindings;
    /// records the durable ones that went in `ops`.
    pub(super) fn remove_exchange(vh: &mut VHost, name: &ShortStr, ops: &mut Vec<DefOp>) {
        let removed = vh.exchanges.remove(name);
        if removed.as_ref().is_some_and(|x| x.durable) {
            // Its bindings, from and to it, go with it in the journal too.
            ops.push(DefOp::DelExchange { vhost: vh.name.clone(), name: name.to_string() });
        }
        if let Some(x) = removed {
            // Held messages go with their exchange. A failure leaves files that the next
            // start does not read (no definition names them).
            if let Some(delayed) = x.delayed {
                let _ = delayed.destroy();
            }
            if let Some(mut cache) = x.dedup {
                let _ = cache.destroy();
            }
        }
        Self::remove_bindings_to(vh, &Destination::Exchange(name.clone()), ops);
    }

    /// Removes every binding to `dest`, which is going away (its own removal, recorded by the
    /// caller, takes the durable bindings to it out of the definitions); auto-delete exchanges
    /// left without bindings go too.
    pub(super) fn remove_bindings_to(vh: &mut VHost, dest: &Destination, ops: &mut Vec<DefOp>) {
        let mut emptied = Vec::new();
        for x in vh.exchanges.values_mut() {
            if x.unbind_all_to(dest) > 0 && x.auto_delete && !x.has_bindings() {
                emptied.push(x.name.clone());
            }
        }
        for name in emptied {
            Self::remove_exchange(vh, &name, ops);
        }
    }

    /// Binds `dest` to the exchange `source` (queue.bind, exchange.bind), with RabbitMQ's
    /// checks in its order: permissions, then both ends, then topic permissions.
    pub(super) fn bind(
        &mut self,
        who: &Actor,
        dest: Destination,
        source: &ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Res {
        Self::check_binding_access(who, &dest, source)?;
        let vhost = who.vhost.clone();
        self.check_binding_ends(who, &vhost, &dest, source)?;
        self.check_topic(who, source, Access::Read, &routing_key)?;
        let Some(vh) = self.vhosts.get_mut(&*vhost) else { return Ok(()) };
        if vh.exchanges.get(source).is_some_and(|x| x.kind == ExchangeKind::Headers) {
            crate::exchange::headers::validate_binding(&arguments).map_err(precondition)?;
        }
        let durable_dest = match &dest {
            Destination::Queue(q) => {
                vh.queues.get(q).map(|q| q.lock()).is_some_and(|q| q.durable && q.exclusive_owner.is_none())
            }
            Destination::Exchange(x) => vh.exchanges.get(x).is_some_and(|x| x.durable),
        };
        if let Some(x) = vh.exchanges.get_mut(source) {
            let binding = Binding { destination: dest, routing_key, arguments };
            let def = (x.durable && durable_dest).then(|| durable_binding_def(&vh.name, source, &binding));
            if x.bind(binding) {
                self.def_ops.extend(def.map(DefOp::PutBinding));
            }
        }
        Ok(())
    }

    /// Removes a binding (queue.unbind, exchange.unbind).
    pub(super) fn unbind(
        &mut self,
        who: &Actor,
        dest: Destination,
        source: &ShortStr,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Res {
        Self::check_binding_access(who, &dest, source)?;
        let vhost = who.vhost.clone();
        // RabbitMQ answers unbind-ok when an end does not exist (aio-pika unbinds a reply
        // queue that is already gone); the default exchange is still refused.
        let ends_exist = self.vhosts.get(&*vhost).is_some_and(|vh| {
            vh.exchanges.contains_key(source)
                && match &dest {
                    Destination::Queue(q) => vh.queues.contains_key(q),
                    Destination::Exchange(x) => vh.exchanges.contains_key(x),
                }
        });
        let default_exchange = source.is_empty() || matches!(&dest, Destination::Exchange(d) if d.is_empty());
        if !ends_exist && !default_exchange {
            return Ok(());
        }
        self.check_binding_ends(who, &vhost, &dest, source)?;
        self.check_topic(who, source, Access::Read, &routing_key)?;
        let Some(vh) = self.vhosts.get_mut(&*vhost) else { return Ok(()) };
        let mut emptied = false;
        if let Some(x) = vh.exchanges.get_mut(source) {
            let binding = Binding { destination: dest, routing_key, arguments };
            let removed = x.unbind(&binding);
            if removed && x.durable {
                self.def_ops.push(DefOp::DelBinding(durable_binding_def(&vh.name, source, &binding)));
            }
            emptied = removed && x.auto_delete && !x.has_bindings();
        }
        if emptied {
            Self::remove_exchange(vh, source, &mut self.def_ops);
        }
        Ok(())
    }

    /// A binding writes to its destination and reads from its source.
    fn check_binding_access(who: &Actor, dest: &Destination, source: &ShortStr) -> Res {
        match dest {
            Destination::Queue(q) => who.check(Access::Write, "queue", q)?,
            Destination::Exchange(x) => who.check(Access::Write, "exchange", x)?,
        }
        who.check(Access::Read, "exchange", source)
    }

    fn check_binding_ends(&self, who: &Actor, vhost: &str, dest: &Destination, source: &ShortStr) -> Res {
        let vh = self.vhosts.get(vhost).ok_or_else(|| not_found("vhost", vhost, vhost))?;
        if source.is_empty() || matches!(dest, Destination::Exchange(d) if d.is_empty()) {
            return Err(default_exchange_refused());
        }
        match dest {
            Destination::Queue(q) => {
                let queue = vh.queues.get(q).map(|q| q.lock()).ok_or_else(|| not_found("queue", q, vhost))?;
                forward::home_down(&self.replication.homes_down, &queue, vhost)?;
                if who.locked_out(queue.exclusive_owner) {
                    return Err(locked(q, vhost));
                }
            }
            Destination::Exchange(x) => {
                if !vh.exchanges.contains_key(x) {
                    return Err(not_found("exchange", x, vhost));
                }
            }
        }
        if !vh.exchanges.contains_key(source) {
            return Err(not_found("exchange", source, vhost));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    /// Declares a queue (queue.declare): an empty name (not passive) gets a generated one.
    /// Returns its name, messages and consumers.
    pub(super) fn queue_declare(
        &mut self,
        who: &Actor,
        name: ShortStr,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
        now_ms: u64,
    ) -> Result<(ShortStr, u32, u32), ProtocolError> {
        let vhost = who.vhost.clone();
        if name.as_str() == REPLY_TO_QUEUE {
            // As RabbitMQ: the pseudo-queue always answers with one consumer.
            return Ok((name, 0, 1));
        }
        let name = if name.is_empty() && !passive { generated_name(&mut self.rng, "amq.gen-") } else { name };
        if !passive {
            who.check(Access::Configure, "queue", &name)?;
            if let Some(dlx) = arguments.get("x-dead-letter-exchange").and_then(FieldValue::as_str) {
                who.check(Access::Write, "exchange", dlx)?;
                who.check(Access::Read, "queue", &name)?;
            }
        }
        let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
        let result = match vh.queues.get_mut(&name).map(Mutex::get_mut) {
            Some(q) => {
                forward::home_down(&self.replication.homes_down, q, &vhost)?;
                if who.locked_out(q.exclusive_owner) {
                    return Err(locked(&name, &vhost));
                }
                if !passive {
                    // As RabbitMQ: another exclusive flag is a lock conflict (405), checked
                    // before the other properties.
                    if q.exclusive_owner.is_some() != exclusive {
                        return Err(locked(&name, &vhost));
                    }
                    if q.durable != durable {
                        return Err(inequivalent("durable", "queue", &name, &vhost, durable, q.durable));
                    }
                    if q.auto_delete != auto_delete {
                        return Err(inequivalent("auto_delete", "queue", &name, &vhost, auto_delete, q.auto_delete));
                    }
                    for key in EQUIVALENT_QUEUE_ARGS {
                        let (new, cur) = (arguments.get(key), q.arguments.get(key));
                        if !args_equal(new, cur) {
                            return Err(inequivalent(key, "queue", &name, &vhost, describe(new), describe(cur)));
                        }
                    }
                }
                let r = (name.clone(), q.message_count(), q.consumer_count());
                q.last_used_ms = now_ms;
                r
            }
            None => {
                if passive {
                    return Err(not_found("queue", &name, &vhost));
                }
                if name.starts_with("amq.") && !name.starts_with("amq.gen-") {
                    return Err(ProtocolError::new(
                        ReplyCode::AccessRefused,
                        format_args!("queue name '{name}' contains reserved prefix 'amq.*'"),
                    ));
                }
                if let Some(max) = vh.limits.queues() {
                    if vh.queues.len() as u64 >= max {
                        return Err(precondition(format_args!(
                            "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({max}) is reached"
                        )));
                    }
                }
                QueueArgs::parse(&arguments, &name, &vhost)?;
                let EffectiveArgs { args, policy, operator_policy } = self.queue_args(&vhost, &name, &arguments)?;
                if args.queue_type == QueueType::Quorum {
                    // Quorum queues are replicated logs: always durable, never exclusive or
                    // auto-delete (RabbitMQ's checks and texts).
                    if !durable {
                        return Err(precondition(format_args!(
                            "invalid property 'non-durable' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                    if exclusive {
                        return Err(precondition(format_args!(
                            "invalid property 'exclusive-owner' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                    if auto_delete {
                        return Err(precondition(format_args!(
                            "invalid property 'auto-delete' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                }
                let owner = match (exclusive, who.conn) {
                    (false, _) => None,
                    (true, Some(conn)) => Some(conn),
                    (true, None) => {
                        return Err(precondition(format_args!(
                            "queue '{name}' in vhost '{vhost}': only a client connection can own an exclusive queue"
                        )))
                    }
                };
                // Exclusive queues die with their connection, so never outlive a restart.
                let survives = durable && !exclusive;
                let dir = if survives { self.store.durable_dir(&vhost, &name) } else { self.store.transient_dir() };
                let store =
                    QueueStore { backend: self.store.backend.clone(), dir, config: self.store.log_config.clone() };
                let (queue, _) = Queue::open(name.clone(), durable, owner, auto_delete, arguments, args, store, now_ms)
                    .map_err(|e| internal(format_args!("cannot create the log of queue '{name}': {e}")))?;
                let mut queue = queue;
                queue.sync_id = self.take_sync_id();
                queue.policy = policy;
                queue.operator_policy = operator_policy;
                let vh = self.vhosts.get_mut(&*vhost).ok_or_else(|| not_found("vhost", &vhost, &vhost))?;
                if survives {
                    self.def_ops.push(DefOp::PutQueue(queue_def(&vhost, &queue)));
                }
                vh.queues.insert(name.clone(), Mutex::new(queue));
                self.counters.queues_created += 1;
                if let Some(c) = owner.and_then(|conn| self.conns.get_mut(&conn)).map(Mutex::get_mut) {
                    c.owns_exclusive = true;
                }
                (name.clone(), 0, 0)
            }
        };
        Ok(result)
    }

    /// Drops a queue's ready messages (queue.purge); returns how many there were.
    pub(super) fn queue_purge(&mut self, who: &Actor, name: &ShortStr) -> Result<u32, ProtocolError> {
        who.check(Access::Read, "queue", name)?;
        let vhost = who.vhost.clone();
        let q = self
            .vhosts
            .get_mut(&*vhost)
            .and_then(|v| v.queues.get_mut(name).map(Mutex::get_mut))
            .ok_or_else(|| not_found("queue", name, &vhost))?;
        forward::home_down(&self.replication.homes_down, q, &vhost)?;
        if who.locked_out(q.exclusive_owner) {
            return Err(locked(name, &vhost));
        }
        if let Some(replica) = q.replica {
            // Its group purges it; the count is the replica's as this node last saw it.
            let n = replica.ready.min(u64::from(u32::MAX)) as u32;
            self.push_replica_work(replica.group, crate::quorum::Command::Purge);
            return Ok(n);
        }
        let n = q.purge().map_err(|e| internal(format_args!("cannot purge queue '{name}': {e}")))?;
        if q.durable {
            let key = (vhost, q.name.clone());
            self.dirty.insert(key);
        }
        Ok(n)
    }

    /// Deletes a queue (queue.delete) with its checks; deleting one that does not exist
    /// succeeds, as in RabbitMQ. Returns the ready messages dropped.
    pub(super) fn queue_delete(
        &mut self,
        who: &Actor,
        name: &ShortStr,
        if_unused: bool,
        if_empty: bool,
        now_ms: u64,
        out: &mut Vec<(ConnId, Out)>,
    ) -> Result<u32, ProtocolError> {
        who.check(Access::Configure, "queue", name)?;
        let vhost = who.vhost.clone();
        let found = self.vhosts.get(&*vhost).and_then(|v| v.queues.get(name)).map(|q| {
            let q = q.lock();
            let down = forward::home_down(&self.replication.homes_down, &q, &vhost);
            (q.exclusive_owner, q.consumers().is_empty(), q.is_empty(), down)
        });
        let Some((owner, unused, empty, down)) = found else { return Ok(0) };
        down?;
        if who.locked_out(owner) {
            return Err(locked(name, &vhost));
        }
        if if_unused && !unused {
            return Err(precondition(format_args!("queue '{name}' in vhost '{vhost}' in use")));
        }
        if if_empty && !empty {
            return Err(precondition(format_args!("queue '{name}' in vhost '{vhost}' not empty")));
        }
        Ok(self.delete_queue(&vhost, name, now_ms, out))
    }

    /// Deletes a queue: its consumers are cancelled (told so when they understand it), its
    /// bindings removed, its messages dropped. Returns the number of ready messages dropped.
    pub(super) fn delete_queue(&mut self, vhost: &str, name: &str, _now_ms: u64, out: &mut Vec<(ConnId, Out)>) -> u32 {
        let Some(vh) = self.vhosts.get_mut(vhost) else { return 0 };
        let Some(q) = vh.queues.remove(name).map(Mutex::into_inner) else { return 0 };
        self.counters.queues_deleted += 1;
        if q.durable && q.exclusive_owner.is_none() {
            self.def_ops.push(DefOp::DelQueue { vhost: vhost.to_owned(), name: name.to_owned() });
        }
        Self::remove_bindings_to(vh, &Destination::Queue(q.name.clone()), &mut self.def_ops);
        for key in q.consumers() {
            Self::consumer_cancelled(&mut self.conns, key.conn, key.channel, key.tag.clone(), out);
        }
        let n = q.message_count();
        let qname = q.name.clone();
        if let Err(e) = q.destroy() {
            self.errors.push(format!("cannot remove the log of deleted queue '{qname}' in vhost '{vhost}': {e}"));
        }
        n
    }
}
