//! Which queues a run uses, how they are bound, what each producer publishes with, and so which
//! queues each producer's messages reach (for loss accounting).
//!
//! Producer `p` is assigned queue `p % queues`, consumer `c` queue `c % queues`. Each queue has a
//! key: `--routing-key` when given, else the queue's name. The default exchange routes by name;
//! a direct or topic exchange binds each queue with its key (plus `--bindings-per-queue` keys no
//! message matches); fanout binds with ""; headers binds with `x-match: all` on one header
//! carrying the key. A producer publishes with its queue's key, so its messages reach its own
//! queue, or every queue when all share one key (`--routing-key`, or a fanout exchange).

use crate::args::{ExchangeKind, PerfArgs};
use warren_amqp::{FieldTable, FieldValue};

/// The header a headers exchange matches on.
pub const HEADERS_KEY: &str = "warren-perf-key";

#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub kind: ExchangeKind,
    pub routing_key: Option<String>,
    pub bindings_per_queue: u32,
    /// Queue names once declared (server-named queues get theirs from queue.declare-ok).
    pub queues: Vec<String>,
}

/// The name to declare queue `i` of `n` with: "" (server-named) without `--queue`, the name
/// itself for one queue, `<name>-1..n` for several.
pub fn queue_name(args: &PerfArgs, i: usize) -> String {
    match &args.queue {
        None => String::new(),
        Some(q) if args.queues == 1 => q.clone(),
        Some(q) => format!("{q}-{}", i + 1),
    }
}

