//! The consistent-hash exchange (`x-consistent-hash`, as RabbitMQ's plugin defines it): each
//! binding's routing key is a weight, the number of points its destination gets on a hash
//! ring; a message goes to the one destination owning the first point at or after the hash
//! of its routing key, or of the header named by the `hash-header` exchange argument, or of the
//! property named by `hash-property` (`message_id`, `correlation_id` or `timestamp`; the header
//! wins when both are given). The same key always reaches the same queue while the bindings
//! stay; shares follow the weights. A message without the header or property is unroutable.

use super::{Binding, Destination, Router};
use std::hash::{Hash, Hasher};
use warren_amqp::{FieldTable, FieldValue};

/// Points a binding weight may add to the ring: a bound on memory per binding.
pub const WEIGHT_MAX: u32 = 1000;

#[derive(Debug, Default)]
pub struct ConsistentHash {
    /// (point, destination), sorted by point.
    ring: Vec<(u64, Destination)>,
    hash_header: Option<String>,
    hash_property: Option<HashProperty>,
}

/// The message properties `hash-property` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashProperty {
    MessageId,
    CorrelationId,
    Timestamp,
}

fn hash_of(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: stable within a build, which is all a ring rebuilt at start
    // needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn weight(b: &Binding) -> u32 {
    b.routing_key.parse::<u32>().unwrap_or(1).clamp(1, WEIGHT_MAX)
}

fn point(dest: &Destination, i: u32) -> u64 {
    let mut key = Vec::with_capacity(dest.name().len() + 6);
    key.extend_from_slice(dest.name().as_bytes());
    key.push(matches!(dest, Destination::Queue(_)) as u8);
    key.extend_from_slice(&i.to_be_bytes());
    hash_of(&key)
}

impl ConsistentHash {
    pub fn new(arguments: &FieldTable) -> Self {
        let hash_header = arguments.get("hash-header").and_then(FieldValue::as_str).map(str::to_owned);
        let hash_property = match arguments.get("hash-property").and_then(FieldValue::as_str) {
            Some("message_id") => Some(HashProperty::MessageId),
            Some("correlation_id") => Some(HashProperty::CorrelationId),
            Some("timestamp") => Some(HashProperty::Timestamp),
            _ => None,
        };
        ConsistentHash { ring: Vec::new(), hash_header, hash_property }
    }

    /// The destination owning the first point at or after `key_hash`.
    fn owner(&self, key_hash: u64, out: &mut Vec<Destination>) {
        if self.ring.is_empty() {
            return;
        }
        let at = self.ring.partition_point(|(p, _)| *p < key_hash);
        let (_, dest) = &self.ring[at % self.ring.len()];
        out.push(dest.clone());
    }
}

impl Router for ConsistentHash {
    fn bind(&mut self, b: &Binding) {
        for i in 0..weight(b) {
            let p = point(&b.destination, i);
            let at = self.ring.partition_point(|(q, _)| *q < p);
            self.ring.insert(at, (p, b.destination.clone()));
        }
    }

    fn unbind(&mut self, b: &Binding) {
        let points: Vec<u64> = (0..weight(b)).map(|i| point(&b.destination, i)).collect();
        for p in points {
            if let Some(pos) = self.ring.iter().position(|(q, d)| *q == p && d == &b.destination) {
                self.ring.remove(pos);
            }
        }
    }

    fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let key_hash = match &self.hash_header {
            Some(name) => match headers.and_then(|h| h.get(name)) {
                Some(FieldValue::LongStr(b)) => hash_of(b),
                Some(other) => hash_of(format!("{other:?}").as_bytes()),
                // No such header: unroutable, as in the plugin.
                None => return,
            },
            None => hash_of(routing_key.as_bytes()),
        };
        self.owner(key_hash, out);
    }

    fn route_with_properties(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        raw_properties: &bytes::Bytes,
        out: &mut Vec<Destination>,
    ) {
        let Some(property) = self.hash_property.filter(|_| self.hash_header.is_none()) else {
            return self.route(routing_key, headers, out);
        };
        // Decoded only here: the broker keeps few properties decoded.
        let Ok(props) = warren_amqp::BasicProperties::decode(raw_properties.clone()) else { return };
        let key_hash = match property {
            HashProperty::MessageId => props.message_id.map(|v| hash_of(v.as_bytes())),
            HashProperty::CorrelationId => props.correlation_id.map(|v| hash_of(v.as_bytes())),
            HashProperty::Timestamp => props.timestamp.map(|t| hash_of(&t.to_be_bytes())),
        };
        // No such property: unroutable, as in the plugin.
        if let Some(h) = key_hash {
            self.owner(h, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_amqp::ShortStr;

    fn bind(r: &mut ConsistentHash, q: &str, w: &str) -> Binding {
        let b = Binding {
            destination: Destination::Queue(ShortStr::from(q)),
            routing_key: ShortStr::from(w),
            arguments: FieldTable::new(),
        };
        r.bind(&b);
        b
    }

    fn route(r: &ConsistentHash, key: &str) -> Destination {
        let mut out = Vec::new();
        r.route(key, None, &mut out);
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn same_key_same_queue_and_shares_follow_weights() {
        let mut r = ConsistentHash::default();
        bind(&mut r, "a", "1");
        bind(&mut r, "b", "3");
        let mut counts = std::collections::HashMap::new();
        for i in 0..20_000 {
            let key = format!("key-{i}");
            let d = route(&r, &key);
            assert_eq!(route(&r, &key), d);
            *counts.entry(d.name().to_string()).or_insert(0) += 1;
        }
        let (a, b) = (counts["a"], counts["b"]);
        assert!(b > 2 * a, "weight 3 should get clearly more than weight 1: a={a} b={b}");
    }

    #[test]
    fn unbinding_moves_only_that_queues_keys() {
        let mut r = ConsistentHash::default();
        bind(&mut r, "a", "5");
        let gone = bind(&mut r, "b", "5");
        bind(&mut r, "c", "5");
        let before: Vec<Destination> = (0..1000).map(|i| route(&r, &format!("k{i}"))).collect();
        r.unbind(&gone);
        for (i, d) in before.iter().enumerate() {
            if d.name() != "b" {
                assert_eq!(&route(&r, &format!("k{i}")), d);
            }
        }
    }

    #[test]
    fn hash_property_routes_by_the_named_property_and_not_without_it() {
        use warren_amqp::BasicProperties;
        let mut args = FieldTable::new();
        args.insert("hash-property", FieldValue::from("message_id"));
        let mut r = ConsistentHash::new(&args);
        bind(&mut r, "a", "1");
        bind(&mut r, "b", "1");
        let raw =
            |id: Option<&str>| BasicProperties { message_id: id.map(ShortStr::from), ..Default::default() }.to_bytes();
        let route = |id: Option<&str>, key: &str| {
            let mut out = Vec::new();
            r.route_with_properties(key, None, &raw(id), &mut out);
            out
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let id = format!("m-{i}");
            let first = route(Some(&id), "k1");
            assert_eq!(first.len(), 1);
            // The routing key does not matter, the message id does.
            assert_eq!(route(Some(&id), "another key"), first);
            seen.insert(first[0].name().to_string());
        }
        assert_eq!(seen.len(), 2, "both queues get message ids");
        assert!(route(None, "k1").is_empty(), "no message_id: unroutable");
    }
}
