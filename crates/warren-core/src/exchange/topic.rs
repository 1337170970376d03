//! The topic exchange: binding keys are dot-separated words where `*` stands for exactly one
//! word and `#` for zero or more.
//!
//! Bindings live in a trie keyed by word, so routing costs the length of the routing key times
//! the wildcards met, not the number of bindings.

use super::{Binding, Destination, Router};
use crate::hash::HashMap;
use warren_amqp::FieldTable;

#[derive(Debug, Default)]
struct Node {
    words: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    /// One entry per binding ending here.
    dests: Vec<Destination>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.dests.is_empty() && self.words.is_empty() && self.star.is_none() && self.hash.is_none()
    }

    fn child_mut(&mut self, word: &str) -> &mut Node {
        match word {
            "*" => self.star.get_or_insert_with(Default::default),
            "#" => self.hash.get_or_insert_with(Default::default),
            w => self.words.entry(w.into()).or_default(),
        }
    }

    /// Removes one entry for `dest` under `words`; prunes nodes left empty.
    fn remove(&mut self, words: &[&str], dest: &Destination) {
        let Some((first, rest)) = words.split_first() else {
            if let Some(pos) = self.dests.iter().position(|d| d == dest) {
                self.dests.remove(pos);
            }
            return;
        };
        match *first {
            "*" | "#" => {
                let slot = if *first == "*" { &mut self.star } else { &mut self.hash };
                if let Some(child) = slot {
                    child.remove(rest, dest);
                    if child.is_empty() {
                        *slot = None;
                    }
                }
            }
            w => {
                if let Some(child) = self.words.get_mut(w) {
                    child.remove(rest, dest);
                    if child.is_empty() {
                        self.words.remove(w);
                    }
                }
            }
        }
    }

    fn collect(&self, words: &[&str], out: &mut Vec<Destination>) {
        if let Some(hash) = &self.hash {
            // `#` swallows zero or more of the remaining words.
            for skip in 0..=words.len() {
                hash.collect(&words[skip..], out);
            }
        }
        let Some((first, rest)) = words.split_first() else {
            out.extend(self.dests.iter().cloned());
            return;
        };
        if let Some(child) = self.words.get(*first) {
            child.collect(rest, out);
        }
        if let Some(star) = &self.star {
            star.collect(rest, out);
        }
    }
}

#[derive(Debug, Default)]
pub struct Topic {
    root: Node,
}

fn split(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

impl Router for Topic {
    fn bind(&mut self, b: &Binding) {
        let mut node = &mut self.root;
        for word in split(&b.routing_key) {
            node = node.child_mut(word);
        }
        node.dests.push(b.destination.clone());
    }

    fn unbind(&mut self, b: &Binding) {
        self.root.remove(&split(&b.routing_key), &b.destination);
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        self.root.collect(&split(routing_key), out);
    }
}

/// The plain definition of a topic match, used as the reference model in tests.
pub fn matches_reference(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && go(rest, &k[1..]),
        }
    }
    go(&split(pattern), &split(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use warren_amqp::ShortStr;

    fn route_one(pattern: &str, key: &str) -> bool {
        let mut t = Topic::default();
        t.bind(&Binding {
            destination: Destination::Queue(ShortStr::from("q")),
            routing_key: pattern.into(),
            arguments: FieldTable::new(),
        });
        let mut out = Vec::new();
        t.route(key, None, &mut out);
        !out.is_empty()
    }

    #[test]
    fn tutorial_examples() {
        assert!(route_one("*.orange.*", "quick.orange.rabbit"));
        assert!(route_one("*.*.rabbit", "quick.orange.rabbit"));
        assert!(route_one("lazy.#", "lazy.orange.elephant"));
        assert!(route_one("lazy.#", "lazy"));
        assert!(!route_one("*.orange.*", "quick.brown.fox"));
        assert!(!route_one("*.orange.*", "orange"));
        assert!(!route_one("*.orange.*", "quick.orange.new.rabbit"));
        assert!(route_one("#", "anything.at.all"));
        assert!(route_one("#", ""));
        assert!(route_one("a.#.b", "a.b"));
        assert!(route_one("a.#.b", "a.x.y.b"));
        assert!(!route_one("a.*.b", "a.b"));
        assert!(route_one("", ""));
    }

    #[test]
    fn unbind_prunes_and_keeps_others() {
        let mut t = Topic::default();
        let b = |k: &str, q: &str| Binding {
            destination: Destination::Queue(ShortStr::from(q)),
            routing_key: k.into(),
            arguments: FieldTable::new(),
        };
        t.bind(&b("a.*", "q1"));
        t.bind(&b("a.#", "q2"));
        t.unbind(&b("a.*", "q1"));
        let mut out = Vec::new();
        t.route("a.x", None, &mut out);
        assert_eq!(out, vec![Destination::Queue(ShortStr::from("q2"))]);
        t.unbind(&b("a.#", "q2"));
        assert!(t.root.is_empty());
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string()), Just("".to_string())]
    }

    fn pattern_word() -> impl Strategy<Value = String> {
        prop_oneof![word(), Just("*".to_string()), Just("#".to_string())]
    }

    proptest! {
        #[test]
        fn topic_matcher_prop(
            patterns in prop::collection::vec(prop::collection::vec(pattern_word(), 1..5), 1..6),
            key in prop::collection::vec(word(), 1..6),
        ) {
            let key = key.join(".");
            let mut t = Topic::default();
            let patterns: Vec<String> = patterns.into_iter().map(|p| p.join(".")).collect();
            for (i, p) in patterns.iter().enumerate() {
                t.bind(&Binding { destination: Destination::Queue(ShortStr::from(format!("q{i}"))), routing_key: p.as_str().into(), arguments: FieldTable::new() });
            }
            let mut out = Vec::new();
            t.route(&key, None, &mut out);
            out.sort();
            out.dedup();
            let expected: Vec<Destination> = patterns.iter().enumerate()
                .filter(|(_, p)| matches_reference(p, &key))
                .map(|(i, _)| Destination::Queue(ShortStr::from(format!("q{i}"))))
                .collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            prop_assert_eq!(out, expected);
        }
    }
}
