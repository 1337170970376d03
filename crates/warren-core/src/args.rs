//! Queue arguments (`x-…`), parsed and checked once at declaration.
//!
//! A value of the wrong type or range closes the channel with 406, as RabbitMQ does; unknown
//! `x-` arguments are kept (and compared on redeclaration when RabbitMQ compares them) but
//! otherwise ignored.

use warren_amqp::{FieldTable, FieldValue, ProtocolError, ReplyCode, ShortStr};

/// What a queue does when a publish would take it past a length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (and dead-letter) the oldest ready messages.
    #[default]
    DropHead,
    /// Refuse the new message; publishers in confirm mode get basic.nack.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    /// Accepted with single-node semantics: always durable, never exclusive, delivery limit.
    Quorum,
}

/// RabbitMQ's default delivery limit for quorum queues (4.0 and later).
pub const QUORUM_DELIVERY_LIMIT_DEFAULT: u64 = 20;
/// The highest `x-max-priority` RabbitMQ accepts.
pub const MAX_PRIORITY_LIMIT: u8 = 255;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortStr>,
    pub dead_letter_routing_key: Option<ShortStr>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub queue_type: QueueType,
    /// Quorum queues: deliveries after which a returned message is dead-lettered.
    pub delivery_limit: Option<u64>,
    /// `x-message-deduplication`: refuse a message whose deduplication header another
    /// message in the queue carries.
    pub deduplication: bool,
}

fn invalid(arg: &str, queue: &str, vhost: &str, why: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(
        ReplyCode::PreconditionFailed,
        format_args!("invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {why}"),
    )
}

fn non_negative(v: &FieldValue) -> Result<u64, String> {
    match v.as_i64() {
        Some(n) if n >= 0 => Ok(n as u64),
        Some(n) => Err(format!("{{value_negative,{n}}}")),
        None => Err(format!("{{unacceptable_type,{}}}", type_name(v))),
    }
}

fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::LongStr(_) => "longstr",
        FieldValue::I8(_) => "byte",
        FieldValue::I16(_) => "short",
        FieldValue::I32(_) => "signedint",
        FieldValue::I64(_) => "long",
        FieldValue::Bool(_) => "bool",
        FieldValue::Table(_) => "table",
        FieldValue::Array(_) => "array",
        FieldValue::F32(_) | FieldValue::F64(_) => "float",
        FieldValue::Void => "void",
        _ => "other",
    }
}

/// Arguments RabbitMQ 3.10 knows that one queue type does not take: declaring a queue of that
/// type with one of them is refused, naming the type as RabbitMQ does (arguments no type
/// knows are kept and ignored, as there).
const NOT_FOR_CLASSIC: &[&str] = &[
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-queue-leader-locator",
    "x-dead-letter-strategy",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];
const NOT_FOR_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// The leader locators `x-queue-leader-locator` takes (RabbitMQ 3.10's, with the two older
/// names it still accepts; `least-leaders` and `random` are taken as `balanced`).
pub const LEADER_LOCATORS: &[&str] = &["client-local", "balanced", "least-leaders", "random"];

/// Whether a quorum queue has its first leader placed `balanced` (on the member leading the
/// fewest queues) rather than `client-local` (on the declaring node): the locator a policy
/// sets (`queue-leader-locator`) first, as RabbitMQ reads it, else the queue's
/// `x-queue-leader-locator`, else `default_balanced` (the `queue_leader_locator` setting).
pub fn balanced_leader(policy: Option<&str>, arguments: &FieldTable, default_balanced: bool) -> bool {
    match policy.or_else(|| arguments.get("x-queue-leader-locator").and_then(FieldValue::as_str)) {
        Some("client-local") => false,
        Some(_) => true,
        None => default_balanced,
    }
}

