//! A queue: ready messages in order, the consumers attached, and counters.
//!
//! Invariants: `ready` is ordered by `seq`; a message is either in `ready` or unacked on exactly
//! one channel (counted in `unacked`), never both. Requeued messages go back to their original
//! place by `seq`, so the queue order survives a consumer's death.

use crate::message::MessageRef;
use crate::ConnId;
use std::collections::VecDeque;
use warren_amqp::{FieldTable, ShortStr};

#[derive(Debug, Clone)]
pub struct Queued {
    pub seq: u64,
    pub msg: MessageRef,
    pub redelivered: bool,
}

/// Which consumer: connection, channel and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerKey {
    pub conn: ConnId,
    pub channel: u16,
    pub tag: ShortStr,
}

#[derive(Debug)]
pub struct Queue {
    pub name: ShortStr,
    pub durable: bool,
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    ready: VecDeque<Queued>,
    next_seq: u64,
    pub unacked: usize,
    pub consumers: Vec<ConsumerKey>,
    /// Index into `consumers` where the next round-robin search starts.
    pub rr: usize,
    /// An auto-delete queue is deleted when its last consumer goes, but only once it had one.
    pub had_consumer: bool,
    /// Set while a consumer holds the queue with basic.consume exclusive=true.
    pub exclusive_consumer: bool,
    pub ready_bytes: usize,
}

impl Queue {
    pub fn new(
        name: ShortStr,
        durable: bool,
        exclusive_owner: Option<ConnId>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Self {
        Queue {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            ready: VecDeque::new(),
            next_seq: 0,
            unacked: 0,
            consumers: Vec::new(),
            rr: 0,
            had_consumer: false,
            exclusive_consumer: false,
            ready_bytes: 0,
        }
    }

    pub fn message_count(&self) -> u32 {
        self.ready.len().min(u32::MAX as usize) as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    pub fn push(&mut self, msg: MessageRef) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += msg.body.len();
        self.ready.push_back(Queued { seq, msg, redelivered: false });
    }

    pub fn pop(&mut self) -> Option<Queued> {
        let q = self.ready.pop_front()?;
        self.ready_bytes -= q.msg.body.len();
        Some(q)
    }

    /// Puts a message taken by a consumer back at its place, marked redelivered.
    pub fn requeue(&mut self, seq: u64, msg: MessageRef) {
        debug_assert!(self.unacked > 0, "requeue of a message the queue does not count as unacked");
        self.unacked = self.unacked.saturating_sub(1);
        self.ready_bytes += msg.body.len();
        let at = self.ready.partition_point(|q| q.seq < seq);
        self.ready.insert(at, Queued { seq, msg, redelivered: true });
    }

    /// Drops every ready message; returns how many there were.
    pub fn purge(&mut self) -> u32 {
        let n = self.message_count();
        self.ready.clear();
        self.ready_bytes = 0;
        n
    }

    pub fn remove_consumer(&mut self, key: &ConsumerKey) -> bool {
        let Some(pos) = self.consumers.iter().position(|c| c == key) else { return false };
        self.consumers.remove(pos);
        if self.rr > pos {
            self.rr -= 1;
        }
        self.exclusive_consumer = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;

    fn msg(body: &'static str) -> MessageRef {
        Message::new(
            "".into(),
            "q".into(),
            Default::default(),
            Bytes::from_static(&[0, 0]),
            Bytes::from_static(body.as_bytes()),
        )
    }

    #[test]
    fn requeue_restores_original_order() {
        let mut q = Queue::new("q".into(), false, None, false, FieldTable::new());
        for b in ["1", "2", "3", "4"] {
            q.push(msg(b));
        }
        let a = q.pop().expect("1");
        let b = q.pop().expect("2");
        q.unacked = 2;
        q.requeue(b.seq, b.msg);
        q.requeue(a.seq, a.msg);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|m| (m.msg.body.clone(), m.redelivered)).collect();
        assert_eq!(
            order,
            vec![
                (Bytes::from_static(b"1"), true),
                (Bytes::from_static(b"2"), true),
                (Bytes::from_static(b"3"), false),
                (Bytes::from_static(b"4"), false)
            ]
        );
        assert_eq!(q.ready_bytes, 0);
    }
}
