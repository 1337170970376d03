//! The management API beyond policies: RabbitMQ's paths and JSON shapes (as of 3.10) for
//! the overview, nodes, connections, channels, consumers, exchanges, queues, bindings,
//! definitions, health checks, whoami, and access control (vhosts, users, permissions).
//!
//! Every route here is behind HTTP basic auth (the [`authenticate`] layer), which leaves the
//! user's name in the request for [`whoami`](objects::whoami). Handlers are thin: they parse
//! the request, call one of the broker's management functions under the lock, and shape the
//! answer as RabbitMQ does.

mod access;
mod bindings;
pub(crate) mod definitions;
mod exchanges;
mod health;
mod limits;
mod objects;
mod paging;
mod queues;
mod rates;
mod replicas;

use crate::{authorize, unauthorized};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use warren_amqp::{ProtocolError, ReplyCode};
use warren_core::{Broker, ConnId, Out};
use warren_server::Shared;

/// This node's name (RabbitMQ's `rabbit@host`), as configured.
pub(crate) fn node_name(shared: &Shared) -> String {
    shared.cluster_view().node_name()
}

/// The broker's listeners, as far as the management API knows them (connection names, the
/// port-listener health check).
#[derive(Clone, Copy, Debug, Default)]
pub struct Listeners {
    pub amqp: Option<SocketAddr>,
    pub amqps: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// The user a request authenticated as.
#[derive(Clone, Debug)]
pub(crate) struct User(pub String);

/// The routes of this module, each behind basic auth.
pub(crate) fn router(shared: Arc<Shared>, listeners: Listeners, config: crate::HttpConfig) -> Router<Arc<Shared>> {
    // Only a definitions import may be large (see `crate::OTHER_BODY_SIZE_MAX_BYTES`).
    let import_limit = || axum::extract::DefaultBodyLimit::max(config.max_body_size_bytes);
    Router::new()
        .route("/api/overview", get(objects::overview))
        .route("/api/cluster-name", get(objects::cluster_name))
        .route("/api/whoami", get(objects::whoami))
        .route("/api/nodes", get(objects::nodes))
        .route("/api/nodes/{name}", get(objects::node).delete(replicas::forget_node))
        .route("/api/connections", get(objects::connections))
        .route("/api/connections/{name}", get(objects::connection).delete(objects::close_connection))
        .route("/api/connections/{name}/channels", get(objects::connection_channels))
        .route("/api/channels", get(objects::channels))
        .route("/api/channels/{name}", get(objects::channel))
        .route("/api/consumers", get(objects::consumers))
        .route("/api/consumers/{vhost}", get(objects::vhost_consumers))
        .route("/api/exchanges", get(exchanges::list))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
        .route("/api/exchanges/{vhost}/{name}", get(exchanges::show).put(exchanges::declare).delete(exchanges::remove))
        .route("/api/exchanges/{vhost}/{name}/publish", post(exchanges::publish))
        .route("/api/exchanges/{vhost}/{name}/bindings/source", get(bindings::of_source))
        .route("/api/exchanges/{vhost}/{name}/bindings/destination", get(bindings::of_destination))
        .route("/api/queues", get(queues::list))
        .route("/api/queues/{vhost}", get(queues::list_vhost))
        .route("/api/queues/quorum/replicas/on/{node}/grow", post(replicas::grow))
        .route("/api/queues/quorum/replicas/on/{node}/shrink", delete(replicas::shrink))
        .route("/api/queues/quorum/{vhost}/{name}/replicas/add", post(replicas::add))
        .route("/api/queues/quorum/{vhost}/{name}/replicas/delete", delete(replicas::delete).post(replicas::delete))
        .route("/api/queues/{vhost}/{name}", get(queues::show).put(queues::declare).delete(queues::remove))
        .route("/api/queues/{vhost}/{name}/contents", delete(queues::purge))
        .route("/api/queues/{vhost}/{name}/get", post(queues::get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings::of_queue))
        .route("/api/bindings", get(bindings::list))
        .route("/api/bindings/{vhost}", get(bindings::list_vhost))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{dest}", get(bindings::between).post(bindings::create))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(bindings::show_one).delete(bindings::remove),
        )
        .route("/api/definitions", get(definitions::export).post(definitions::import).layer(import_limit()))
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost).layer(import_limit()),
        )
        .route("/api/health/checks/alarms", get(health::alarms))
        .route("/api/health/checks/local-alarms", get(health::alarms))
        .route("/api/health/checks/virtual-hosts", get(health::ok))
        .route("/api/health/checks/node-is-quorum-critical", get(health::quorum_critical))
        .route("/api/health/checks/port-listener/{port}", get(health::port_listener))
        .route("/api/aliveness-test/{vhost}", get(health::aliveness))
        .route("/api/vhosts", get(access::list_vhosts))
        .route("/api/vhosts/{vhost}", get(access::show_vhost).put(access::put_vhost).delete(access::delete_vhost))
        .route("/api/vhosts/{vhost}/permissions", get(access::vhost_permissions::<false>))
        .route("/api/vhosts/{vhost}/connections", get(objects::vhost_connections))
        .route("/api/vhosts/{vhost}/topic-permissions", get(access::vhost_permissions::<true>))
        .route("/api/vhost-limits", get(limits::list))
        .route("/api/vhost-limits/{vhost}", get(limits::of_vhost))
        .route("/api/vhost-limits/{vhost}/{name}", put(limits::put).delete(limits::delete))
        .route("/api/user-limits", get(limits::list_users))
        .route("/api/user-limits/{user}", get(limits::of_user))
        .route("/api/user-limits/{user}/{name}", put(limits::put_user).delete(limits::delete_user))
        .route("/api/users", get(access::list_users))
        .route("/api/users/without-permissions", get(access::users_without_permissions))
        .route("/api/users/bulk-delete", post(access::bulk_delete_users))
        .route("/api/users/{user}", get(access::show_user).put(access::put_user).delete(access::delete_user))
        .route("/api/users/{user}/permissions", get(access::user_permissions::<false>))
        .route("/api/users/{user}/topic-permissions", get(access::user_permissions::<true>))
        .route("/api/permissions", get(access::list_permissions::<false>))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(access::show_permission).put(access::put_permission).delete(access::delete_permission),
        )
        .route("/api/topic-permissions", get(access::list_permissions::<true>))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(access::show_topic_permission)
                .put(access::put_topic_permission)
                .delete(access::delete_topic_permission),
        )
        .layer(axum::middleware::from_fn_with_state(shared.clone(), access::vhost_visibility))
        .layer(axum::middleware::from_fn_with_state(shared, authenticate))
        .layer(Extension(Arc::new(rates::Rates::default())))
        .layer(Extension(listeners))
}

