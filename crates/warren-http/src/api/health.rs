//! /api/health/checks/* and /api/aliveness-test.

use super::{with_broker, ApiResult, Listeners, User};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use std::sync::Arc;
use warren_core::{Caller, GetAckMode};
use warren_server::Shared;

/// Checks that hold for a single node without alarms: alarms, local-alarms, virtual-hosts.
pub(crate) async fn ok() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// The resource alarms in force, as RabbitMQ's alarms health check reports them: 200 when
/// none, 503 listing them otherwise.
pub(crate) async fn alarms(State(shared): State<Arc<Shared>>) -> Response {
    let alarms = shared.broker().alarms();
    if !alarms.any() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let node = super::node_name(&shared);
    let list: Vec<_> = [("memory", alarms.memory), ("disk", alarms.disk)]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(resource, _)| json!({"node": node, "resource": resource}))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": "There are alarms in effect in the cluster", "alarms": list})),
    )
        .into_response()
}

/// RabbitMQ's `node-is-quorum-critical` check (what `rabbitmq-queues
/// check_if_node_is_quorum_critical` asks before a node is stopped): 503 listing the quorum
/// queues with a member on this node whose running members are no more than a majority (this
/// node stopped, they would lose their quorum), 200 otherwise; a single node has no quorum to
/// lose, and says so as RabbitMQ does.
pub(crate) async fn quorum_critical(State(shared): State<Arc<Shared>>) -> Response {
    let view = shared.cluster_view();
    if view.nodes().len() <= 1 {
        return Json(json!({"status": "ok", "reason": "single node cluster"})).into_response();
    }
    let me = view.node_name();
    let keys = shared.broker().queue_keys();
    let mut critical = Vec::new();
    for chunk in keys.chunks(256) {
        let details = shared.broker().queue_details(chunk);
        for (q, _) in details {
            if q.arguments.get("x-queue-type").and_then(|t| t.as_str()) != Some("quorum") {
                continue;
            }
            let Some(r) = view.replica(&q.vhost, &q.name) else { continue };
            if !r.members.contains(&me) {
                continue;
            }
            let running = r.online.iter().filter(|n| r.members.contains(n)).count();
            if running <= r.members.len() / 2 + 1 {
                critical.push(json!({
                    "readable_name": format!("queue '{}' in vhost '{}'", q.name, q.vhost),
                    "name": q.name.as_str(),
                    "virtual_host": q.vhost.as_str(),
                    "type": "quorum",
                }));
            }
        }
    }
    if critical.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": "There are quorum queues that would lose their quorum if the target node is shut down",
            "queues": critical,
        })),
    )
        .into_response()
}

/// The port is one of Warren's listeners (AMQP, AMQPS, HTTP or HTTPS), as RabbitMQ checks its own.
pub(crate) async fn port_listener(Extension(listeners): Extension<Listeners>, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return crate::bad_request("port must be a number");
    };
    let ports: Vec<u16> =
        [listeners.amqp, listeners.amqps, listeners.http, listeners.https].iter().flatten().map(|a| a.port()).collect();
    if ports.contains(&port) {
        Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "No active listener", "missing": port, "ports": ports})),
        )
            .into_response()
    }
}

/// Declares the queue `aliveness-test`, publishes a message to it and takes it back.
pub(crate) async fn aliveness(
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    const QUEUE: &str = "aliveness-test";
    let got = with_broker(&shared, |b, now, out| {
        b.declare_queue(Caller::User(&user), &vhost, QUEUE, false, false, Default::default(), now, out)?;
        b.publish_message(
            Caller::User(&user),
            &vhost,
            "",
            QUEUE,
            Default::default(),
            Bytes::from_static(b"test_message"),
            now,
            out,
        )?;
        b.get_messages(Caller::User(&user), &vhost, QUEUE, 1, GetAckMode::Ack, now, out)
    })?;
    if got.first().is_some_and(|m| &m.body[..] == b"test_message") {
        Ok(Json(json!({"status": "ok"})).into_response())
    } else {
        Ok((StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "reason": "message lost"})))
            .into_response())
    }
}
