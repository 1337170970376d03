//! /api/vhost-limits (RabbitMQ's `max-connections` and `max-queues` per vhost) and
//! /api/user-limits (`max-connections` and `max-channels` per user), with RabbitMQ 3.10's paths,
//! JSON shapes, status codes and validation texts. Reading vhost limits needs access to the
//! vhost (see `access::vhost_visibility`); everything else needs the administrator tag.

use super::access::{admin, object_body};
use super::{json_list, with_broker, ApiError, ApiResult, User};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use warren_core::{UserLimit, UserLimits, VhostLimit, VhostLimits};
use warren_server::Shared;

fn limits_json(vhost: &str, l: &VhostLimits) -> Value {
    let mut value = Map::new();
    if let Some(n) = l.max_connections {
        value.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = l.max_queues {
        value.insert("max-queues".into(), json!(n));
    }
    json!({"vhost": vhost, "value": value})
}

/// Every vhost's limits, for `/api/vhost-limits` and the definitions export.
pub(crate) fn all_limits_json(broker: &warren_core::Broker) -> Vec<(String, Value)> {
    broker.vhost_limits().iter().map(|(v, l)| (v.clone(), limits_json(v, l))).collect()
}

/// GET /api/vhost-limits
pub(crate) async fn list(State(shared): State<Arc<Shared>>) -> Response {
    json_list(all_limits_json(&shared.broker().broker).into_iter().map(|(_, v)| v).collect())
}

/// GET /api/vhost-limits/{vhost}
pub(crate) async fn of_vhost(State(shared): State<Arc<Shared>>, Path(vhost): Path<String>) -> ApiResult {
    let core = shared.broker();
    if !core.has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    Ok(json_list(all_limits_json(&core.broker).into_iter().filter(|(v, _)| *v == vhost).map(|(_, v)| v).collect()))
}

/// The limit a PUT names and the value its body gives, or RabbitMQ's answer to a body without a
/// value, an unknown limit (`component` says which kind) or a value that is not a number.
fn requested<L>(
    body: &[u8],
    name: &str,
    parse: fn(&str) -> Option<L>,
    unknown_prefix: &str,
    component: &str,
) -> Result<(L, i64), ApiError> {
    let doc = object_body(body)?;
    let Some(value) = doc.get("value") else {
        return Err(ApiError::BadRequest("[{key_missing,value}]".into()));
    };
    let Some(limit) = parse(name) else {
        return Err(ApiError::BadRequest(format!(
            "{unknown_prefix}Unrecognised terms [{{<<\"{name}\">>,{value}}}] in {component}"
        )));
    };
    let Some(n) = value.as_i64() else {
        return Err(ApiError::BadRequest(format!(
            "Validation failed\n\n{name} should be a number, actually was {value}\n"
        )));
    };
    Ok((limit, n))
}

/// PUT /api/vhost-limits/{vhost}/{name} with `{"value": N}`; a negative N means no limit.
pub(crate) async fn put(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let (limit, n) = requested(&body, &name, VhostLimit::parse, "Validation failed\n\n", "limits\n")?;
    if !shared.broker().has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    with_broker(&shared, |b, _, _| b.set_vhost_limit(&vhost, limit, n))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// DELETE /api/vhost-limits/{vhost}/{name}: 204 whether or not it was set, as in RabbitMQ.
pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&shared, &user)?;
    if !shared.broker().has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    if let Some(limit) = VhostLimit::parse(&name) {
        with_broker(&shared, |b, _, _| b.clear_vhost_limit(&vhost, limit))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A user's limits as RabbitMQ shows them (`{"max-connections": N, ...}`, empty when none).
pub(crate) fn user_limits_value(l: &UserLimits) -> Value {
    let mut value = Map::new();
    if let Some(n) = l.max_connections {
        value.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = l.max_channels {
        value.insert("max-channels".into(), json!(n));
    }
    Value::Object(value)
}

fn user_limits_list(shared: &Shared, only: Option<&str>) -> Vec<Value> {
    let core = shared.broker();
    core.user_limits()
        .iter()
        .filter(|(u, _)| only.is_none_or(|o| o == u))
        .map(|(u, l)| json!({"user": u, "value": user_limits_value(l)}))
        .collect()
}

/// GET /api/user-limits
pub(crate) async fn list_users(State(shared): State<Arc<Shared>>, Extension(User(user)): Extension<User>) -> ApiResult {
    admin(&shared, &user)?;
    Ok(json_list(user_limits_list(&shared, None)))
}

/// GET /api/user-limits/{user}
pub(crate) async fn of_user(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&shared, &user)?;
    if shared.broker().user(&name).is_none() {
        return Err(ApiError::NotFound);
    }
    Ok(json_list(user_limits_list(&shared, Some(&name))))
}

/// PUT /api/user-limits/{user}/{name} with `{"value": N}`; a negative N means no limit.
pub(crate) async fn put_user(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((name, limit)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    admin(&shared, &user)?;
    let (which, n) = requested(&body, &limit, UserLimit::parse, "", "user-limits")?;
    if shared.broker().user(&name).is_none() {
        return Err(ApiError::BadRequest(format!("no_such_user: {name}")));
    }
    with_broker(&shared, |b, _, _| b.set_user_limit(&name, which, n))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// DELETE /api/user-limits/{user}/{name}: 204 whether or not it was set.
pub(crate) async fn delete_user(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((name, limit)): Path<(String, String)>,
) -> ApiResult {
    admin(&shared, &user)?;
    if let Some(which) = UserLimit::parse(&limit) {
        with_broker(&shared, |b, _, _| b.clear_user_limit(&name, which))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
