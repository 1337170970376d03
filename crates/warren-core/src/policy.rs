//! Policies and operator policies, with RabbitMQ's precedence.
//!
//! A policy matches queues and/or exchanges of its vhost by a regular expression on the name;
//! of the policies that match, the one with the highest priority applies (one policy, not a
//! merge). Its definition fills in what the client's `x-` arguments leave unset; where both set
//! a numeric limit (`max-length`, `max-length-bytes`, `message-ttl`, `expires`,
//! `delivery-limit`), the lower value wins. An operator policy applies on top: for the limits it
//! sets, the lower of its value and the effective one wins.

use regex::Regex;
use warren_amqp::{FieldTable, FieldValue, ProtocolError, ReplyCode};

/// What a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }

    fn queues(self) -> bool {
        matches!(self, ApplyTo::Queues | ApplyTo::All)
    }

    fn exchanges(self) -> bool {
        matches!(self, ApplyTo::Exchanges | ApplyTo::All)
    }
}

/// Policy keys that set queue arguments, and the argument each sets.
const QUEUE_KEYS: &[(&str, &str)] = &[
    ("message-ttl", "x-message-ttl"),
    ("expires", "x-expires"),
    ("max-length", "x-max-length"),
    ("max-length-bytes", "x-max-length-bytes"),
    ("overflow", "x-overflow"),
    ("dead-letter-exchange", "x-dead-letter-exchange"),
    ("dead-letter-routing-key", "x-dead-letter-routing-key"),
    ("delivery-limit", "x-delivery-limit"),
];

/// Limits where the lower of a client argument and a policy value wins.
const LOWER_WINS: &[&str] = &["x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-delivery-limit"];

/// Keys an operator policy may set (RabbitMQ's list), all numeric limits.
const OPERATOR_KEYS: &[&str] = &["message-ttl", "expires", "max-length", "max-length-bytes", "delivery-limit"];

/// The policy key that places quorum queues' leaders (`client-local` or `balanced`); it sets
/// no queue argument: a cluster reads it where it places a queue's group.
pub const LEADER_LOCATOR_KEY: &str = "queue-leader-locator";

/// Keys RabbitMQ accepts in a policy that Warren has no use for (replication of classic
/// mirrored queues, lazy mode): accepted and ignored so that definitions import.
const IGNORED_KEYS: &[&str] = &[
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-mode",
    "queue-version",
];

#[derive(Debug, Clone)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    regex: Regex,
    pub apply_to: ApplyTo,
    pub priority: i64,
    pub definition: FieldTable,
}

fn invalid(detail: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(ReplyCode::PreconditionFailed, detail)
}

impl Policy {
    /// Checks and builds a policy; `operator` restricts the keys to RabbitMQ's operator list.
    pub fn new(
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: FieldTable,
        operator: bool,
    ) -> Result<Self, ProtocolError> {
        let regex = Regex::new(pattern).map_err(|e| invalid(format_args!("invalid pattern '{pattern}': {e}")))?;
        if definition.is_empty() {
            return Err(invalid("a policy definition must not be empty"));
        }
        for (k, v) in definition.iter() {
            let key = k.as_str();
            let known = if operator {
                OPERATOR_KEYS.contains(&key)
            } else {
                QUEUE_KEYS.iter().any(|(p, _)| *p == key)
                    || key == "alternate-exchange"
                    || key == LEADER_LOCATOR_KEY
                    || IGNORED_KEYS.contains(&key)
            };
            if !known {
                return Err(invalid(format_args!("unrecognised policy key '{key}'")));
            }
            if key == LEADER_LOCATOR_KEY && !v.as_str().is_some_and(|l| crate::args::LEADER_LOCATORS.contains(&l)) {
                return Err(invalid(format_args!("policy key '{key}' must be client-local or balanced")));
            }
            let numeric = OPERATOR_KEYS.contains(&key);
            if numeric && v.as_i64().is_none_or(|n| n < 0) {
                return Err(invalid(format_args!("policy key '{key}' must be a non-negative integer")));
            }
        }
        Ok(Policy {
            vhost: vhost.into(),
            name: name.into(),
            pattern: pattern.into(),
            regex,
            apply_to,
            priority,
            definition,
        })
    }

