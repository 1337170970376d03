//! The direct exchange: a message goes to the bindings whose key equals its routing key.

use super::{Binding, Destination, Router};
use crate::hash::HashMap;
use warren_amqp::{FieldTable, ShortStr};

#[derive(Debug, Default)]
pub struct Direct {
    /// Each key's destinations, with how many bindings (differing in arguments) lead there:
    /// unbinding one of them keeps the destination routed.
    by_key: HashMap<ShortStr, Vec<(Destination, u32)>>,
}

impl Router for Direct {
    fn bind(&mut self, b: &Binding) {
        let dests = self.by_key.entry(b.routing_key.clone()).or_default();
        // Bindings differing only in arguments route the same: one entry, counted.
        match dests.iter_mut().find(|(d, _)| d == &b.destination) {
            Some((_, count)) => *count += 1,
            None => dests.push((b.destination.clone(), 1)),
        }
    }

    fn unbind(&mut self, b: &Binding) {
        if let Some(dests) = self.by_key.get_mut(b.routing_key.as_str()) {
            if let Some(pos) = dests.iter().position(|(d, _)| d == &b.destination) {
                dests[pos].1 -= 1;
                if dests[pos].1 == 0 {
                    dests.remove(pos);
                }
            }
            if dests.is_empty() {
                self.by_key.remove(b.routing_key.as_str());
            }
        }
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        if let Some(dests) = self.by_key.get(routing_key) {
            out.extend(dests.iter().map(|(d, _)| d.clone()));
        }
    }
}
