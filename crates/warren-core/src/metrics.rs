//! Counters of the broker's work since start, for the Prometheus endpoint.
//!
//! They are plain integers in the [`Broker`](crate::Broker): every change to them already
//! happens under the one broker lock, so an increment is a single add with no atomics and no
//! allocation on the publish path. A scrape copies them out ([`Counters`] is `Copy`).

/// Monotonic counts, named after RabbitMQ's global counters (`rabbitmq_global_*`) and its
/// object churn counters (`rabbitmq_*_opened_total` and the like).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages published by clients (basic.publish with its content).
    pub messages_received: u64,
    /// Messages received on channels in confirm mode.
    pub messages_received_confirm: u64,
    /// Messages that reached at least one queue (or were taken by an exchange that holds them).
    pub messages_routed: u64,
    /// Messages that reached no queue and were dropped (not mandatory).
    pub messages_unroutable_dropped: u64,
    /// Messages that reached no queue and were returned (mandatory).
    pub messages_unroutable_returned: u64,
    /// Deliveries to consumers that acknowledge manually.
    pub delivered_consume_manual_ack: u64,
    /// Deliveries to consumers in no-ack mode.
    pub delivered_consume_auto_ack: u64,
    /// basic.get-ok answers that wait for an acknowledgement.
    pub delivered_get_manual_ack: u64,
    /// basic.get-ok answers in no-ack mode.
    pub delivered_get_auto_ack: u64,
    /// Deliveries (consume or get) of messages that had been delivered before.
    pub redelivered: u64,
    /// Messages acknowledged by consumers (each message of a `multiple` ack counts).
    pub acknowledged: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub channels_opened: u64,
    pub channels_closed: u64,
    /// queue.declare answered (passive declares not counted, as in RabbitMQ).
    pub queues_declared: u64,
    /// Queues that a declare created (not those recovered at start).
    pub queues_created: u64,
    /// Queues deleted: by queue.delete, with their exclusive owner, auto-delete or expiry.
    pub queues_deleted: u64,
    /// Messages that died, by [`DEAD_LETTER_REASONS`] and then without a dead-letter exchange
    /// (`[0]`, RabbitMQ's strategy "disabled": dropped) or with one (`[1]`, "at_most_once").
    pub dead_lettered: [[u64; 2]; 4],
}

/// The reasons a message dies, as x-death and RabbitMQ's counters name them.
pub const DEAD_LETTER_REASONS: [&str; 4] = ["expired", "maxlen", "rejected", "delivery_limit"];

impl Counters {
    /// Adds another set of counts to these.
    pub fn add(&mut self, o: &Counters) {
        let Counters {
            messages_received,
            messages_received_confirm,
            messages_routed,
            messages_unroutable_dropped,
            messages_unroutable_returned,
            delivered_consume_manual_ack,
            delivered_consume_auto_ack,
            delivered_get_manual_ack,
            delivered_get_auto_ack,
            redelivered,
            acknowledged,
            connections_opened,
            connections_closed,
            channels_opened,
            channels_closed,
            queues_declared,
            queues_created,
            queues_deleted,
            dead_lettered,
        } = self;
        *messages_received += o.messages_received;
        *messages_received_confirm += o.messages_received_confirm;
        *messages_routed += o.messages_routed;
        *messages_unroutable_dropped += o.messages_unroutable_dropped;
        *messages_unroutable_returned += o.messages_unroutable_returned;
        *delivered_consume_manual_ack += o.delivered_consume_manual_ack;
        *delivered_consume_auto_ack += o.delivered_consume_auto_ack;
        *delivered_get_manual_ack += o.delivered_get_manual_ack;
        *delivered_get_auto_ack += o.delivered_get_auto_ack;
        *redelivered += o.redelivered;
        *acknowledged += o.acknowledged;
        *connections_opened += o.connections_opened;
        *connections_closed += o.connections_closed;
        *channels_opened += o.channels_opened;
        *channels_closed += o.channels_closed;
        *queues_declared += o.queues_declared;
        *queues_created += o.queues_created;
        *queues_deleted += o.queues_deleted;
        for (mine, theirs) in dead_lettered.iter_mut().zip(o.dead_lettered.iter()) {
            for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                *m += t;
            }
        }
    }

    /// Counts one message that died for `reason` (one of [`DEAD_LETTER_REASONS`]).
    pub fn count_dead_lettered(&mut self, reason: &str, to_exchange: bool) {
        if let Some(i) = DEAD_LETTER_REASONS.iter().position(|r| *r == reason) {
            self.dead_lettered[i][usize::from(to_exchange)] += 1;
        }
    }

    /// Every delivery, by consume or get, with or without acknowledgement.
    pub fn messages_delivered(&self) -> u64 {
        self.delivered_consume_manual_ack
            + self.delivered_consume_auto_ack
            + self.delivered_get_manual_ack
            + self.delivered_get_auto_ack
    }
}