    fn matches_queue(&self, vhost: &str, name: &str) -> bool {
        self.vhost == vhost && self.apply_to.queues() && self.regex.is_match(name)
    }

    fn matches_exchange(&self, vhost: &str, name: &str) -> bool {
        self.vhost == vhost && self.apply_to.exchanges() && self.regex.is_match(name)
    }
}

/// The policy that applies among `policies`: the highest priority, then the first by name.
fn pick(policies: &[Policy], matches: impl Fn(&Policy) -> bool) -> Option<&Policy> {
    policies.iter().filter(|p| matches(p)).max_by(|a, b| a.priority.cmp(&b.priority).then_with(|| b.name.cmp(&a.name)))
}

fn lower(a: &FieldValue, b: &FieldValue) -> FieldValue {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => FieldValue::I64(x.min(y)),
        _ => a.clone(),
    }
}

/// The arguments a queue works with: its declared `x-` arguments with the applying policy and
/// operator policy folded in. Also returns the names of the policies applied.
pub fn effective_queue_arguments(
    declared: &FieldTable,
    vhost: &str,
    queue: &str,
    policies: &[Policy],
    operator_policies: &[Policy],
) -> (FieldTable, Option<String>, Option<String>) {
    let mut args = declared.clone();
    // A key the queue's type does not take is left out, as RabbitMQ applies a policy to each
    // queue type with what that type knows (`delivery-limit` is for quorum queues).
    let quorum = declared.get("x-queue-type").and_then(FieldValue::as_str) == Some("quorum");
    let takes = |arg: &str| quorum || arg != "x-delivery-limit";
    let policy = pick(policies, |p| p.matches_queue(vhost, queue));
    if let Some(p) = policy {
        for (key, arg) in QUEUE_KEYS {
            let Some(value) = p.definition.get(key).filter(|_| takes(arg)) else { continue };
            let merged = match args.get(arg) {
                None => value.clone(),
                Some(current) if LOWER_WINS.contains(arg) => lower(current, value),
                Some(current) => current.clone(),
            };
            args.insert(*arg, merged);
        }
    }
    let operator = pick(operator_policies, |p| p.matches_queue(vhost, queue));
    if let Some(p) = operator {
        for key in OPERATOR_KEYS {
            let arg = format!("x-{key}");
            let Some(value) = p.definition.get(key).filter(|_| takes(&arg)) else { continue };
            let merged = match args.get(&arg) {
                None => value.clone(),
                Some(current) => lower(current, value),
            };
            args.insert(arg.as_str(), merged);
        }
    }
    (args, policy.map(|p| p.name.clone()), operator.map(|p| p.name.clone()))
}

/// The leader locator the policy applying to queue `queue` in `vhost` sets, if it sets one.
pub fn policy_leader_locator<'a>(vhost: &str, queue: &str, policies: &'a [Policy]) -> Option<&'a str> {
    pick(policies, |p| p.matches_queue(vhost, queue))?.definition.get(LEADER_LOCATOR_KEY)?.as_str()
}

