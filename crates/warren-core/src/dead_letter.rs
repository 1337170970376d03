//! Dead-lettering: the message a queue sends to its dead-letter exchange, with RabbitMQ's
//! `x-death` history, and the rule that breaks dead-letter cycles.

use crate::message::{Message, MessageRef};
use warren_amqp::{FieldTable, FieldValue, ShortStr};

fn text(s: &str) -> FieldValue {
    FieldValue::from(s)
}

fn death_field<'a>(entry: &'a FieldValue, key: &str) -> Option<&'a FieldValue> {
    match entry {
        FieldValue::Table(t) => t.get(key),
        _ => None,
    }
}

/// The message as it leaves `queue` for `reason` (rejected, expired, maxlen, delivery_limit):
/// published to `dlx` with `routing_key`, its `expiration` removed (kept in the x-death entry as
/// `original-expiration`), and its `x-death` history updated: the entry for this queue and
/// reason has its count raised and moves to the front, or a new entry is put in front. The
/// `x-first-death-*` headers are set once, `x-last-death-*` every time. With `drop_cc` (the
/// queue has a dead-letter routing key) the `CC` and `BCC` headers are removed, as RabbitMQ does.
pub fn dead_lettered(
    msg: &Message,
    dlx: &ShortStr,
    routing_key: &ShortStr,
    queue: &str,
    reason: &str,
    now_ms: u64,
    drop_cc: bool,
) -> MessageRef {
    let mut props = msg.decode_properties();
    let mut headers = props.headers.take().unwrap_or_default();
    let original_expiration = props.expiration.take();
    let mut deaths: Vec<FieldValue> = match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| {
        death_field(d, "queue").and_then(FieldValue::as_str) == Some(queue)
            && death_field(d, "reason").and_then(FieldValue::as_str) == Some(reason)
    });
    let entry = match same {
        Some(i) => {
            let mut entry = deaths.remove(i);
            if let FieldValue::Table(t) = &mut entry {
                let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
                t.insert("count", FieldValue::I64(count + 1));
            }
            entry
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", text(reason));
            t.insert("queue", text(queue));
            t.insert("time", FieldValue::Timestamp(now_ms / 1000));
            t.insert("exchange", text(&msg.exchange));
            let mut keys = vec![text(&msg.routing_key)];
            keys.extend(header_keys(msg, "CC").iter().map(|k| text(k)));
            t.insert("routing-keys", FieldValue::Array(keys));
            if let Some(e) = &original_expiration {
                t.insert("original-expiration", text(e));
            }
            FieldValue::Table(t)
        }
    };
    deaths.insert(0, entry);
    headers.insert("x-death", FieldValue::Array(deaths));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", text(reason));
        headers.insert("x-first-death-queue", text(queue));
        headers.insert("x-first-death-exchange", text(&msg.exchange));
    }
    headers.insert("x-last-death-reason", text(reason));
    headers.insert("x-last-death-queue", text(queue));
    headers.insert("x-last-death-exchange", text(&msg.exchange));
    if drop_cc {
        headers.0.retain(|(k, _)| k.as_str() != "CC" && k.as_str() != "BCC");
    }
    props.headers = Some(headers);
    let raw = props.to_bytes();
    Message::new(dlx.clone(), routing_key.clone(), props, raw, msg.body.clone())
}

/// The routing keys of a message's `CC` header.
pub fn cc_keys(msg: &Message) -> Vec<String> {
    header_keys(msg, "CC")
}

