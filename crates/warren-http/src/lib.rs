//! The management HTTP API, on RabbitMQ's paths and JSON shapes so that its tools and
//! dashboards work against Warren.
//!
//! Everything is behind HTTP basic auth with the broker's users. This file serves policies and
//! operator policies and applies definitions at boot; `api/` serves the rest (overview, nodes,
//! connections, channels, consumers, exchanges, queues, bindings, definitions, health checks,
//! whoami, vhosts, users, permissions and topic permissions); `ui` serves the web UI's static
//! files; `https` serves the same app over TLS.

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

mod api;

pub use api::definitions::apply_topology;
pub use api::Listeners;

/// The default limit on a definitions import's body (`management.http.max_body_size`).
/// RabbitMQ's current default is 20 MiB; Warren takes 64 MiB so that an export several times
/// the size of the 13.6 MB one with 100,000 bindings (the largest real one we have seen)
/// imports without configuration. The body is held in memory once as bytes and once parsed.
pub const MAX_BODY_SIZE_DEFAULT_BYTES: usize = 64 * 1024 * 1024;

/// The limit on every other request's body. Only a definitions import needs megabytes: the
/// other bodies (declarations, policies, users, messages published for testing) are small,
/// and each request's body is buffered whole, so a small limit bounds what a client can pin
/// with many concurrent requests. 2 MiB is axum's default, kept as Warren's since 0.1.
pub const OTHER_BODY_SIZE_MAX_BYTES: usize = 2 * 1024 * 1024;

/// The management listener's own settings (the rest are the broker's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// The largest body `POST /api/definitions[/{vhost}]` accepts (RabbitMQ:
    /// `management.http.max_body_size`, in bytes); larger ones get 413.
    pub max_body_size_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { max_body_size_bytes: MAX_BODY_SIZE_DEFAULT_BYTES }
    }
}
pub mod https;
pub mod metrics;
mod ui;

/// Serves the management API until the future is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    serve_with_amqp(listener, shared, None).await
}

/// Serves the management API, knowing the AMQP listener's address (for connection names as
/// RabbitMQ writes them, "client -> server", and for the port-listener health check).
pub async fn serve_with_amqp(
    listener: TcpListener,
    shared: Arc<Shared>,
    amqp: Option<SocketAddr>,
) -> std::io::Result<()> {
    let listeners = Listeners { amqp, http: listener.local_addr().ok(), ..Listeners::default() };
    serve_listeners(listener, None, shared, listeners, HttpConfig::default()).await
}

/// Serves the management app on the HTTP listener and, when given, over HTTPS on a second
/// listener (RabbitMQ's `management.ssl.*`): one app for both, so both see the same message
/// rates. TLS handshakes count against the broker's `handshake_timeout`.
pub async fn serve_listeners(
    http: TcpListener,
    https: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    shared: Arc<Shared>,
    listeners: Listeners,
    config: HttpConfig,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    use std::future::IntoFuture;
    let handshake_timeout = std::time::Duration::from_millis(shared.broker().config().handshake_timeout_ms);
    let app = app(shared, listeners, config);
    let plain = axum::serve(http, app.clone().into_make_service_with_connect_info::<SocketAddr>()).into_future();
    let Some((listener, acceptor)) = https else { return plain.await };
    // axum knows the peer address (ConnectInfo, which the API's handlers read) of its own TCP
    // listener and of any listener wrapped by `tap_io`, so the TLS listener gets an empty tap.
    let tls = https::TlsListener::new(listener, acceptor, handshake_timeout)?.tap_io(|_| {});
    let secure = axum::serve(tls, app.into_make_service_with_connect_info::<SocketAddr>()).into_future();
    tokio::try_join!(plain, secure).map(|_| ())
}

/// The management app: metrics, the API and the web UI.
fn app(shared: Arc<Shared>, listeners: Listeners, config: HttpConfig) -> Router {
    Router::new()
        .route("/metrics", get(metrics::aggregated))
        .route("/metrics/per-object", get(metrics::per_object))
        .merge(api::router(shared.clone(), listeners, config))
        .merge(ui::router())
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
        // The definitions routes raise it for themselves (a route's limit wins over this one).
        .layer(axum::extract::DefaultBodyLimit::max(OTHER_BODY_SIZE_MAX_BYTES))
        .layer(axum::middleware::map_response(too_large_as_json))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), api::replicate_changes))
        .with_state(shared)
}

/// A body over its limit is refused by axum's extractor with a plain-text 413; the API
/// answers every error in JSON, so that one too. RabbitMQ (3.11.24 and later, which have a
/// limit) answers 400 with this reason; 413 is HTTP's status for it and what clients expect.
async fn too_large_as_json(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let reason = "Exceeded HTTP request body size limit";
    (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({"error": "payload_too_large", "reason": reason}))).into_response()
}