/// The alternate exchange a policy gives an exchange whose arguments name none.
pub fn policy_alternate_exchange(vhost: &str, exchange: &str, policies: &[Policy]) -> Option<String> {
    let p = pick(policies, |p| p.matches_exchange(vhost, exchange))?;
    p.definition.get("alternate-exchange").and_then(FieldValue::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(entries: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            t.insert(*k, v.clone());
        }
        t
    }

    fn policy(name: &str, pattern: &str, priority: i64, d: FieldTable) -> Policy {
        Policy::new("/", name, pattern, ApplyTo::Queues, priority, d, false).expect("valid")
    }

    #[test]
    fn a_policy_gives_each_queue_type_what_it_takes() {
        let p = policy(
            "p",
            ".*",
            0,
            def(&[("message-ttl", FieldValue::I64(1000)), ("delivery-limit", FieldValue::I64(3))]),
        );
        let (classic, _, _) = effective_queue_arguments(&FieldTable::new(), "/", "c", std::slice::from_ref(&p), &[]);
        assert_eq!(classic.get("x-message-ttl"), Some(&FieldValue::I64(1000)));
        assert!(classic.get("x-delivery-limit").is_none(), "delivery-limit is for quorum queues");
        assert!(crate::args::QueueArgs::parse(&classic, "c", "/").is_ok());
        let quorum_declared = def(&[("x-queue-type", FieldValue::from("quorum"))]);
        let (quorum, _, _) = effective_queue_arguments(&quorum_declared, "/", "q", &[p], &[]);
        assert_eq!(quorum.get("x-delivery-limit"), Some(&FieldValue::I64(3)));

        let locator = policy("l", "^q", 1, def(&[(LEADER_LOCATOR_KEY, FieldValue::from("balanced"))]));
        assert_eq!(policy_leader_locator("/", "q1", std::slice::from_ref(&locator)), Some("balanced"));
        assert_eq!(policy_leader_locator("/", "other", std::slice::from_ref(&locator)), None);
        let (args, _, _) = effective_queue_arguments(&FieldTable::new(), "/", "q1", &[locator], &[]);
        assert!(args.is_empty(), "the locator key sets no queue argument");
        let bad =
            Policy::new("/", "b", ".*", ApplyTo::Queues, 0, def(&[(LEADER_LOCATOR_KEY, FieldValue::from("x"))]), false);
        assert!(bad.is_err());
    }

    #[test]
    fn highest_priority_policy_applies_and_fills_unset_arguments() {
        let low = policy("low", "^orders", 0, def(&[("max-length", FieldValue::I64(100))]));
        let high = policy("high", "^orders\\.", 5, def(&[("message-ttl", FieldValue::I64(1000))]));
        let (args, applied, _) = effective_queue_arguments(&FieldTable::new(), "/", "orders.eu", &[low, high], &[]);
        assert_eq!(applied.as_deref(), Some("high"));
        assert_eq!(args.get("x-message-ttl"), Some(&FieldValue::I64(1000)));
        assert!(args.get("x-max-length").is_none(), "only one policy applies");
    }

    #[test]
    fn lower_limit_wins_and_client_wins_otherwise() {
        let p = policy(
            "p",
            ".*",
            0,
            def(&[("max-length", FieldValue::I64(10)), ("dead-letter-exchange", FieldValue::from("policy-dlx"))]),
        );
        let declared =
            def(&[("x-max-length", FieldValue::I64(50)), ("x-dead-letter-exchange", FieldValue::from("client-dlx"))]);
        let (args, _, _) = effective_queue_arguments(&declared, "/", "q", &[p], &[]);
        assert_eq!(args.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(args.get("x-dead-letter-exchange").and_then(FieldValue::as_str), Some("client-dlx"));
    }

    #[test]
    fn operator_policy_caps_limits() {
        let op = Policy::new("/", "cap", ".*", ApplyTo::Queues, 0, def(&[("max-length", FieldValue::I64(5))]), true)
            .expect("valid");
        let declared = def(&[("x-max-length", FieldValue::I64(50))]);
        let (args, _, applied) = effective_queue_arguments(&declared, "/", "q", &[], &[op]);
        assert_eq!(args.get("x-max-length"), Some(&FieldValue::I64(5)));
        assert_eq!(applied.as_deref(), Some("cap"));
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::new("/", "p", "(", ApplyTo::All, 0, def(&[("max-length", FieldValue::I64(1))]), false).is_err());
        assert!(Policy::new("/", "p", ".*", ApplyTo::All, 0, def(&[("nonsense", FieldValue::I64(1))]), false).is_err());
        assert!(Policy::new("/", "p", ".*", ApplyTo::All, 0, def(&[("overflow", "drop-head".into())]), true).is_err());
        assert!(
            Policy::new("/", "p", ".*", ApplyTo::All, 0, def(&[("max-length", FieldValue::I64(-1))]), false).is_err()
        );
    }

    #[test]
    fn exchanges_get_an_alternate_exchange() {
        let p = Policy::new("/", "ae", "^x", ApplyTo::Exchanges, 0, def(&[("alternate-exchange", "ae".into())]), false)
            .expect("valid");
        assert_eq!(policy_alternate_exchange("/", "x1", std::slice::from_ref(&p)).as_deref(), Some("ae"));
        assert_eq!(policy_alternate_exchange("/", "y1", &[p]), None);
    }
}
