//! The management HTTP API, on RabbitMQ's paths and JSON shapes so that its tools and
//! dashboards work against Warren.
//!
//! This first cut serves the read-only essentials: `/api/overview`, `/api/queues`, and the
//! alarms health check, behind HTTP basic auth with the broker's users. The rest of the API and
//! the web UI are issue 6.

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use warren_amqp::{FieldTable, FieldValue};
use warren_core::policy::ApplyTo;
use warren_server::Shared;

pub mod metrics;

/// Serves the management API until the future is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics::aggregated))
        .route("/metrics/per-object", get(metrics::per_object))
        .route("/api/overview", get(overview))
        .route("/api/queues", get(queues))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/policies", get(list_policies::<false>))
        .route("/api/policies/{vhost}", get(list_vhost_policies::<false>))
        .route(
            "/api/policies/{vhost}/{name}",
            get(get_policy::<false>).put(put_policy::<false>).delete(delete_policy::<false>),
        )
        .route("/api/operator-policies", get(list_policies::<true>))
        .route("/api/operator-policies/{vhost}", get(list_vhost_policies::<true>))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(get_policy::<true>).put(put_policy::<true>).delete(delete_policy::<true>),
        )
        .with_state(shared);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

fn unauthorized(reason: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"Warren Management\"")],
        Json(json!({"error": "not_authorized", "reason": reason})),
    )
        .into_response()
}

/// Checks HTTP basic auth against the broker's users (loopback-only users from loopback only).
fn authorize(shared: &Shared, headers: &HeaderMap, peer: SocketAddr) -> Result<String, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err("Not authorized");
    };
    let Some(encoded) = value.strip_prefix("Basic ") else { return Err("Not authorized") };
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| "Not authorized")?;
    let Some(colon) = decoded.iter().position(|b| *b == b':') else { return Err("Not authorized") };
    let mut plain = vec![0u8];
    plain.extend_from_slice(&decoded[..colon]);
    plain.push(0);
    plain.extend_from_slice(&decoded[colon + 1..]);
    shared.broker().users().authenticate("PLAIN", &plain, warren_server::is_loopback(&peer)).map_err(|_| "Login failed")
}

async fn overview(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(reason) = authorize(&shared, &headers, peer) {
        return unauthorized(reason);
    }
    let o = shared.broker().overview();
    Json(json!({
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "node": "warren@localhost",
        "object_totals": {
            "connections": o.connections,
            "channels": o.channels,
            "exchanges": o.exchanges,
            "queues": o.queues,
            "consumers": o.consumers,
        },
        "warren_store": {
            "sync_rounds": o.store.sync_rounds,
            "fsyncs": o.store.fsyncs,
            "confirms": o.store.confirms,
        },
        "queue_totals": {
            "messages": o.messages_ready + o.messages_unacked,
            "messages_ready": o.messages_ready,
            "messages_unacknowledged": o.messages_unacked,
        },
    }))
    .into_response()
}

async fn queues(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(reason) = authorize(&shared, &headers, peer) {
        return unauthorized(reason);
    }
    let list: Vec<_> = shared
        .broker()
        .queues()
        .into_iter()
        .map(|q| {
            json!({
                "vhost": q.vhost,
                "name": q.name,
                "durable": q.durable,
                "exclusive": q.exclusive,
                "auto_delete": q.auto_delete,
                "messages": u64::from(q.messages_ready) + u64::from(q.messages_unacked),
                "messages_ready": q.messages_ready,
                "messages_unacknowledged": q.messages_unacked,
                "consumers": q.consumers,
                "policy": q.policy,
                "operator_policy": q.operator_policy,
                "arguments": table_json(&q.arguments),
                "type": "classic",
            })
        })
        .collect();
    Json(list).into_response()
}

async fn alarms(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(reason) = authorize(&shared, &headers, peer) {
        return unauthorized(reason);
    }
    Json(json!({"status": "ok"})).into_response()
}

// ---- policies ---------------------------------------------------------------------------

fn to_field(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::from(s.as_str()),
        Value::Array(a) => FieldValue::Array(a.iter().map(to_field).collect()),
        Value::Object(o) => {
            let mut t = FieldTable::new();
            for (k, v) in o {
                t.insert(k.as_str(), to_field(v));
            }
            FieldValue::Table(t)
        }
    }
}

fn to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::F32(f) => json!(f),
        FieldValue::F64(f) => json!(f),
        FieldValue::LongStr(_) => json!(v.as_str().unwrap_or_default()),
        FieldValue::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        FieldValue::Table(t) => table_json(t),
        FieldValue::Void => Value::Null,
        other => match other.as_i64() {
            Some(i) => json!(i),
            None => json!(format!("{other:?}")),
        },
    }
}

fn table_json(t: &FieldTable) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect())
}

fn policy_json(p: &warren_core::policy::Policy) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to.as_str(),
        "definition": table_json(&p.definition),
        "priority": p.priority,
    })
}

