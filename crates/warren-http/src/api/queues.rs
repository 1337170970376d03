//! /api/queues: list (with counts and rates), declare, delete, purge, get messages.

use super::access::VisibleVhosts;
use super::paging::Paging;
use super::rates::{MessageStats, Rates};
use super::{
    arguments, created_or_not, flag, node_name, parse_body, query_flag, with_broker, ApiError, ApiResult, User,
};
use crate::table_json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use warren_amqp::BasicProperties;
use warren_core::{Caller, GetAckMode, GotMessage, QueueInfo};
use warren_server::Shared;

/// A row of /api/queues, serialized directly: a listing of 10,000 queues is built without a
/// JSON tree per queue. Fields in alphabetical order, as the untyped JSON objects come out.
#[derive(serde::Serialize)]
struct QueueRow<'a> {
    arguments: Value,
    auto_delete: bool,
    consumer_details: [(); 0],
    consumers: u32,
    deliveries: [(); 0],
    durable: bool,
    exclusive: bool,
    incoming: [(); 0],
    message_stats: MessageStats,
    messages: u64,
    messages_ready: u32,
    messages_unacknowledged: u32,
    name: &'a str,
    /// The node the queue lives on: this one, or a quorum queue's leader (as RabbitMQ shows).
    node: std::borrow::Cow<'a, str>,
    operator_policy: &'a Option<String>,
    policy: &'a Option<String>,
    // RabbitMQ's states have no word for it: a queue whose storage failed keeps serving what
    // it holds, nacks publishes it cannot store, and heals by itself.
    state: &'static str,
    storage_error: &'a Option<String>,
    #[serde(rename = "type")]
    kind: &'a str,
    vhost: &'a str,
    // A quorum queue served by its group (in a cluster): RabbitMQ's fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<Vec<String>>,
}

fn queue_row<'a>(q: &'a QueueInfo, stats: MessageStats, node: &'a str) -> QueueRow<'a> {
    QueueRow {
        leader: None,
        members: None,
        online: None,
        arguments: table_json(&q.arguments),
        auto_delete: q.auto_delete,
        consumer_details: [],
        consumers: q.consumers,
        deliveries: [],
        durable: q.durable,
        exclusive: q.exclusive,
        incoming: [],
        message_stats: stats,
        messages: u64::from(q.messages_ready) + u64::from(q.messages_unacked),
        messages_ready: q.messages_ready,
        messages_unacknowledged: q.messages_unacked,
        name: &q.name,
        node: std::borrow::Cow::Borrowed(node),
        operator_policy: &q.operator_policy,
        policy: &q.policy,
        state: if q.storage_trouble.is_some() { "degraded" } else { "running" },
        storage_error: &q.storage_trouble,
        kind: q.arguments.get("x-queue-type").and_then(|t| t.as_str()).unwrap_or("classic"),
        vhost: &q.vhost,
    }
}

/// A row with the queue's group as this node sees it, for a quorum queue in a cluster.
fn queue_row_in<'a>(shared: &Shared, q: &'a QueueInfo, stats: MessageStats, node: &'a str) -> QueueRow<'a> {
    let mut row = queue_row(q, stats, node);
    if row.kind == "quorum" {
        if let Some(r) = shared.cluster_view().replica(&q.vhost, &q.name) {
            if let Some(leader) = &r.leader {
                row.node = std::borrow::Cow::Owned(leader.clone());
            }
            row.leader = r.leader;
            row.members = Some(r.members);
            row.online = Some(r.online);
        }
    } else if q.durable {
        // A classic queue lives on its home: that node is its node everywhere (as RabbitMQ).
        if let Some(home) = shared.cluster_view().home(&q.vhost, &q.name) {
            row.node = std::borrow::Cow::Owned(home);
        }
    }
    row
}

/// Queues whose details are read under one hold of the broker lock: a listing of many queues
/// takes the lock once per chunk, so clients are never held up for the whole list.
const LIST_CHUNK: usize = 256;