/// Basic auth against the broker's users; the user goes into the request's extensions.
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    match authorize(&shared, request.headers(), peer) {
        Ok(user) => {
            request.extensions_mut().insert(User(user));
            next.run(request).await
        }
        Err(reason) => {
            let mut response = unauthorized(reason);
            // The web UI asks with X-Requested-With: a challenge would make the browser open its
            // own login dialog over the UI's form, so the UI gets the 401 without one.
            if request.headers().get("x-requested-with").is_some_and(|v| v == "XMLHttpRequest") {
                response.headers_mut().remove(axum::http::header::WWW_AUTHENTICATE);
            }
            response
        }
    }
}

/// An error answered as RabbitMQ's management API answers it.
pub(crate) enum ApiError {
    NotFound,
    BadRequest(String),
    /// A 400 with its own `error` (as RabbitMQ's `page_out_of_range`).
    Invalid {
        error: &'static str,
        reason: String,
    },
    /// The request needs the administrator tag.
    NotAdministrator,
    /// The cluster could not do it now (no majority), with why: a 503.
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => crate::not_found(),
            ApiError::BadRequest(reason) => crate::bad_request(&reason),
            ApiError::Invalid { error, reason } => {
                (StatusCode::BAD_REQUEST, Json(json!({"error": error, "reason": reason}))).into_response()
            }
            ApiError::Unavailable(reason) => {
                (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "service_unavailable", "reason": reason})))
                    .into_response()
            }
            ApiError::NotAdministrator => (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "not_authorised", "reason": "Not administrator user"})),
            )
                .into_response(),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        if e.code == ReplyCode::NotFound {
            return ApiError::NotFound;
        }
        // The AMQP reply text starts with the code's name ("PRECONDITION_FAILED - ..."); the
        // HTTP reason is the rest, as RabbitMQ gives it.
        let reason = match e.text.split_once(" - ") {
            Some((_, rest)) => rest.to_string(),
            None => e.text,
        };
        ApiError::BadRequest(reason)
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

/// Runs a broker operation under the lock and hands what it produced to the connections.
/// What it changes in the definitions is the request's ([`broker_for_change`]).
pub(crate) fn with_broker<T>(
    shared: &Shared,
    f: impl FnOnce(&mut Broker, u64, &mut Vec<(ConnId, Out)>) -> Result<T, ProtocolError>,
) -> Result<T, ApiError> {
    let now_ms = shared.now_ms();
    let mut out = Vec::new();
    let mut core = broker_for_change(shared);
    let result = f(&mut core.broker, now_ms, &mut out);
    core.deliver(&mut out);
    Ok(result?)
}