fn bad_request(reason: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_request", "reason": reason}))).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "Object Not Found", "reason": "Not Found"}))).into_response()
}

fn list(shared: &Shared, operator: bool, vhost: Option<&str>) -> Response {
    let core = shared.broker();
    let items: Vec<Value> =
        core.policies(operator).iter().filter(|p| vhost.is_none_or(|v| p.vhost == v)).map(policy_json).collect();
    Json(items).into_response()
}

fn get_one(shared: &Shared, operator: bool, vhost: &str, name: &str) -> Response {
    let core = shared.broker();
    match core.policies(operator).iter().find(|p| p.vhost == vhost && p.name == name) {
        Some(p) => Json(policy_json(p)).into_response(),
        None => not_found(),
    }
}

fn put(shared: &Shared, operator: bool, vhost: &str, name: &str, body: &[u8]) -> Response {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else { return bad_request("body is not JSON") };
    let Some(pattern) = doc.get("pattern").and_then(Value::as_str) else {
        return bad_request("pattern is required");
    };
    let apply_to = match doc.get("apply-to").and_then(Value::as_str).map(ApplyTo::parse) {
        None => ApplyTo::All,
        Some(Some(a)) => a,
        Some(None) => return bad_request("apply-to must be queues, exchanges or all"),
    };
    let priority = doc.get("priority").and_then(Value::as_i64).unwrap_or(0);
    let definition = match doc.get("definition").map(to_field) {
        Some(FieldValue::Table(t)) => t,
        _ => return bad_request("definition must be an object"),
    };
    let mut out = Vec::new();
    let mut core = shared.broker();
    let existed = core.policies(operator).iter().any(|p| p.vhost == vhost && p.name == name);
    let result =
        core.set_policy(vhost, name, pattern, apply_to, priority, definition, operator, shared.now_ms(), &mut out);
    core.deliver(&mut out);
    match result {
        Ok(()) if existed => StatusCode::NO_CONTENT.into_response(),
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => bad_request(&e.text),
    }
}

fn delete(shared: &Shared, operator: bool, vhost: &str, name: &str) -> Response {
    let mut out = Vec::new();
    let mut core = shared.broker();
    let result = core.clear_policy(vhost, name, operator, shared.now_ms(), &mut out);
    core.deliver(&mut out);
    match result {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "internal", "reason": e.text}))).into_response()
        }
    }
}

macro_rules! authorized {
    ($shared:expr, $headers:expr, $peer:expr) => {
        if let Err(reason) = authorize(&$shared, &$headers, $peer) {
            return unauthorized(reason);
        }
    };
}

// One set of handlers for policies and operator policies: `OPERATOR` picks the list.

async fn list_policies<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    authorized!(shared, headers, peer);
    list(&shared, OPERATOR, None)
}

async fn list_vhost_policies<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> Response {
    authorized!(shared, headers, peer);
    list(&shared, OPERATOR, Some(&vhost))
}

async fn get_policy<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    authorized!(shared, headers, peer);
    get_one(&shared, OPERATOR, &vhost, &name)
}

async fn put_policy<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    authorized!(shared, headers, peer);
    put(&shared, OPERATOR, &vhost, &name, &body)
}

async fn delete_policy<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    authorized!(shared, headers, peer);
    delete(&shared, OPERATOR, &vhost, &name)
}

/// Applies the parts of a RabbitMQ definitions document (the JSON that `rabbitmqctl
/// export_definitions` and the management API produce) that Warren imports so far: policies
/// and operator policies. Returns how many were applied.
pub fn apply_definitions(broker: &mut warren_core::Broker, doc: &Value, now_ms: u64) -> Result<usize, String> {
    let mut applied = 0;
    let mut out = Vec::new();
    for (key, operator) in [("policies", false), ("operator_policies", true)] {
        let Some(items) = doc.get(key) else { continue };
        let items = items.as_array().ok_or_else(|| format!("'{key}' is not an array"))?;
        for p in items {
            let field =
                |k: &str| p.get(k).and_then(Value::as_str).ok_or_else(|| format!("a policy in '{key}' lacks '{k}'"));
            let (vhost, name, pattern) = (field("vhost")?, field("name")?, field("pattern")?);
            let apply_to = match p.get("apply-to").and_then(Value::as_str) {
                None => ApplyTo::All,
                Some(a) => ApplyTo::parse(a).ok_or_else(|| format!("policy '{name}': bad apply-to '{a}'"))?,
            };
            let priority = p.get("priority").and_then(Value::as_i64).unwrap_or(0);
            let Some(FieldValue::Table(definition)) = p.get("definition").map(to_field) else {
                return Err(format!("policy '{name}': definition must be an object"));
            };
            broker
                .set_policy(vhost, name, pattern, apply_to, priority, definition, operator, now_ms, &mut out)
                .map_err(|e| format!("policy '{name}' in vhost '{vhost}': {}", e.text))?;
            applied += 1;
        }
    }
    Ok(applied)
}