impl QueueArgs {
    pub fn parse(arguments: &FieldTable, queue: &str, vhost: &str) -> Result<Self, ProtocolError> {
        let mut a = QueueArgs::default();
        let quorum = arguments.get("x-queue-type").and_then(FieldValue::as_str) == Some("quorum");
        let (unsupported, type_name_there) =
            if quorum { (NOT_FOR_QUORUM, "rabbit_quorum_queue") } else { (NOT_FOR_CLASSIC, "rabbit_classic_queue") };
        if let Some((k, _)) = arguments.iter().find(|(k, _)| unsupported.contains(&k.as_str())) {
            return Err(ProtocolError::new(
                ReplyCode::PreconditionFailed,
                format_args!(
                    "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}' of queue type {type_name_there}"
                ),
            ));
        }
        for (k, v) in arguments.iter() {
            let bad = |why: String| invalid(k, queue, vhost, why);
            match k.as_str() {
                "x-message-ttl" => a.message_ttl_ms = Some(non_negative(v).map_err(bad)?),
                "x-expires" => match non_negative(v).map_err(bad)? {
                    0 => return Err(invalid(k, queue, vhost, "{value_zero,0}")),
                    n => a.expires_ms = Some(n),
                },
                "x-max-length" => a.max_length = Some(non_negative(v).map_err(bad)?),
                "x-max-length-bytes" => a.max_length_bytes = Some(non_negative(v).map_err(bad)?),
                "x-overflow" => {
                    a.overflow = match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        Some(other) => return Err(bad(format!("{{unknown_overflow_type,<<\"{other}\">>}}"))),
                        None => return Err(bad(format!("{{unacceptable_type,{}}}", type_name(v)))),
                    }
                }
                "x-dead-letter-exchange" => {
                    let s = v.as_str().ok_or_else(|| bad(format!("{{unacceptable_type,{}}}", type_name(v))))?;
                    a.dead_letter_exchange = Some(ShortStr::from(s));
                }
                "x-dead-letter-routing-key" => {
                    let s = v.as_str().ok_or_else(|| bad(format!("{{unacceptable_type,{}}}", type_name(v))))?;
                    a.dead_letter_routing_key = Some(ShortStr::from(s));
                }
                "x-max-priority" => {
                    let n = non_negative(v).map_err(bad)?;
                    if n > u64::from(MAX_PRIORITY_LIMIT) {
                        return Err(bad(format!("{{value_too_large,{n},{MAX_PRIORITY_LIMIT}}}")));
                    }
                    a.max_priority = Some(n as u8);
                }
                "x-single-active-consumer" => {
                    a.single_active_consumer =
                        v.as_bool().ok_or_else(|| bad(format!("{{unacceptable_type,{}}}", type_name(v))))?;
                }
                "x-queue-type" => {
                    a.queue_type = match v.as_str() {
                        Some("classic") => QueueType::Classic,
                        Some("quorum") => QueueType::Quorum,
                        Some(other) => {
                            return Err(bad(format!("queue type '{other}' is not supported (classic and quorum are)")))
                        }
                        None => return Err(bad(format!("{{unacceptable_type,{}}}", type_name(v)))),
                    }
                }
                "x-delivery-limit" => a.delivery_limit = Some(non_negative(v).map_err(bad)?),
                "x-queue-leader-locator" => match v.as_str() {
                    Some(l) if LEADER_LOCATORS.contains(&l) => {}
                    Some(_) => return Err(bad("invalid_queue_locator_arg".to_owned())),
                    None => return Err(bad(format!("{{unacceptable_type,{}}}", type_name(v)))),
                },
                "x-message-deduplication" => {
                    a.deduplication =
                        v.as_bool().ok_or_else(|| bad(format!("{{unacceptable_type,{}}}", type_name(v))))?;
                }
                _ => {}
            }
        }
        if a.dead_letter_routing_key.is_some() && a.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                queue,
                vhost,
                "Key x-dead-letter-exchange should be present when x-dead-letter-routing-key is set",
            ));
        }
        if a.queue_type == QueueType::Quorum && a.delivery_limit.is_none() {
            a.delivery_limit = Some(QUORUM_DELIVERY_LIMIT_DEFAULT);
        }
        Ok(a)
    }
}

/// The per-message TTL of an `expiration` property: a non-negative integer in a string.
pub fn message_ttl_ms(expiration: &str) -> Result<u64, ProtocolError> {
    expiration.parse::<u64>().map_err(|_| {
        ProtocolError::new(ReplyCode::PreconditionFailed, format_args!("invalid expiration '{expiration}'"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[(&str, FieldValue)]) -> Result<QueueArgs, ProtocolError> {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            t.insert(*k, v.clone());
        }
        QueueArgs::parse(&t, "q", "/")
    }

    #[test]
    fn reads_every_argument() {
        let a = parse(&[
            ("x-message-ttl", FieldValue::I32(1000)),
            ("x-expires", FieldValue::I64(5000)),
            ("x-max-length", FieldValue::I16(3)),
            ("x-max-length-bytes", FieldValue::U32(100)),
            ("x-overflow", "reject-publish".into()),
            ("x-dead-letter-exchange", "dlx".into()),
            ("x-dead-letter-routing-key", "dead".into()),
            ("x-max-priority", FieldValue::U8(10)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
        ])
        .expect("valid");
        assert_eq!(a.message_ttl_ms, Some(1000));
        assert_eq!(a.expires_ms, Some(5000));
        assert_eq!(a.max_length, Some(3));
        assert_eq!(a.max_length_bytes, Some(100));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(a.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(a.max_priority, Some(10));
        assert!(a.single_active_consumer);
    }

    #[test]
    fn bad_values_are_406() {
        for bad in [
            vec![("x-message-ttl", FieldValue::I32(-1))],
            vec![("x-max-length", "ten".into())],
            vec![("x-overflow", "sideways".into())],
            vec![("x-expires", FieldValue::I32(0))],
            vec![("x-max-priority", FieldValue::I32(256))],
            vec![("x-dead-letter-routing-key", "k".into())],
            vec![("x-queue-type", "stream".into())],
        ] {
            let err = parse(&bad).expect_err("invalid");
            assert_eq!(err.code, ReplyCode::PreconditionFailed, "{bad:?}");
        }
    }

    #[test]
    fn quorum_gets_a_delivery_limit() {
        let a = parse(&[("x-queue-type", "quorum".into())]).expect("valid");
        assert_eq!(a.delivery_limit, Some(QUORUM_DELIVERY_LIMIT_DEFAULT));
    }
}
