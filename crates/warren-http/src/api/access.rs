//! Access control over HTTP: /api/vhosts, /api/users, /api/permissions, /api/topic-permissions,
//! with RabbitMQ 3.10's paths, JSON shapes, status codes and error bodies.
//!
//! Authorization is RabbitMQ's: everything here needs the administrator tag, except listing
//! vhosts (a non-administrator sees the vhosts it has permissions in, a monitoring user all).

use super::{created_or_not, deleted_or_not_found, json_list, parse_body, with_broker, ApiError, ApiResult, User};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_core::auth::{Password, Permission, TopicPermission};
use warren_core::Broker;
use warren_server::Shared;

/// Refuses the request unless its user is an administrator.
pub(crate) fn admin(shared: &Shared, user: &str) -> Result<(), ApiError> {
    if shared.broker().user(user).is_some_and(|u| u.is_administrator()) {
        Ok(())
    } else {
        Err(ApiError::NotAdministrator)
    }
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

/// A required string field of a body; RabbitMQ's reason when it is missing.
fn required<'a>(doc: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    match doc.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(format!("{key} must be a string"))),
        None => Err(bad(format!("[{{key_missing,{key}}}]"))),
    }
}

/// The body as a JSON object, or RabbitMQ's `not_json`.
pub(crate) fn object_body(body: &[u8]) -> Result<Value, ApiError> {
    let doc = parse_body(body).map_err(|_| bad("not_json"))?;
    if doc.is_object() {
        Ok(doc)
    } else {
        Err(bad("not_json"))
    }
}

// ---- vhosts --------------------------------------------------------------------------------

/// Every node's state for vhosts' `cluster_state`, as RabbitMQ shows it: `running`, or
/// `nodedown` for a node this one is not connected to.
fn cluster_state(shared: &Shared) -> Value {
    let nodes = shared.cluster_view().nodes();
    Value::Object(
        nodes.into_iter().map(|n| (n.name, Value::from(if n.running { "running" } else { "nodedown" }))).collect(),
    )
}

fn vhost_json(name: &str, cluster_state: &Value) -> Value {
    json!({
        "name": name,
        "description": "",
        "tags": [],
        "default_queue_type": "undefined",
        "metadata": {"description": "", "tags": []},
        "tracing": false,
        "cluster_state": cluster_state,
    })
}

/// GET /api/vhosts: all for administrators and monitoring users, else those with permissions.
pub(crate) async fn list_vhosts(State(shared): State<Arc<Shared>>, Extension(User(user)): Extension<User>) -> Response {
    let state = cluster_state(&shared);
    let core = shared.broker();
    let sees_all = core.user(&user).is_some_and(|u| u.is_administrator() || u.has_tag("monitoring"));
    let visible = core
        .vhost_names()
        .into_iter()
        .filter(|v| sees_all || core.users().permission(&user, v).is_some())
        .map(|v| vhost_json(&v, &state))
        .collect();
    json_list(visible)
}

pub(crate) async fn show_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    if !shared.broker().has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    Ok(Json(vhost_json(&vhost, &cluster_state(&shared))).into_response())
}

/// PUT /api/vhosts/{vhost}: the creating user gets `.*` permissions in it, as in RabbitMQ.
pub(crate) async fn put_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    object_body(&body)?;
    let created = with_broker(&shared, |b, _, _| {
        let created = b.add_vhost(&vhost)?;
        if created {
            b.set_permissions(&user, &vhost, ".*", ".*", ".*")?;
        }
        Ok(created)
    })?;
    Ok(created_or_not(!created))
}

pub(crate) async fn delete_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    deleted_or_not_found(with_broker(&shared, |b, now, out| b.delete_vhost(&vhost, now, out))?)
}

// ---- users ---------------------------------------------------------------------------------

fn user_json(broker: &Broker, u: &warren_core::auth::User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": super::limits::user_limits_value(&broker.limits_of_user(&u.name)),
    })
}

/// The users, as RabbitMQ lists them (and exports them in definitions).
pub(crate) fn users_json(broker: &Broker) -> Vec<Value> {
    broker.users().list().map(|u| user_json(broker, u)).collect()
}

pub(crate) async fn list_users(State(shared): State<Arc<Shared>>, Extension(User(user)): Extension<User>) -> ApiResult {
    admin(&shared, &user)?;
    Ok(json_list(users_json(&shared.broker())))
}

pub(crate) async fn users_without_permissions(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
) -> ApiResult {
    admin(&shared, &user)?;
    let core = shared.broker();
    let users = core.users();
    let lonely =
        users.list().filter(|u| !users.permissions().any(|p| p.user == u.name)).map(|u| user_json(&core, u)).collect();
    Ok(json_list(lonely))
}

pub(crate) async fn show_user(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    let core = shared.broker();
    let u = core.user(&name).ok_or(ApiError::NotFound)?;
    Ok(Json(user_json(&core, u)).into_response())
}

