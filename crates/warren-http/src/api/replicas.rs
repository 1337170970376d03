//! Quorum queue members, changed by an operator (RabbitMQ 3.13's paths, as
//! `rabbitmq-queues add_member`, `delete_member`, `grow` and `shrink` do it): administrators
//! only. Each change is answered once the cluster recorded it; the queue's group is changed
//! to match by its leader right after (watch `members` in `/api/queues/{vhost}/{name}`).

use super::access::admin;
use super::{parse_body, ApiError, ApiResult, User};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_server::cluster::MembersError;
use warren_server::Shared;

fn refused(e: MembersError) -> ApiError {
    match e {
        MembersError::NotQuorum => ApiError::BadRequest("not a quorum queue".into()),
        MembersError::Refused(why) => ApiError::BadRequest(why),
        MembersError::Unavailable(why) => ApiError::Unavailable(why),
    }
}

/// The `node` a body names.
fn node_of(body: &[u8]) -> Result<String, ApiError> {
    match parse_body(body)?.get("node") {
        Some(Value::String(node)) if !node.is_empty() => Ok(node.clone()),
        _ => Err(ApiError::BadRequest("node is missing".into())),
    }
}

async fn change(shared: Arc<Shared>, user: &str, vhost: &str, name: &str, body: &[u8], add: bool) -> ApiResult {
    admin(&shared, user)?;
    let node = node_of(body)?;
    if !shared.broker().has_queue(vhost, name) {
        return Err(ApiError::NotFound);
    }
    let view = shared.cluster_view();
    view.change_member(vhost, name, &node, add).await.map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/queues/quorum/{vhost}/{name}/replicas/add with `{"node": ...}`.
pub(crate) async fn add(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    change(shared, &user, &vhost, &name, &body, true).await
}

/// DELETE (or POST) /api/queues/quorum/{vhost}/{name}/replicas/delete with `{"node": ...}`.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    change(shared, &user, &vhost, &name, &body, false).await
}

/// A pattern of a grow request (absent: every name), compiled as RabbitMQ's are.
fn pattern(doc: &Value, key: &str) -> Result<regex::Regex, ApiError> {
    let text = match doc.get(key) {
        None | Some(Value::Null) => ".*",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::BadRequest(format!("{key} must be a string"))),
    };
    regex::Regex::new(text).map_err(|e| ApiError::BadRequest(format!("{key} is not a regular expression: {e}")))
}

/// What a grow or shrink did, queue by queue.
fn outcome(list: warren_server::cluster::MembersOutcome) -> Value {
    let rows: Vec<Value> = list
        .into_iter()
        .map(|(vhost, name, done)| match done {
            Ok(size) => json!({"vhost": vhost, "name": name, "size": size, "result": "ok"}),
            Err(why) => json!({"vhost": vhost, "name": name, "result": "error", "reason": why}),
        })
        .collect();
    Value::Array(rows)
}

/// POST /api/queues/quorum/replicas/on/{node}/grow with `strategy` (`all`, the default, or
/// `even`), `vhost_pattern` and `queue_pattern` (regular expressions, default: all).
pub(crate) async fn grow(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(node): Path<String>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let doc = parse_body(&body)?;
    let even_only = match doc.get("strategy") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "all" => false,
        Some(Value::String(s)) if s == "even" => true,
        Some(_) => return Err(ApiError::BadRequest("strategy must be all or even".into())),
    };
    let (vhosts, queues) = (pattern(&doc, "vhost_pattern")?, pattern(&doc, "queue_pattern")?);
    let select = Arc::new(move |vhost: &str, name: &str| vhosts.is_match(vhost) && queues.is_match(name));
    let view = shared.cluster_view();
    let done = view.change_members_on(&node, true, even_only, select).await.map_err(refused)?;
    Ok(Json(outcome(done)).into_response())
}

/// DELETE /api/queues/quorum/replicas/on/{node}/shrink: every quorum queue's member on `node`
/// taken out (a queue's last member stays).
pub(crate) async fn shrink(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(node): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    let view = shared.cluster_view();
    let done = view.change_members_on(&node, false, false, Arc::new(|_: &str, _: &str| true)).await.map_err(refused)?;
    Ok(Json(outcome(done)).into_response())
}

/// DELETE /api/nodes/{name}: the node, stopped, taken out of the cluster (`warrenctl
/// forget_cluster_node`; RabbitMQ's API has no such path, its CLI does it over Erlang
/// distribution). 404 for a node not in the cluster.
pub(crate) async fn forget_node(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(node): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    let view = shared.cluster_view();
    if !view.nodes().iter().any(|n| n.name == node) {
        return Err(ApiError::NotFound);
    }
    view.forget_node(&node).await.map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
