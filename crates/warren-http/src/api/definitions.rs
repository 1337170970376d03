//! /api/definitions: export and import in RabbitMQ's definitions format.
//!
//! Export writes users (with their password hashes), vhosts, permissions, topic permissions,
//! policies, queues, exchanges and bindings. Import applies access control and policies through
//! [`crate::apply_definitions`] and queues, exchanges and bindings through
//! [`apply_topology`].

// Exports need the administrator tag (they hold the users' password hashes), as in RabbitMQ.
use super::access::admin;
use super::{parse_body, ApiError, ApiResult, User};
use crate::{policy_json, table_json, to_field};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use warren_amqp::{FieldTable, FieldValue, ProtocolError};
use warren_core::{Broker, Caller, ConnId, Out};
use warren_server::Shared;

/// The exchanges every vhost has; not exported.
fn is_builtin(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

fn export_doc(broker: &Broker, vhost: Option<&str>) -> Value {
    let keep = |v: &str| vhost.is_none_or(|want| want == v);
    let strip = |mut item: Value| {
        if vhost.is_some() {
            if let Some(o) = item.as_object_mut() {
                o.remove("vhost");
            }
        }
        item
    };
    let exchanges_all = broker.exchanges();
    let vhosts = broker.vhost_names();
    let queues: Vec<Value> = broker
        .queues()
        .iter()
        .filter(|q| keep(&q.vhost) && !q.exclusive)
        .map(|q| {
            strip(json!({
                "name": q.name,
                "vhost": q.vhost,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": table_json(&q.arguments),
            }))
        })
        .collect();
    let exchanges: Vec<Value> = exchanges_all
        .iter()
        .filter(|x| keep(&x.vhost) && !is_builtin(&x.name))
        .map(|x| {
            strip(json!({
                "name": x.name,
                "vhost": x.vhost,
                "type": x.kind,
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": table_json(&x.arguments),
            }))
        })
        .collect();
    let bindings: Vec<Value> = broker
        .bindings()
        .iter()
        .filter(|b| keep(&b.vhost) && !b.source.is_empty())
        .map(|b| {
            strip(json!({
                "source": b.source,
                "vhost": b.vhost,
                "destination": b.destination,
                "destination_type": if b.to_queue { "queue" } else { "exchange" },
                "routing_key": b.routing_key,
                "arguments": table_json(&b.arguments),
            }))
        })
        .collect();
    let policies: Vec<Value> =
        broker.policies(false).iter().filter(|p| keep(&p.vhost)).map(|p| strip(policy_json(p))).collect();
    // The keys RabbitMQ 3.10 writes: a per-vhost export has no users, vhosts or permissions.
    // Operator policies are not exported (as in RabbitMQ), though an import applies them.
    let mut doc = Map::new();
    let version = env!("CARGO_PKG_VERSION");
    doc.insert("rabbit_version".into(), json!(version));
    if vhost.is_none() {
        doc.insert("rabbitmq_version".into(), json!(version));
        doc.insert("product_name".into(), json!("Warren"));
        doc.insert("product_version".into(), json!(version));
        doc.insert("users".into(), Value::Array(super::access::users_json(broker)));
        doc.insert("vhosts".into(), Value::Array(vhosts.iter().map(|v| json!({"name": v})).collect()));
        doc.insert("permissions".into(), Value::Array(super::access::permissions_json(broker, |_, _| true)));
        doc.insert(
            "topic_permissions".into(),
            Value::Array(super::access::topic_permissions_json(broker, |_, _| true)),
        );
        doc.insert("global_parameters".into(), json!([]));
    }
    // Vhost limits are runtime parameters of the `vhost-limits` component in RabbitMQ's format.
    let parameters: Vec<Value> = super::limits::all_limits_json(broker)
        .into_iter()
        .filter(|(v, _)| keep(v))
        .map(|(_, l)| {
            strip(json!({"value": l["value"], "vhost": l["vhost"], "component": "vhost-limits", "name": "limits"}))
        })
        .collect();
    doc.insert("parameters".into(), Value::Array(parameters));
    doc.insert("policies".into(), Value::Array(policies));
    doc.insert("queues".into(), Value::Array(queues));
    doc.insert("exchanges".into(), Value::Array(exchanges));
    doc.insert("bindings".into(), Value::Array(bindings));
    Value::Object(doc)
}

pub(crate) async fn export(State(shared): State<Arc<Shared>>, Extension(User(user)): Extension<User>) -> ApiResult {
    admin(&shared, &user)?;
    Ok(Json(export_doc(&shared.broker(), None)).into_response())
}

pub(crate) async fn export_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    let core = shared.broker();
    if !core.has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    Ok(Json(export_doc(&core, Some(&vhost))).into_response())
}

