//! The fanout exchange: every bound destination gets every message.

use super::{Binding, Destination, Router};
use warren_amqp::FieldTable;

#[derive(Debug, Default)]
pub struct Fanout {
    /// One entry per binding, so unbinding one of two keys to a queue keeps it routed.
    dests: Vec<Destination>,
}

impl Router for Fanout {
    fn bind(&mut self, b: &Binding) {
        self.dests.push(b.destination.clone());
    }

    fn unbind(&mut self, b: &Binding) {
        if let Some(pos) = self.dests.iter().position(|d| d == &b.destination) {
            self.dests.remove(pos);
        }
    }

    fn route(&self, _routing_key: &str, _headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        out.extend(self.dests.iter().cloned());
    }
}