/// A binding of a queue to the run's exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl Topology {
    pub fn new(args: &PerfArgs, queues: Vec<String>) -> Topology {
        Topology {
            exchange: args.exchange.clone(),
            kind: args.kind,
            routing_key: args.routing_key.clone(),
            bindings_per_queue: args.bindings_per_queue,
            queues,
        }
    }

    pub fn queue_of_producer(&self, p: usize) -> usize {
        p % self.queues.len()
    }

    pub fn queue_of_consumer(&self, c: usize) -> usize {
        c % self.queues.len()
    }

    fn key_of_queue(&self, q: usize) -> String {
        match &self.routing_key {
            Some(k) => k.clone(),
            None => self.queues[q].clone(),
        }
    }

    /// The routing key producer `p` publishes with.
    pub fn publish_key(&self, p: usize) -> String {
        let q = self.queue_of_producer(p);
        if self.exchange.is_empty() {
            return self.queues[q].clone();
        }
        match self.kind {
            ExchangeKind::Fanout => self.routing_key.clone().unwrap_or_default(),
            // Headers exchanges ignore the key; the header carries it.
            ExchangeKind::Headers => String::new(),
            ExchangeKind::Direct | ExchangeKind::Topic => self.key_of_queue(q),
        }
    }

    /// The headers producer `p` sets (headers exchange only).
    pub fn publish_headers(&self, p: usize) -> Option<FieldTable> {
        if self.exchange.is_empty() || self.kind != ExchangeKind::Headers {
            return None;
        }
        let mut h = FieldTable::new();
        h.insert(HEADERS_KEY, FieldValue::from(self.key_of_queue(self.queue_of_producer(p)).as_str()));
        Some(h)
    }

    /// The bindings of queue `q` to the run's exchange.
    pub fn bindings(&self, q: usize) -> Vec<Binding> {
        if self.exchange.is_empty() {
            return Vec::new();
        }
        let key = self.key_of_queue(q);
        match self.kind {
            ExchangeKind::Fanout => vec![Binding { routing_key: String::new(), arguments: FieldTable::new() }],
            ExchangeKind::Headers => {
                let mut a = FieldTable::new();
                a.insert("x-match", FieldValue::from("all"));
                a.insert(HEADERS_KEY, FieldValue::from(key.as_str()));
                vec![Binding { routing_key: String::new(), arguments: a }]
            }
            ExchangeKind::Direct | ExchangeKind::Topic => {
                let mut v = vec![Binding { routing_key: key.clone(), arguments: FieldTable::new() }];
                for i in 0..self.bindings_per_queue {
                    // Never matched by a publish: a direct key with a suffix, a topic pattern
                    // that needs one more word than the published key has.
                    let extra = match self.kind {
                        ExchangeKind::Topic => format!("{key}.x{i}.*"),
                        _ => format!("{key}.x{i}"),
                    };
                    v.push(Binding { routing_key: extra, arguments: FieldTable::new() });
                }
                v
            }
        }
    }

    /// The queues producer `p`'s messages reach.
    pub fn routes(&self, p: usize) -> Vec<usize> {
        let all_share_a_key =
            !self.exchange.is_empty() && (self.kind == ExchangeKind::Fanout || self.routing_key.is_some());
        if all_share_a_key {
            (0..self.queues.len()).collect()
        } else {
            vec![self.queue_of_producer(p)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    fn topo(args: &[&str], names: &[&str]) -> Topology {
        let cli = Cli::try_parse_from(std::iter::once("warren-perf").chain(args.iter().copied())).expect("parses");
        Topology::new(&cli.perf, names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn default_exchange_routes_by_queue_name() {
        let t = topo(&["-x", "3", "--queues", "2"], &["a", "b"]);
        assert_eq!(t.publish_key(0), "a");
        assert_eq!(t.publish_key(1), "b");
        assert_eq!(t.publish_key(2), "a");
        assert_eq!(t.routes(2), vec![0]);
        assert!(t.bindings(0).is_empty());
        assert_eq!(t.queue_of_consumer(3), 1);
    }

    #[test]
    fn queue_names() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("warren-perf").chain(args.iter().copied())).expect("parses").perf
        };
        assert_eq!(queue_name(&parse(&[]), 0), "");
        assert_eq!(queue_name(&parse(&["-u", "q"]), 0), "q");
        assert_eq!(queue_name(&parse(&["-u", "q", "--queues", "3"]), 2), "q-3");
    }

    #[test]
    fn fanout_reaches_every_queue() {
        let t = topo(&["-e", "f", "-t", "fanout", "--queues", "3"], &["a", "b", "c"]);
        assert_eq!(t.routes(0), vec![0, 1, 2]);
        assert_eq!(t.publish_key(0), "");
        assert_eq!(t.bindings(1), vec![Binding { routing_key: String::new(), arguments: FieldTable::new() }]);
    }

    #[test]
    fn topic_with_extra_bindings_that_never_match() {
        let t = topo(&["-e", "t", "-t", "topic", "--queues", "2", "--bindings-per-queue", "2"], &["a", "b"]);
        let keys: Vec<String> = t.bindings(1).into_iter().map(|b| b.routing_key).collect();
        assert_eq!(keys, vec!["b", "b.x0.*", "b.x1.*"]);
        assert_eq!(t.publish_key(1), "b");
        assert_eq!(t.routes(1), vec![1]);
    }

    #[test]
    fn shared_routing_key_reaches_every_queue() {
        let t = topo(&["-e", "d", "-k", "k", "--queues", "2"], &["a", "b"]);
        assert_eq!(t.routes(0), vec![0, 1]);
        assert_eq!(t.bindings(0)[0].routing_key, "k");
        assert_eq!(t.publish_key(1), "k");
    }

    #[test]
    fn headers_match_on_one_header() {
        let t = topo(&["-e", "h", "-t", "headers", "--queues", "2"], &["a", "b"]);
        let b = &t.bindings(1)[0];
        assert_eq!(b.arguments.get("x-match").and_then(|v| v.as_str()), Some("all"));
        assert_eq!(b.arguments.get(HEADERS_KEY).and_then(|v| v.as_str()), Some("b"));
        let h = t.publish_headers(1).expect("headers");
        assert_eq!(h.get(HEADERS_KEY).and_then(|v| v.as_str()), Some("b"));
        assert_eq!(t.routes(1), vec![1]);
        assert!(topo(&[], &["a"]).publish_headers(0).is_none());
    }
}