fn import_doc(shared: &Shared, user: &str, doc: &Value) -> ApiResult {
    admin(shared, user)?;
    if !doc.is_object() {
        return Err(ApiError::BadRequest("definitions must be a JSON object".into()));
    }
    let now_ms = shared.now_ms();
    // Imported by the broker itself (the handlers let only administrators in), and made durable
    // in one go before the answer.
    let result = {
        let mut out = Vec::new();
        let mut core = super::broker_for_change(shared);
        let r = core.broker.batch_definitions(|b| {
            crate::apply_definitions(b, doc, now_ms)?;
            apply_topology(b, doc, now_ms, &mut out)
        });
        core.deliver(&mut out);
        r
    };
    result.map_err(ApiError::BadRequest)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn import(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    body: Bytes,
) -> ApiResult {
    let doc = parse_body(&body)?;
    import_doc(&shared, &user, &doc)
}

/// POST /api/definitions/{vhost}: every object goes to the vhost of the path.
pub(crate) async fn import_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    if !shared.broker().has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    let mut doc = parse_body(&body)?;
    for key in ["parameters", "policies", "operator_policies", "queues", "exchanges", "bindings"] {
        if let Some(items) = doc.get_mut(key).and_then(Value::as_array_mut) {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                item.insert("vhost".into(), json!(vhost));
            }
        }
    }
    for key in ["users", "vhosts", "permissions", "topic_permissions"] {
        if let Some(o) = doc.as_object_mut() {
            o.remove(key);
        }
    }
    import_doc(&shared, &user, &doc)
}

fn table_of(item: &Value) -> Result<FieldTable, String> {
    match item.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(v) => match to_field(v) {
            FieldValue::Table(t) => Ok(t),
            _ => Err("arguments must be an object".into()),
        },
    }
}

/// Declares the exchanges, queues and bindings of a definitions document (in that order, so
/// bindings find their ends). Objects that exist already are left as they are when
/// equivalent; an inequivalent one is an error, as in RabbitMQ. Returns how many were applied.
pub fn apply_topology(
    broker: &mut Broker,
    doc: &Value,
    now_ms: u64,
    out: &mut Vec<(ConnId, Out)>,
) -> Result<usize, String> {
    // Borrowed, not copied: an export holds 100,000 bindings and more.
    let items = |key: &str| -> Result<&[Value], String> {
        match doc.get(key) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a.as_slice()),
            Some(_) => Err(format!("'{key}' is not an array")),
        }
    };
    let text = |item: &Value, key: &str, what: &str| -> Result<String, String> {
        item.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("{what} lacks '{key}'"))
    };
    let boolean = |item: &Value, key: &str, default: bool| item.get(key).and_then(Value::as_bool).unwrap_or(default);
    let describe = |what: &str, name: &str, e: ProtocolError| format!("{what} '{name}': {}", e.text);
    let mut applied = 0;
    for x in items("exchanges")? {
        let (name, vhost, kind) =
            (text(x, "name", "an exchange")?, text(x, "vhost", "an exchange")?, text(x, "type", "an exchange")?);
        if is_builtin(&name) {
            continue;
        }
        let (durable, auto_delete, internal) =
            (boolean(x, "durable", true), boolean(x, "auto_delete", false), boolean(x, "internal", false));
        broker
            .declare_exchange(
                Caller::Broker,
                &vhost,
                &name,
                &kind,
                durable,
                auto_delete,
                internal,
                table_of(x)?,
                now_ms,
                out,
            )
            .map_err(|e| describe("exchange", &name, e))?;
        applied += 1;
    }
    for q in items("queues")? {
        let (name, vhost) = (text(q, "name", "a queue")?, text(q, "vhost", "a queue")?);
        let (durable, auto_delete) = (boolean(q, "durable", true), boolean(q, "auto_delete", false));
        broker
            .declare_queue(Caller::Broker, &vhost, &name, durable, auto_delete, table_of(q)?, now_ms, out)
            .map_err(|e| describe("queue", &name, e))?;
        applied += 1;
    }
    for b in items("bindings")? {
        let what = "a binding";
        let (source, vhost, dest) = (text(b, "source", what)?, text(b, "vhost", what)?, text(b, "destination", what)?);
        let to_queue = match b.get("destination_type").and_then(Value::as_str) {
            Some("queue") => true,
            Some("exchange") => false,
            _ => return Err(format!("binding of '{dest}': destination_type must be queue or exchange")),
        };
        let routing_key = b.get("routing_key").and_then(Value::as_str).unwrap_or_default();
        if source.is_empty() {
            continue;
        }
        broker
            .set_binding(Caller::Broker, true, &vhost, &source, &dest, to_queue, routing_key, table_of(b)?, now_ms, out)
            .map_err(|e| describe("binding to", &dest, e))?;
        applied += 1;
    }
    Ok(applied)
}