// ---- changes in a cluster ----------------------------------------------------------------
//
// In a cluster, a change a request makes to the definitions (a queue, exchange or binding
// declared or deleted, a vhost, user, permission, policy or limit set or cleared, a definitions
// import) is answered only once the metadata group committed it (docs/clustering.md, "The
// metadata group"). Every request runs inside [`replicate_changes`], which gives it an owner
// id; the handlers lock the broker for a change through [`broker_for_change`] (as
// [`with_broker`] does), so the broker keeps what they change under that id; once the handler
// has answered (and let go of the lock), the layer takes those changes and waits for the
// cluster. A change the cluster did not take was undone here by the host, and the answer is
// a 503 with the reason instead of the handler's. With no replicator (a node on its own)
// nothing of this runs.

tokio::task_local! {
    /// The owner of the changes made by the request being served (see [`replicate_changes`]).
    static CHANGE_OWNER: ConnId;
}

/// The broker, locked for a change made by the request being served: what changes while it
/// is held is kept for that request's replication (none outside a cluster).
pub(crate) fn broker_for_change(shared: &Shared) -> ChangeGuard<'_> {
    let mut core = shared.broker();
    if let Ok(owner) = CHANGE_OWNER.try_with(|owner| *owner) {
        core.broker.set_change_owner(Some(owner));
    }
    ChangeGuard(core)
}

/// See [`broker_for_change`]; dropping it makes later changes the broker's own again.
pub(crate) struct ChangeGuard<'a>(warren_server::CoreGuard<'a>);

impl<'a> std::ops::Deref for ChangeGuard<'a> {
    type Target = warren_server::CoreGuard<'a>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChangeGuard<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.0.broker.set_change_owner(None);
    }
}

/// The layer of every management route: in a cluster, answers a request that changed the
/// definitions once the metadata group committed the change, or with 503 and the reason when
/// it did not (the change was undone here by then).
pub(crate) async fn replicate_changes(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(replicator) = shared.replicator().cloned() else { return next.run(request).await };
    let owner = shared.new_id();
    // A task of its own, so that a client hanging up cannot leave a change made here and
    // never handed over.
    let task = tokio::spawn(CHANGE_OWNER.scope(owner, async move {
        let response = next.run(request).await;
        // The handler has answered and let go of the broker: its changes are complete.
        let Some(ops) = shared.broker().take_replication(Some(owner)) else { return response };
        match replicator.replicate(ops).await {
            Ok(()) => response,
            Err(why) => not_committed(&why),
        }
    }));
    task.await.unwrap_or_else(|e| {
        let reason = format!("the request failed: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "internal", "reason": reason}))).into_response()
    })
}

/// The answer to a change the cluster did not commit.
pub(crate) fn not_committed(why: &str) -> Response {
    let reason = format!("the cluster did not commit the change: {why}");
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "not_committed", "reason": reason}))).into_response()
}

/// The JSON body of a request, or 400.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))
}

/// An object's `arguments`, as a field table (absent or null: empty).
pub(crate) fn arguments(doc: &Value) -> Result<warren_amqp::FieldTable, ApiError> {
    match doc.get("arguments") {
        None | Some(Value::Null) => Ok(warren_amqp::FieldTable::new()),
        Some(v) => match crate::to_field(v) {
            warren_amqp::FieldValue::Table(t) => Ok(t),
            _ => Err(ApiError::BadRequest("arguments must be an object".into())),
        },
    }
}

/// A boolean field of a body; RabbitMQ also takes "true"/"false" strings.
pub(crate) fn flag(doc: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(_) => Err(ApiError::BadRequest(format!("{key} must be a boolean"))),
    }
}

/// 201 when the object is new, 204 when it was there already (as RabbitMQ answers a PUT).
pub(crate) fn created_or_not(existed: bool) -> Response {
    if existed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::CREATED.into_response()
    }
}

/// 204 when something was deleted, else 404 (RabbitMQ's answers to a DELETE).
pub(crate) fn deleted_or_not_found(deleted: bool) -> ApiResult {
    if deleted {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound)
    }
}

pub(crate) fn json_list(items: Vec<Value>) -> Response {
    Json(Value::Array(items)).into_response()
}

/// A query parameter that RabbitMQ treats as a flag (`if-empty=true`).
pub(crate) fn query_flag(query: &std::collections::HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true")
}
