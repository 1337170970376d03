//! Exchanges: one file per exchange type, each behind the [`Router`] trait.
//!
//! Invariant: routing reads only the exchange's bindings, never queue state, so the same router
//! can later be shared as an immutable snapshot.

mod consistent_hash;
mod direct;
mod fanout;
pub(crate) mod headers;
pub mod topic;

use crate::hash::HashMap;
use std::collections::BTreeMap;
use warren_amqp::{FieldTable, ShortStr};

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(ShortStr),
    Exchange(ShortStr),
}

impl Destination {
    pub fn name(&self) -> &ShortStr {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

/// The routing behaviour of one exchange type.
pub trait Router: Send + Sync + std::fmt::Debug {
    fn bind(&mut self, binding: &Binding);
    fn unbind(&mut self, binding: &Binding);
    /// Appends every destination matching the message (duplicates allowed; the caller dedups).
    fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>);

    /// As [`Router::route`], for routers that also read the message's other properties, given
    /// encoded as the client sent them (decoded only by a router that needs them).
    fn route_with_properties(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        _raw_properties: &bytes::Bytes,
        out: &mut Vec<Destination>,
    ) {
        self.route(routing_key, headers, out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    ConsistentHash,
    /// The deduplication exchange: routes like a fanout after dropping duplicates.
    Deduplication,
    /// The delayed-message exchange: holds messages with `x-delay`, then routes them as the
    /// type in its `x-delayed-type` argument.
    DelayedMessage,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            "x-consistent-hash" => ExchangeKind::ConsistentHash,
            "x-message-deduplication" => ExchangeKind::Deduplication,
            "x-delayed-message" => ExchangeKind::DelayedMessage,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => "x-consistent-hash",
            ExchangeKind::Deduplication => "x-message-deduplication",
            ExchangeKind::DelayedMessage => "x-delayed-message",
        }
    }

    fn router(self, arguments: &FieldTable) -> Box<dyn Router> {
        match self {
            ExchangeKind::DelayedMessage => match delayed_type(arguments) {
                Some(inner) => inner.router(arguments),
                // Checked at declaration; a snapshot edited by hand routes nowhere.
                None => Box::<direct::Direct>::default(),
            },
            ExchangeKind::ConsistentHash => Box::new(consistent_hash::ConsistentHash::new(arguments)),
            ExchangeKind::Direct => Box::<direct::Direct>::default(),
            ExchangeKind::Fanout | ExchangeKind::Deduplication => Box::<fanout::Fanout>::default(),
            ExchangeKind::Topic => Box::<topic::Topic>::default(),
            ExchangeKind::Headers => Box::<headers::Headers>::default(),
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub name: ShortStr,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// Bindings with this exchange as source, by creation sequence (the listing order).
    bindings: BTreeMap<u64, Binding>,
    /// The sequence numbers in `bindings` by destination and routing key (usually one each;
    /// more for bindings differing only in arguments). Binding is idempotent, so every bind
    /// looks its binding up: with a list that was O(n) per bind, and an import of 100,000
    /// bindings to one exchange took minutes.
    index: HashMap<(Destination, ShortStr), Vec<u64>>,
    /// The sequence number of the next binding.
    next_binding: u64,
    router: Box<dyn Router>,
    /// The duplicate cache of a deduplication exchange.
    pub dedup: Option<crate::dedup::DedupCache>,
    /// The held messages of a delayed-message exchange (set by the broker, which owns the
    /// storage).
    pub delayed: Option<crate::delayed::DelayedStore>,
    /// The alternate exchange a policy gives this exchange (its own argument comes first).
    pub policy_alternate_exchange: Option<ShortStr>,
}

/// The routing type of a delayed-message exchange (`x-delayed-type`), if valid.
pub fn delayed_type(arguments: &FieldTable) -> Option<ExchangeKind> {
    let kind = ExchangeKind::parse(arguments.get("x-delayed-type")?.as_str()?)?;
    matches!(kind, ExchangeKind::Direct | ExchangeKind::Fanout | ExchangeKind::Topic | ExchangeKind::Headers)
        .then_some(kind)
}

impl Exchange {
    pub fn new(
        name: ShortStr,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let router = kind.router(&arguments);
        let dedup = match kind {
            // Arguments are checked at declaration; a bad one here (a hand-edited snapshot)
            // falls back to a one-entry cache rather than refusing to start.
            ExchangeKind::Deduplication => Some(
                crate::dedup::DedupCache::from_arguments(&arguments, &name)
                    .unwrap_or_else(|_| crate::dedup::DedupCache::new(1, None)),
            ),
            _ => None,
        };
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: BTreeMap::new(),
            index: HashMap::default(),
            next_binding: 0,
            router,
            dedup,
            delayed: None,
            policy_alternate_exchange: None,
        }
    }

    /// Adds a binding; false when an identical one exists (binding is idempotent).
    pub fn bind(&mut self, binding: Binding) -> bool {
        let key = (binding.destination.clone(), binding.routing_key.clone());
        let seqs = self.index.entry(key).or_default();
        if seqs.iter().any(|seq| self.bindings.get(seq).is_some_and(|b| b.arguments == binding.arguments)) {
            return false;
        }
        let seq = self.next_binding;
        self.next_binding += 1;
        seqs.push(seq);
        self.router.bind(&binding);
        self.bindings.insert(seq, binding);
        true
    }

    /// Removes a binding; false when there was none.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let key = (binding.destination.clone(), binding.routing_key.clone());
        let Some(seqs) = self.index.get_mut(&key) else { return false };
        let Some(pos) =
            seqs.iter().position(|seq| self.bindings.get(seq).is_some_and(|b| b.arguments == binding.arguments))
        else {
            return false;
        };
        let seq = seqs.remove(pos);
        if seqs.is_empty() {
            self.index.remove(&key);
        }
        self.bindings.remove(&seq);
        self.router.unbind(binding);
        true
    }

    /// Removes every binding to `destination`; returns how many there were.
    pub fn unbind_all_to(&mut self, destination: &Destination) -> usize {
        let gone: Vec<Binding> = self.bindings.values().filter(|b| &b.destination == destination).cloned().collect();
        for b in &gone {
            self.unbind(b);
        }
        gone.len()
    }

    /// The bindings with this exchange as source, in the order they were made.
    pub fn bindings(&self) -> impl ExactSizeIterator<Item = &Binding> + '_ {
        self.bindings.values()
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.is_empty()
    }

    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        raw_properties: &bytes::Bytes,
        out: &mut Vec<Destination>,
    ) {
        self.router.route_with_properties(routing_key, headers, raw_properties, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_amqp::FieldValue;

    fn q(n: &str) -> Destination {
        Destination::Queue(ShortStr::from(n))
    }

    fn binding(dest: &str, key: &str) -> Binding {
        Binding { destination: q(dest), routing_key: ShortStr::from(key), arguments: FieldTable::new() }
    }

    fn routed(x: &Exchange, key: &str) -> Vec<Destination> {
        let mut out = Vec::new();
        x.route(key, None, &bytes::Bytes::new(), &mut out);
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn direct_routes_by_exact_key_and_unbinds() {
        let mut x = Exchange::new("d".into(), ExchangeKind::Direct, false, false, false, FieldTable::new());
        assert!(x.bind(binding("a", "error")));
        assert!(!x.bind(binding("a", "error")), "binding twice is idempotent");
        x.bind(binding("a", "warning"));
        x.bind(binding("b", "info"));
        assert_eq!(routed(&x, "error"), vec![q("a")]);
        assert_eq!(routed(&x, "info"), vec![q("b")]);
        assert!(routed(&x, "debug").is_empty());
        assert!(x.unbind(&binding("a", "error")));
        assert!(routed(&x, "error").is_empty());
        assert_eq!(routed(&x, "warning"), vec![q("a")]);
    }

    #[test]
    fn bindings_differing_in_arguments_are_distinct_and_listed_in_creation_order() {
        let mut x = Exchange::new("d".into(), ExchangeKind::Direct, false, false, false, FieldTable::new());
        let mut with_args = binding("a", "k");
        with_args.arguments.insert("x-match", FieldValue::from("all"));
        assert!(x.bind(binding("b", "k")));
        assert!(x.bind(binding("a", "k")));
        assert!(x.bind(with_args.clone()));
        assert!(!x.bind(with_args.clone()), "the same arguments bind once");
        assert!(x.unbind(&binding("b", "k")));
        assert!(!x.unbind(&binding("b", "k")), "unbinding twice finds nothing");
        assert!(x.bind(binding("b", "k")));
        let listed: Vec<Binding> = x.bindings().cloned().collect();
        assert_eq!(listed, vec![binding("a", "k"), with_args.clone(), binding("b", "k")]);
        assert!(x.unbind(&with_args));
        assert_eq!(x.bindings().len(), 2);
    }

    #[test]
    fn fanout_ignores_the_key() {
        let mut x = Exchange::new("f".into(), ExchangeKind::Fanout, false, false, false, FieldTable::new());
        x.bind(binding("a", ""));
        x.bind(binding("b", "whatever"));
        assert_eq!(routed(&x, "anything"), vec![q("a"), q("b")]);
        assert_eq!(x.unbind_all_to(&q("a")), 1);
        assert_eq!(routed(&x, "anything"), vec![q("b")]);
    }
}