/// Tags as RabbitMQ takes them: a comma-separated string or a list of strings (each taken
/// whole).
fn parse_tags(v: &Value) -> Result<Vec<String>, ApiError> {
    let split =
        |s: &str| -> Vec<String> { s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect() };
    match v {
        Value::String(s) => Ok(split(s)),
        Value::Array(items) => {
            let mut tags = Vec::new();
            for t in items {
                let t = t.as_str().ok_or_else(|| bad("tags must be strings"))?.trim();
                if !t.is_empty() {
                    tags.push(t.to_owned());
                }
            }
            Ok(tags)
        }
        _ => Err(bad("tags must be a string or a list")),
    }
}

/// PUT /api/users/{user}: `tags` is required; `password` in clear, or `password_hash` with
/// `hashing_algorithm`; with neither the user has no password (as RabbitMQ 3.10 does it).
pub(crate) async fn put_user(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let doc = object_body(&body)?;
    let tags = parse_tags(doc.get("tags").ok_or_else(|| bad("tags_not_present"))?)?;
    let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
    let existed = shared.broker().user(&name).is_some();
    let password = match (text("password"), text("password_hash")) {
        (Some(clear), _) => Password::Clear(clear),
        (None, Some(hash)) if hash.is_empty() => Password::None,
        (None, Some(hash)) => {
            Password::Hash { password_hash: hash, hashing_algorithm: text("hashing_algorithm").unwrap_or_default() }
        }
        // As in RabbitMQ 3.10, a PUT without a password leaves the user without one (an
        // existing user's password is cleared): it cannot log in until one is set.
        (None, None) => Password::None,
    };
    with_broker(&shared, |b, _, _| b.put_user(&name, password, tags))?;
    Ok(created_or_not(existed))
}

pub(crate) async fn delete_user(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    deleted_or_not_found(with_broker(&shared, |b, now, out| b.delete_user(&name, now, out))?)
}

/// POST /api/users/bulk-delete `{"users": [...]}`: deletes in order and stops at the first
/// user that does not exist (400 `["no_such_user", name]`), as RabbitMQ does.
pub(crate) async fn bulk_delete_users(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let doc = object_body(&body)?;
    let names = doc.get("users").and_then(Value::as_array).ok_or_else(|| bad("[{key_missing,users}]"))?;
    for name in names {
        let name = name.as_str().ok_or_else(|| bad("users must be a list of names"))?;
        if !with_broker(&shared, |b, now, out| b.delete_user(name, now, out))? {
            let body = json!({"error": "bad_request", "reason": ["no_such_user", name]});
            return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- permissions ---------------------------------------------------------------------------

fn permission_json(p: &Permission) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure.as_str(),
        "write": p.write.as_str(),
        "read": p.read.as_str(),
    })
}

fn topic_json(p: &TopicPermission) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "exchange": p.exchange,
        "write": p.write.as_str(),
        "read": p.read.as_str(),
    })
}

/// The permissions and topic permissions, as RabbitMQ lists them (and exports them).
pub(crate) fn permissions_json(broker: &Broker, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    broker.users().permissions().filter(|p| keep(&p.user, &p.vhost)).map(permission_json).collect()
}

pub(crate) fn topic_permissions_json(broker: &Broker, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    broker.users().topic_permissions().filter(|p| keep(&p.user, &p.vhost)).map(topic_json).collect()
}

/// Which permissions a listing shows.
enum Scope {
    All,
    Vhost(String),
    User(String),
}

fn list_scoped(shared: &Shared, user: &str, scope: Scope, topic: bool) -> ApiResult {
    admin(shared, user)?;
    let core = shared.broker();
    match &scope {
        Scope::Vhost(v) if !core.has_vhost(v) => return Err(ApiError::NotFound),
        Scope::User(u) if core.user(u).is_none() => return Err(ApiError::NotFound),
        _ => {}
    }
    let keep = |u: &str, v: &str| match &scope {
        Scope::All => true,
        Scope::Vhost(want) => want == v,
        Scope::User(want) => want == u,
    };
    let items = if topic { topic_permissions_json(&core, keep) } else { permissions_json(&core, keep) };
    Ok(json_list(items))
}

/// GET /api/permissions (TOPIC: /api/topic-permissions).
pub(crate) async fn list_permissions<const TOPIC: bool>(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
) -> ApiResult {
    list_scoped(&shared, &user, Scope::All, TOPIC)
}

/// GET /api/vhosts/{vhost}/permissions (TOPIC: .../topic-permissions).
pub(crate) async fn vhost_permissions<const TOPIC: bool>(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    list_scoped(&shared, &user, Scope::Vhost(vhost), TOPIC)
}

/// GET /api/users/{user}/permissions (TOPIC: .../topic-permissions).
pub(crate) async fn user_permissions<const TOPIC: bool>(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    list_scoped(&shared, &user, Scope::User(name), TOPIC)
}

pub(crate) async fn show_permission(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&shared, &user)?;
    let core = shared.broker();
    let p = core.users().permission(&name, &vhost).ok_or(ApiError::NotFound)?;
    Ok(Json(permission_json(p)).into_response())
}