/// The routing keys in a `CC` or `BCC` header (an array of strings, or one string).
fn header_keys(msg: &Message, name: &str) -> Vec<String> {
    match msg.properties.headers.as_ref().and_then(|h| h.get(name)) {
        Some(FieldValue::Array(items)) => items.iter().filter_map(FieldValue::as_str).map(str::to_owned).collect(),
        Some(v) => v.as_str().map(|s| vec![s.to_owned()]).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Sender-selected distribution: the extra routing keys of a message's `CC` and `BCC`
/// headers, and the message to enqueue (without its `BCC` header, which no consumer sees).
pub fn sender_selected(msg: &MessageRef) -> (Vec<String>, MessageRef) {
    let Some(headers) = msg.properties.headers.as_ref() else { return (Vec::new(), msg.clone()) };
    if headers.get("CC").is_none() && headers.get("BCC").is_none() {
        return (Vec::new(), msg.clone());
    }
    let mut keys = header_keys(msg, "CC");
    keys.extend(header_keys(msg, "BCC"));
    if headers.get("BCC").is_none() {
        return (keys, msg.clone());
    }
    let mut props = msg.decode_properties();
    if let Some(h) = props.headers.as_mut() {
        h.0.retain(|(k, _)| k.as_str() != "BCC");
    }
    let raw = props.to_bytes();
    (keys, Message::new(msg.exchange.clone(), msg.routing_key.clone(), props, raw, msg.body.clone()))
}

/// RabbitMQ's cycle rule: a message that would be dead-lettered into a queue it already died
/// in is dropped for that queue, unless a death in its history was a client's rejection (then
/// the cycle is the application's doing and goes on).
pub fn is_cycle(msg: &Message, target_queue: &str) -> bool {
    let Some(FieldValue::Array(deaths)) = msg.properties.headers.as_ref().and_then(|h| h.get("x-death")) else {
        return false;
    };
    let seen = deaths.iter().any(|d| death_field(d, "queue").and_then(FieldValue::as_str) == Some(target_queue));
    let rejected = deaths.iter().any(|d| death_field(d, "reason").and_then(FieldValue::as_str) == Some("rejected"));
    seen && !rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use warren_amqp::BasicProperties;

    fn msg() -> MessageRef {
        let props = BasicProperties { expiration: Some("500".into()), ..Default::default() };
        Message::new("ex".into(), "rk".into(), props.clone(), props.to_bytes(), Bytes::from_static(b"x"))
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m.properties.headers.as_ref().and_then(|h| h.get("x-death")) {
            Some(FieldValue::Array(a)) => a
                .iter()
                .map(|v| match v {
                    FieldValue::Table(t) => t.clone(),
                    _ => panic!("entry not a table"),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn first_death_records_everything() {
        let d = dead_lettered(&msg(), &"dlx".into(), &"dead".into(), "q", "expired", 5_000, false);
        assert_eq!(d.exchange, "dlx");
        assert_eq!(d.routing_key, "dead");
        assert!(d.decode_properties().expiration.is_none());
        let x = deaths(&d);
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(x[0].get("reason").and_then(FieldValue::as_str), Some("expired"));
        assert_eq!(x[0].get("queue").and_then(FieldValue::as_str), Some("q"));
        assert_eq!(x[0].get("exchange").and_then(FieldValue::as_str), Some("ex"));
        assert_eq!(x[0].get("time"), Some(&FieldValue::Timestamp(5)));
        assert_eq!(x[0].get("original-expiration").and_then(FieldValue::as_str), Some("500"));
        let h = d.properties.headers.as_ref().expect("headers");
        assert_eq!(h.get("x-first-death-reason").and_then(FieldValue::as_str), Some("expired"));
        assert_eq!(h.get("x-last-death-queue").and_then(FieldValue::as_str), Some("q"));
    }

    #[test]
    fn same_queue_and_reason_counts_up_and_moves_first() {
        let a = dead_lettered(&msg(), &"dlx".into(), &"k".into(), "q1", "rejected", 0, false);
        let b = dead_lettered(&a, &"dlx".into(), &"k".into(), "q2", "rejected", 0, false);
        let c = dead_lettered(&b, &"dlx".into(), &"k".into(), "q1", "rejected", 0, false);
        let x = deaths(&c);
        assert_eq!(x.len(), 2);
        assert_eq!(x[0].get("queue").and_then(FieldValue::as_str), Some("q1"));
        assert_eq!(x[0].get("count"), Some(&FieldValue::I64(2)));
        let h = c.properties.headers.as_ref().expect("headers");
        assert_eq!(h.get("x-first-death-queue").and_then(FieldValue::as_str), Some("q1"));
        assert_eq!(h.get("x-last-death-queue").and_then(FieldValue::as_str), Some("q1"));
    }

    #[test]
    fn automatic_cycles_break_rejections_do_not() {
        let expired = dead_lettered(&msg(), &"dlx".into(), &"k".into(), "q", "expired", 0, false);
        assert!(is_cycle(&expired, "q"));
        assert!(!is_cycle(&expired, "other"));
        let rejected = dead_lettered(&msg(), &"dlx".into(), &"k".into(), "q", "rejected", 0, false);
        assert!(!is_cycle(&rejected, "q"));
    }
}
