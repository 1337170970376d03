//! /api/health/checks/* and /api/aliveness-test.

use super::{with_broker, ApiResult};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use warren_core::GetAckMode;
use warren_server::Shared;

/// Checks that hold for a single node without alarms: alarms, local-alarms, virtual-hosts.
pub(crate) async fn ok() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// A single node has no quorum to lose (RabbitMQ answers the same for a one-node cluster).
pub(crate) async fn quorum_critical() -> Response {
    Json(json!({"status": "ok", "reason": "single node cluster"})).into_response()
}

/// Something listens on the port on this host (Warren's AMQP or HTTP listener).
pub(crate) async fn port_listener(Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return crate::bad_request("port must be a number");
    };
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => Json(json!({"status": "ok", "port": port})).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "No active listener", "missing": port, "ports": []})),
        )
            .into_response(),
    }
}

/// Declares the queue `aliveness-test`, publishes a message to it and takes it back.
pub(crate) async fn aliveness(State(shared): State<Arc<Shared>>, Path(vhost): Path<String>) -> ApiResult {
    const QUEUE: &str = "aliveness-test";
    let got = with_broker(&shared, |b, now, out| {
        b.declare_queue(&vhost, QUEUE, false, false, Default::default(), now, out)?;
        b.publish_message(&vhost, "", "", QUEUE, Default::default(), Bytes::from_static(b"test_message"), now, out)?;
        b.get_messages(&vhost, QUEUE, 1, GetAckMode::Ack, now, out)
    })?;
    if got.first().is_some_and(|m| &m.body[..] == b"test_message") {
        Ok(Json(json!({"status": "ok"})).into_response())
    } else {
        Ok((StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "reason": "message lost"})))
            .into_response())
    }
}