/// The error RabbitMQ gives when setting permissions for a missing user or vhost.
fn missing_user_or_vhost(shared: &Shared, name: &str, vhost: &str) -> Result<(), ApiError> {
    let core = shared.broker();
    if core.user(name).is_none() || !core.has_vhost(vhost) {
        return Err(bad("vhost_or_user_not_found"));
    }
    Ok(())
}

pub(crate) async fn put_permission(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let doc = object_body(&body)?;
    let (configure, write, read) = (required(&doc, "configure")?, required(&doc, "write")?, required(&doc, "read")?);
    missing_user_or_vhost(&shared, &name, &vhost)?;
    let existed = shared.broker().users().permission(&name, &vhost).is_some();
    with_broker(&shared, |b, _, _| b.set_permissions(&name, &vhost, configure, write, read))?;
    Ok(created_or_not(existed))
}

pub(crate) async fn delete_permission(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&shared, &user)?;
    deleted_or_not_found(with_broker(&shared, |b, _, _| b.clear_permissions(&name, &vhost))?)
}

/// GET /api/topic-permissions/{vhost}/{user}: a list (404 when empty, as in RabbitMQ).
pub(crate) async fn show_topic_permission(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&shared, &user)?;
    let items = topic_permissions_json(&shared.broker(), |u, v| u == name && v == vhost);
    if items.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(json_list(items))
}

pub(crate) async fn put_topic_permission(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let doc = object_body(&body)?;
    let (exchange, write, read) = (required(&doc, "exchange")?, required(&doc, "write")?, required(&doc, "read")?);
    missing_user_or_vhost(&shared, &name, &vhost)?;
    let existed = shared
        .broker()
        .users()
        .topic_permissions()
        .any(|t| t.user == name && t.vhost == vhost && t.exchange == exchange);
    with_broker(&shared, |b, _, _| b.set_topic_permissions(&name, &vhost, exchange, write, read))?;
    Ok(created_or_not(existed))
}

pub(crate) async fn delete_topic_permission(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&shared, &user)?;
    deleted_or_not_found(with_broker(&shared, |b, _, _| b.clear_topic_permissions(&name, &vhost, None))?)
}

// ---- what a non-administrator sees ----------------------------------------------------------

/// The vhost-scoped collections whose listings a user without the administrator or monitoring
/// tag sees only in part (as in RabbitMQ: the vhosts it has permissions in, its own
/// connections and channels).
const SCOPED: [&str; 8] =
    ["queues", "exchanges", "bindings", "consumers", "connections", "channels", "aliveness-test", "vhost-limits"];

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The vhosts a non-administrator may see, for handlers that filter a listing themselves
/// (absent for administrators and monitoring users, who see every vhost).
#[derive(Clone, Debug)]
pub(crate) struct VisibleVhosts(pub Vec<String>);

impl VisibleVhosts {
    pub(crate) fn allows(visible: Option<&VisibleVhosts>, vhost: &str) -> bool {
        visible.is_none_or(|v| v.0.iter().any(|w| w == vhost))
    }
}

/// Keeps a non-administrator to the vhosts it has permissions in: a path naming another vhost
/// is `401 User not authorised to access virtual host`; a listing across vhosts is filtered.
pub(crate) async fn vhost_visibility(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let mut segments = path.trim_start_matches("/api/").split('/');
    let (Some(collection), vhost) = (segments.next(), segments.next()) else { return next.run(request).await };
    if !SCOPED.contains(&collection) {
        return next.run(request).await;
    }
    let visible: Option<Vec<String>> = {
        let core = shared.broker();
        if core.user(&user).is_some_and(|u| u.is_administrator() || u.has_tag("monitoring")) {
            None
        } else {
            Some(core.users().permissions().filter(|p| p.user == user).map(|p| p.vhost.clone()).collect())
        }
    };
    let Some(visible) = visible else { return next.run(request).await };
    let mut request = request;
    // A paged listing is filtered by its handler (before it counts and cuts pages); the
    // filter below only sees plain arrays.
    request.extensions_mut().insert(VisibleVhosts(visible.clone()));
    // /api/connections/{name} and /api/channels/{name} name a connection, not a vhost.
    let by_vhost = !matches!(collection, "connections" | "channels");
    match vhost.filter(|v| !v.is_empty()) {
        Some(v) if by_vhost => {
            if visible.contains(&percent_decode(v)) {
                next.run(request).await
            } else {
                let body = json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"});
                (StatusCode::UNAUTHORIZED, Json(body)).into_response()
            }
        }
        Some(_) => next.run(request).await,
        None => {
            let response = next.run(request).await;
            let (parts, body) = response.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&bytes) else {
                return Response::from_parts(parts, axum::body::Body::from(bytes));
            };
            let keep = |item: &Value| {
                if by_vhost {
                    item["vhost"].as_str().is_some_and(|v| visible.iter().any(|w| w == v))
                } else {
                    item["user"].as_str() == Some(user.as_str())
                }
            };
            let kept: Vec<Value> = items.into_iter().filter(keep).collect();
            let mut parts = parts;
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            (parts, Json(Value::Array(kept))).into_response()
        }
    }
}