/// The queues (of `vhost`, named `name`, or all), sorted by vhost and name, with their
/// message stats.
fn listing(
    shared: &Shared,
    rates: &Rates,
    vhost: Option<&str>,
    name: Option<&str>,
    visible: Option<&VisibleVhosts>,
) -> Vec<(QueueInfo, MessageStats)> {
    let mut keys = match (vhost, name) {
        (Some(v), Some(n)) => vec![(Arc::from(v), warren_amqp::ShortStr::from(n))],
        _ => shared.broker().queue_keys(),
    };
    keys.retain(|(v, _)| vhost.is_none_or(|x| x == &**v) && VisibleVhosts::allows(visible, v));
    keys.sort_unstable();
    let mut details = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(LIST_CHUNK) {
        details.extend(shared.broker().queue_details(chunk));
    }
    let (queues, stats): (Vec<QueueInfo>, Vec<_>) = details.into_iter().unzip();
    let stats = rates.queues(&stats, vhost.is_none() && visible.is_none());
    queues.into_iter().zip(stats).collect()
}

/// GET /api/queues, paged when asked (see [`Paging`]).
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(rates): Extension<Arc<Rates>>,
    visible: Option<Extension<VisibleVhosts>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let paging = Paging::from_query(&query)?;
    let visible = visible.map(|Extension(v)| v);
    let queues = listing(&shared, &rates, None, None, visible.as_ref());
    let node = node_name(&shared);
    paging.answer_rows(queues.iter().map(|(q, s)| queue_row_in(&shared, q, *s, &node)).collect(), |r| r.name)
}

/// GET /api/queues/{vhost}, paged when asked; 404 for a vhost that does not exist.
pub(crate) async fn list_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(rates): Extension<Arc<Rates>>,
    Path(vhost): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    if !shared.broker().has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    let paging = Paging::from_query(&query)?;
    let queues = listing(&shared, &rates, Some(&vhost), None, None);
    let node = node_name(&shared);
    paging.answer_rows(queues.iter().map(|(q, s)| queue_row_in(&shared, q, *s, &node)).collect(), |r| r.name)
}

pub(crate) async fn show(
    State(shared): State<Arc<Shared>>,
    Extension(rates): Extension<Arc<Rates>>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (q, stats) = listing(&shared, &rates, Some(&vhost), Some(&name), None).pop().ok_or(ApiError::NotFound)?;
    Ok(Json(queue_row_in(&shared, &q, stats, &node_name(&shared))).into_response())
}

fn exists(shared: &Shared, vhost: &str, name: &str) -> bool {
    shared.broker().has_queue(vhost, name)
}

pub(crate) async fn declare(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let doc = parse_body(&body)?;
    let durable = flag(&doc, "durable", true)?;
    let auto_delete = flag(&doc, "auto_delete", false)?;
    if flag(&doc, "exclusive", false)? {
        return Err(ApiError::BadRequest("exclusive queues cannot be declared over HTTP".into()));
    }
    let args = arguments(&doc)?;
    let existed = exists(&shared, &vhost, &name);
    with_broker(&shared, |b, now, out| {
        b.declare_queue(Caller::User(&user), &vhost, &name, durable, auto_delete, args, now, out)
    })?;
    Ok(created_or_not(existed))
}

