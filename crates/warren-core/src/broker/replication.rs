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

    /// Called as durable changes are written: keeps them for the metadata group.
    pub(super) fn note_replication(&mut self, for_conn: Option<ConnId>) {
        if !self.replication.on || self.replication.applying || self.def_ops.is_empty() {
            return;
        }
        let ops = self.def_ops.clone();
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
        }
    }

    fn has_exchange(&self, vhost: &str, name: &str) -> bool {
        self.vhosts.get(vhost).is_some_and(|vh| vh.exchanges.contains_key(name))
    }

    /// The durable topology as this node holds it: exchanges, queues and bindings (the rest of
    /// the definitions left empty), as the metadata group's state is compared with it.
    pub fn durable_topology(&self) -> Definitions {
        let d = self.definitions();
        Definitions { exchanges: d.exchanges, queues: d.queues, bindings: d.bindings, ..Definitions::default() }
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
