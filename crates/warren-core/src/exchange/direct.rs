//! The direct exchange: a message goes to the bindings whose key equals its routing key.

use super::{Binding, Destination, Router};
use foldhash::HashMap;
use warren_amqp::{FieldTable, ShortStr};

#[derive(Debug, Default)]
pub struct Direct {
    by_key: HashMap<ShortStr, Vec<Destination>>,
}

impl Router for Direct {
    fn bind(&mut self, b: &Binding) {
        let dests = self.by_key.entry(b.routing_key.clone()).or_default();
        // Bindings differing only in arguments route the same; keep one destination entry each.
        if !dests.contains(&b.destination) {
            dests.push(b.destination.clone());
        }
    }

    fn unbind(&mut self, b: &Binding) {
        if let Some(dests) = self.by_key.get_mut(b.routing_key.as_str()) {
            dests.retain(|d| d != &b.destination);
            if dests.is_empty() {
                self.by_key.remove(b.routing_key.as_str());
            }
        }
    }

    fn route(&self, routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        if let Some(dests) = self.by_key.get(routing_key) {
            out.extend(dests.iter().cloned());
        }
    }
}
