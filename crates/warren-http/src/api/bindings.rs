//! /api/bindings and the binding lists of exchanges and queues.

use super::{arguments, parse_body, with_broker, ApiError, ApiResult, User};
use crate::table_json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_amqp::FieldTable;
use warren_core::{BindingSummary, Caller};
use warren_server::Shared;

/// The key that names a binding in the API's paths: the routing key alone (`~` when it is
/// empty) when the binding has no arguments, else the routing key, `~` and a hash of the
/// arguments (RabbitMQ's scheme, with its own hash).
pub(crate) fn properties_key(routing_key: &str, args: &FieldTable) -> String {
    if args.iter().next().is_none() {
        return if routing_key.is_empty() { "~".into() } else { quote(routing_key) };
    }
    // FNV-1a over the arguments' JSON (keys sorted): stable across runs and versions.
    let text = table_json(args).to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}~{:x}", quote(routing_key), h)
}

pub(crate) fn binding_json(b: &BindingSummary) -> Value {
    json!({
        "source": b.source,
        "vhost": b.vhost,
        "destination": b.destination,
        "destination_type": if b.to_queue { "queue" } else { "exchange" },
        "routing_key": b.routing_key,
        "arguments": table_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

fn filtered(shared: &Shared, keep: impl Fn(&BindingSummary) -> bool) -> Response {
    let list = shared.broker().bindings();
    super::json_list(list.iter().filter(|b| keep(b)).map(binding_json).collect())
}

/// The default exchange is "amq.default" in the API's paths.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

pub(crate) async fn list(State(shared): State<Arc<Shared>>) -> Response {
    filtered(&shared, |_| true)
}

pub(crate) async fn list_vhost(State(shared): State<Arc<Shared>>, Path(vhost): Path<String>) -> Response {
    filtered(&shared, |b| b.vhost == vhost)
}

fn require_exchange(shared: &Shared, vhost: &str, name: &str) -> Result<(), ApiError> {
    if shared.broker().exchanges().iter().any(|x| x.vhost == vhost && x.name == name) {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

fn require_queue(shared: &Shared, vhost: &str, name: &str) -> Result<(), ApiError> {
    if shared.broker().has_queue(vhost, name) {
        Ok(())
    } else {
        Err(ApiError::NotFound)
    }
}

pub(crate) async fn of_source(
    State(shared): State<Arc<Shared>>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let name = exchange_name(&name);
    require_exchange(&shared, &vhost, name)?;
    Ok(filtered(&shared, |b| b.vhost == vhost && b.source == name))
}

pub(crate) async fn of_destination(
    State(shared): State<Arc<Shared>>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let name = exchange_name(&name);
    require_exchange(&shared, &vhost, name)?;
    Ok(filtered(&shared, |b| b.vhost == vhost && !b.to_queue && b.destination == name))
}

pub(crate) async fn of_queue(
    State(shared): State<Arc<Shared>>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    require_queue(&shared, &vhost, &name)?;
    Ok(filtered(&shared, |b| b.vhost == vhost && b.to_queue && b.destination == name))
}

/// `q` or `e` in the path: whether the destination is a queue.
fn to_queue(kind: &str) -> Result<bool, ApiError> {
    match kind {
        "q" => Ok(true),
        "e" => Ok(false),
        _ => Err(ApiError::NotFound),
    }
}

fn require_ends(shared: &Shared, vhost: &str, source: &str, dest: &str, queue: bool) -> Result<(), ApiError> {
    require_exchange(shared, vhost, source)?;
    if queue {
        require_queue(shared, vhost, dest)
    } else {
        require_exchange(shared, vhost, dest)
    }
}

pub(crate) async fn between(
    State(shared): State<Arc<Shared>>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let (source, queue) = (exchange_name(&source), to_queue(&kind)?);
    require_ends(&shared, &vhost, source, &dest, queue)?;
    Ok(filtered(&shared, |b| b.vhost == vhost && b.source == source && b.to_queue == queue && b.destination == dest))
}

/// POST: creates a binding from `routing_key` and `arguments`; 201 with the new binding's
/// path relative to this one in Location.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let (source, queue) = (exchange_name(&source), to_queue(&kind)?);
    require_ends(&shared, &vhost, source, &dest, queue)?;
    let doc = parse_body(&body)?;
    let routing_key = match doc.get("routing_key") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::BadRequest("routing_key must be a string".into())),
    };
    let args = arguments(&doc)?;
    let key = properties_key(routing_key, &args);
    with_broker(&shared, |b, now, out| {
        b.set_binding(Caller::User(&user), true, &vhost, source, &dest, queue, routing_key, args, now, out)
    })?;
    let location = format!("{}/{}", percent_encode(&dest), percent_encode(&key));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn find(shared: &Shared, vhost: &str, source: &str, dest: &str, queue: bool, props: &str) -> Option<BindingSummary> {
    shared.broker().bindings().into_iter().find(|b| {
        b.vhost == vhost
            && b.source == source
            && b.to_queue == queue
            && b.destination == dest
            && properties_key(&b.routing_key, &b.arguments) == props
    })
}

pub(crate) async fn show_one(
    State(shared): State<Arc<Shared>>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let (source, queue) = (exchange_name(&source), to_queue(&kind)?);
    let b = find(&shared, &vhost, source, &dest, queue, &props).ok_or(ApiError::NotFound)?;
    Ok(Json(binding_json(&b)).into_response())
}

pub(crate) async fn remove(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let (source, queue) = (exchange_name(&source), to_queue(&kind)?);
    let b = find(&shared, &vhost, source, &dest, queue, &props).ok_or(ApiError::NotFound)?;
    if b.source.is_empty() {
        return Err(ApiError::BadRequest("cannot remove the default exchange's bindings".into()));
    }
    with_broker(&shared, |br, now, out| {
        br.set_binding(
            Caller::User(&user),
            false,
            &vhost,
            &b.source,
            &b.destination,
            queue,
            &b.routing_key,
            b.arguments.clone(),
            now,
            out,
        )
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A routing key in a properties key: percent-encoded but for letters, digits, `-`, `.` and
/// `_` (as RabbitMQ writes `a.*` as `a.%2A`), so `~` only ever separates.
fn quote(routing_key: &str) -> String {
    let mut out = String::with_capacity(routing_key.len());
    for b in routing_key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters, for a path segment.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