fn unauthorized(reason: &str) -> Response {
    // RabbitMQ spells the error of a user without a management tag the British way.
    let error = if reason == "Not management user" { "not_authorised" } else { "not_authorized" };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"Warren Management\"")],
        Json(json!({"error": error, "reason": reason})),
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
    let (name, password) = (String::from_utf8_lossy(&decoded[..colon]), String::from_utf8_lossy(&decoded[colon + 1..]));
    let core = shared.broker();
    let user =
        core.authenticate_basic(&name, &password, warren_server::is_loopback(&peer)).map_err(|_| "Login failed")?;
    // As in RabbitMQ, only users with a management tag may use the API.
    if !["administrator", "monitoring", "policymaker", "management"].iter().any(|t| user.has_tag(t)) {
        return Err("Not management user");
    }
    let user = user.name.clone();
    Ok(user)
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
    let mut core = api::broker_for_change(shared);
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
    let mut core = api::broker_for_change(shared);
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
        match authorize(&$shared, &$headers, $peer) {
            Ok(user) => user,
            Err(reason) => return unauthorized(reason),
        }
    };
}

fn not_authorised(reason: &str) -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({"error": "not_authorised", "reason": reason}))).into_response()
}

/// What `user` may do with policies, as in RabbitMQ: administrators and monitoring users see
/// every vhost, others the vhosts they have permissions in (None: all). Changing a policy
/// needs the policymaker (or administrator) tag and permissions in the vhost; operator policies
/// the administrator tag.
fn policy_scope(shared: &Shared, user: &str) -> (Option<Vec<String>>, bool, bool) {
    let core = shared.broker();
    let Some(u) = core.user(user) else { return (Some(Vec::new()), false, false) };
    let admin = u.is_administrator();
    let policymaker = admin || u.has_tag("policymaker");
    let visible = if admin || u.has_tag("monitoring") {
        None
    } else {
        Some(core.users().permissions().filter(|p| p.user == user).map(|p| p.vhost.clone()).collect())
    };
    (visible, policymaker, admin)
}

/// Refuses reading a vhost's policies the user cannot see.
fn may_read(shared: &Shared, user: &str, vhost: &str) -> Result<(), &'static str> {
    match policy_scope(shared, user).0 {
        Some(visible) if !visible.iter().any(|v| v == vhost) => Err("User not authorised to access virtual host"),
        _ => Ok(()),
    }
}

/// Refuses changing a policy the user may not change.
fn may_change(shared: &Shared, user: &str, operator: bool, vhost: &str) -> Result<(), &'static str> {
    let (visible, policymaker, admin) = policy_scope(shared, user);
    if operator && !admin {
        return Err("Not administrator user");
    }
    let in_vhost = admin || visible.is_some_and(|v| v.iter().any(|v| v == vhost));
    if !policymaker || !in_vhost {
        return Err("User not authorised to access object");
    }
    Ok(())
}

// One set of handlers for policies and operator policies: `OPERATOR` picks the list.

async fn list_policies<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let user = authorized!(shared, headers, peer);
    match policy_scope(&shared, &user).0 {
        None => list(&shared, OPERATOR, None),
        Some(visible) => {
            let core = shared.broker();
            let items =
                core.policies(OPERATOR).iter().filter(|p| visible.contains(&p.vhost)).map(policy_json).collect();
            Json(Value::Array(items)).into_response()
        }
    }
}

async fn list_vhost_policies<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> Response {
    let user = authorized!(shared, headers, peer);
    if let Err(reason) = may_read(&shared, &user, &vhost) {
        return not_authorised(reason);
    }
    list(&shared, OPERATOR, Some(&vhost))
}

async fn get_policy<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let user = authorized!(shared, headers, peer);
    if let Err(reason) = may_read(&shared, &user, &vhost) {
        return not_authorised(reason);
    }
    get_one(&shared, OPERATOR, &vhost, &name)
}

async fn put_policy<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let user = authorized!(shared, headers, peer);
    if let Err(reason) = may_change(&shared, &user, OPERATOR, &vhost) {
        return not_authorised(reason);
    }
    put(&shared, OPERATOR, &vhost, &name, &body)
}

async fn delete_policy<const OPERATOR: bool>(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    let user = authorized!(shared, headers, peer);
    if let Err(reason) = may_change(&shared, &user, OPERATOR, &vhost) {
        return not_authorised(reason);
    }
    delete(&shared, OPERATOR, &vhost, &name)
}

