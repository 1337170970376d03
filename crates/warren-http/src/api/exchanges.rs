//! /api/exchanges: list, declare, delete, publish.

use super::queues::properties_from_json;
use super::{arguments, created_or_not, flag, parse_body, query_flag, with_broker, ApiError, ApiResult, User};
use crate::table_json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use warren_core::{Caller, ExchangeSummary};
use warren_server::Shared;

fn exchange_json(x: &ExchangeSummary, user: &str) -> Value {
    json!({
        "vhost": x.vhost,
        "name": x.name,
        "type": x.kind,
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_json(&x.arguments),
        "incoming": [],
        "outgoing": [],
        "user_who_performed_action": if x.name.is_empty() || x.name.starts_with("amq.") { "rmq-internal" } else { user },
    })
}

fn listing(shared: &Shared, user: &str, vhost: Option<&str>, name: Option<&str>) -> Vec<Value> {
    let list = shared.broker().exchanges();
    list.iter()
        .filter(|x| vhost.is_none_or(|v| v == x.vhost) && name.is_none_or(|n| n == x.name))
        .map(|x| exchange_json(x, user))
        .collect()
}

pub(crate) async fn list(State(shared): State<Arc<Shared>>, Extension(User(user)): Extension<User>) -> Response {
    super::json_list(listing(&shared, &user, None, None))
}

pub(crate) async fn list_vhost(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> Response {
    super::json_list(listing(&shared, &user, Some(&vhost), None))
}

pub(crate) async fn show(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let x = listing(&shared, &user, Some(&vhost), Some(&name)).pop().ok_or(ApiError::NotFound)?;
    Ok(Json(x).into_response())
}

pub(crate) async fn declare(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let doc = parse_body(&body)?;
    // RabbitMQ declares a direct exchange when the type is left out.
    let kind = match doc.get("type") {
        None | Some(Value::Null) => "direct",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(ApiError::BadRequest("type must be a string".into())),
    };
    let durable = flag(&doc, "durable", true)?;
    let auto_delete = flag(&doc, "auto_delete", false)?;
    let internal = flag(&doc, "internal", false)?;
    let args = arguments(&doc)?;
    let existed = shared.broker().exchanges().iter().any(|x| x.vhost == vhost && x.name == name);
    with_broker(&shared, |b, now, out| {
        b.declare_exchange(Caller::User(&user), &vhost, &name, kind, durable, auto_delete, internal, args, now, out)
    })?;
    Ok(created_or_not(existed))
}

pub(crate) async fn remove(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let if_unused = query_flag(&query, "if-unused");
    with_broker(&shared, |b, now, out| {
        b.delete_exchange_checked(Caller::User(&user), &vhost, &name, if_unused, now, out)
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST /api/exchanges/{vhost}/{name}/publish: `routing_key`, `payload`, `payload_encoding`
/// ("string" or "base64"), `properties`; answers `{"routed": bool}`.
pub(crate) async fn publish(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let doc = parse_body(&body)?;
    let field =
        |k: &str| doc.get(k).and_then(Value::as_str).ok_or_else(|| ApiError::BadRequest(format!("{k} is required")));
    let routing_key = field("routing_key")?;
    let payload = field("payload")?;
    let body = match doc.get("payload_encoding").and_then(Value::as_str) {
        Some("string") => Bytes::copy_from_slice(payload.as_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Bytes::from)
            .map_err(|_| ApiError::BadRequest("payload is not valid base64".into()))?,
        _ => return Err(ApiError::BadRequest("payload_encoding must be string or base64".into())),
    };
    let properties = properties_from_json(doc.get("properties"))?;
    // The default exchange is named "amq.default" in the API's paths.
    let exchange = if name == "amq.default" { "" } else { name.as_str() };
    let routed = with_broker(&shared, |b, now, out| {
        b.publish_message(Caller::User(&user), &vhost, exchange, routing_key, properties, body, now, out)
    })
    .map_err(|e| match e {
        // RabbitMQ answers a publish to a missing exchange with 400 and the AMQP error.
        ApiError::NotFound => ApiError::BadRequest(format!("404 NOT_FOUND - no exchange '{name}' in vhost '{vhost}'")),
        other => other,
    })?;
    Ok(Json(json!({"routed": routed})).into_response())
}