pub(crate) async fn remove(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let (if_unused, if_empty) = (query_flag(&query, "if-unused"), query_flag(&query, "if-empty"));
    with_broker(&shared, |b, now, out| {
        b.delete_queue_checked(Caller::User(&user), &vhost, &name, if_unused, if_empty, now, out)
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn purge(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    with_broker(&shared, |b, now, out| b.purge_queue(Caller::User(&user), &vhost, &name, now, out))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/queues/{vhost}/{name}/get with `count`, `ackmode`, `encoding` and `truncate`.
pub(crate) async fn get_messages(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let doc = parse_body(&body)?;
    let count = match doc.get("count") {
        None => 1,
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| ApiError::BadRequest("count must be a number".into()))?,
        Some(Value::String(s)) => s.parse().map_err(|_| ApiError::BadRequest("count must be a number".into()))?,
        Some(_) => return Err(ApiError::BadRequest("count must be a number".into())),
    };
    let mode = match doc.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true") | Some("reject_requeue_true") => GetAckMode::Requeue,
        Some("ack_requeue_false") => GetAckMode::Ack,
        Some("reject_requeue_false") => GetAckMode::Reject,
        _ => {
            return Err(ApiError::BadRequest(
                "ackmode must be ack_requeue_true, reject_requeue_true, ack_requeue_false or reject_requeue_false"
                    .into(),
            ))
        }
    };
    let base64_wanted = match doc.get("encoding").and_then(Value::as_str) {
        Some("auto") => false,
        Some("base64") => true,
        _ => return Err(ApiError::BadRequest("encoding must be auto or base64".into())),
    };
    let truncate = doc.get("truncate").and_then(|t| t.as_u64().or_else(|| t.as_str().and_then(|s| s.parse().ok())));
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let got =
        with_broker(&shared, |b, now, out| b.get_messages(Caller::User(&user), &vhost, &name, count, mode, now, out))?;
    let items = got.iter().map(|m| message_json(m, base64_wanted, truncate)).collect();
    Ok(super::json_list(items))
}

fn message_json(m: &GotMessage, base64_wanted: bool, truncate: Option<u64>) -> Value {
    let mut body: &[u8] = &m.body;
    if let Some(t) = truncate {
        body = &body[..body.len().min(usize::try_from(t).unwrap_or(usize::MAX))];
    }
    let (payload, encoding) = match std::str::from_utf8(body) {
        Ok(s) if !base64_wanted => (s.to_string(), "string"),
        _ => (base64::engine::general_purpose::STANDARD.encode(body), "base64"),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": m.redelivered,
        "exchange": m.exchange,
        "routing_key": m.routing_key,
        "message_count": m.message_count,
        "properties": properties_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// The properties a message carries, by RabbitMQ's JSON names (absent ones left out).
pub(crate) fn properties_json(p: &BasicProperties) -> Value {
    let mut o = Map::new();
    let mut text = |k: &str, v: &Option<warren_amqp::ShortStr>| {
        if let Some(v) = v {
            o.insert(k.into(), json!(v.as_str()));
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        o.insert("headers".into(), table_json(h));
    }
    if let Some(d) = p.delivery_mode {
        o.insert("delivery_mode".into(), json!(d));
    }
    if let Some(pr) = p.priority {
        o.insert("priority".into(), json!(pr));
    }
    if let Some(t) = p.timestamp {
        o.insert("timestamp".into(), json!(t));
    }
    Value::Object(o)
}

/// Message properties from their JSON form (as the publish endpoint takes them).
pub(crate) fn properties_from_json(v: Option<&Value>) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    let Some(v) = v else { return Ok(p) };
    let Some(o) = v.as_object() else { return Err(ApiError::BadRequest("properties must be an object".into())) };
    let text = |k: &str| -> Result<Option<warren_amqp::ShortStr>, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 255 => Ok(Some(warren_amqp::ShortStr::from(s.clone()))),
            Some(Value::Number(n)) => Ok(Some(warren_amqp::ShortStr::from(n.to_string()))),
            Some(_) => Err(ApiError::BadRequest(format!("property {k} must be a short string"))),
        }
    };
    let number = |k: &str| -> Result<Option<u64>, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("property {k} must be a number"))),
        }
    };
    p.content_type = text("content_type")?;
    p.content_encoding = text("content_encoding")?;
    p.correlation_id = text("correlation_id")?;
    p.reply_to = text("reply_to")?;
    p.expiration = text("expiration")?;
    p.message_id = text("message_id")?;
    p.kind = text("type")?;
    p.user_id = text("user_id")?;
    p.app_id = text("app_id")?;
    p.cluster_id = text("cluster_id")?;
    p.delivery_mode = number("delivery_mode")?.map(|d| d.min(255) as u8);
    p.priority = number("priority")?.map(|d| d.min(255) as u8);
    p.timestamp = number("timestamp")?;
    if let Some(h) = o.get("headers").filter(|h| !h.is_null()) {
        match crate::to_field(h) {
            warren_amqp::FieldValue::Table(t) => p.headers = Some(t),
            _ => return Err(ApiError::BadRequest("headers must be an object".into())),
        }
    }
    Ok(p)
}