/// Applies the parts of a RabbitMQ definitions document (the JSON that `rabbitmqctl
/// export_definitions` and the management API produce) that Warren imports so far: policies
/// and operator policies. Returns how many were applied.
pub fn apply_definitions(broker: &mut warren_core::Broker, doc: &Value, now_ms: u64) -> Result<usize, String> {
    let mut applied = apply_access_definitions(broker, doc)?;
    // Of RabbitMQ's runtime parameters, Warren has the vhost limits.
    for p in items(doc, "parameters")? {
        if p.get("component").and_then(Value::as_str) != Some("vhost-limits") {
            continue;
        }
        let vhost = text(p, "parameters", "vhost")?;
        let Some(limits) = p.get("value").and_then(Value::as_object) else {
            return Err(format!("the vhost-limits of vhost '{vhost}' are not an object"));
        };
        for (name, value) in limits {
            let limit = warren_core::VhostLimit::parse(name)
                .ok_or_else(|| format!("vhost '{vhost}': '{name}' is not a vhost limit"))?;
            let n = value.as_i64().ok_or_else(|| format!("vhost '{vhost}': {name} should be a number"))?;
            broker.set_vhost_limit(vhost, limit, n).map_err(|e| format!("vhost '{vhost}': {}", e.text))?;
            applied += 1;
        }
    }
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

/// The items of a definitions array (absent: none).
fn items<'a>(doc: &'a Value, key: &str) -> Result<&'a [Value], String> {
    match doc.get(key) {
        None => Ok(&[]),
        Some(v) => v.as_array().map(Vec::as_slice).ok_or_else(|| format!("'{key}' is not an array")),
    }
}

/// A string field of a definitions item.
fn text<'a>(item: &'a Value, key: &str, field: &str) -> Result<&'a str, String> {
    item.get(field).and_then(Value::as_str).ok_or_else(|| format!("an item of '{key}' lacks '{field}'"))
}

/// Imports RabbitMQ's `vhosts`, `users` (with `password_hash` and `hashing_algorithm`, or
/// `password` in clear), `permissions` and `topic_permissions`, in that order.
fn apply_access_definitions(broker: &mut warren_core::Broker, doc: &Value) -> Result<usize, String> {
    let mut applied = 0;
    for v in items(doc, "vhosts")? {
        let name = text(v, "vhosts", "name")?;
        broker.add_vhost(name).map_err(|e| format!("vhost '{name}': {}", e.text))?;
        applied += 1;
    }
    for u in items(doc, "users")? {
        let name = text(u, "users", "name")?;
        // RabbitMQ exports tags as a list (3.10); older versions as one comma-separated string.
        let tags: Vec<String> = match u.get("tags") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(s)) => {
                s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
            }
            _ => Vec::new(),
        };
        let password = match (u.get("password_hash").and_then(Value::as_str), u.get("password").and_then(Value::as_str))
        {
            (Some(hash), _) if !hash.is_empty() => warren_core::auth::Password::Hash {
                password_hash: hash.to_owned(),
                hashing_algorithm: u.get("hashing_algorithm").and_then(Value::as_str).unwrap_or_default().to_owned(),
            },
            (_, Some(clear)) => warren_core::auth::Password::Clear(clear.to_owned()),
            _ => warren_core::auth::Password::None,
        };
        broker.put_user(name, password, tags).map_err(|e| format!("user '{name}': {}", e.text))?;
        if let Some(limits) = u.get("limits").and_then(Value::as_object) {
            for (limit, value) in limits {
                let which = warren_core::UserLimit::parse(limit)
                    .ok_or_else(|| format!("user '{name}': '{limit}' is not a user limit"))?;
                let n = value.as_i64().ok_or_else(|| format!("user '{name}': {limit} should be a number"))?;
                broker.set_user_limit(name, which, n).map_err(|e| format!("user '{name}': {}", e.text))?;
            }
        }
        applied += 1;
    }
    for p in items(doc, "permissions")? {
        let f = |k: &str| text(p, "permissions", k);
        let (user, vhost) = (f("user")?, f("vhost")?);
        broker
            .set_permissions(user, vhost, f("configure")?, f("write")?, f("read")?)
            .map_err(|e| format!("permissions of '{user}' in vhost '{vhost}': {}", e.text))?;
        applied += 1;
    }
    for p in items(doc, "topic_permissions")? {
        let f = |k: &str| text(p, "topic_permissions", k);
        let (user, vhost) = (f("user")?, f("vhost")?);
        broker
            .set_topic_permissions(user, vhost, f("exchange")?, f("write")?, f("read")?)
            .map_err(|e| format!("topic permissions of '{user}' in vhost '{vhost}': {}", e.text))?;
        applied += 1;
    }
    Ok(applied)
}
