//! The management HTTP API, on RabbitMQ's paths and JSON shapes so that its tools and
//! dashboards work against Warren.
//!
//! This first cut serves the read-only essentials: `/api/overview`, `/api/queues`, and the
//! alarms health check, behind HTTP basic auth with the broker's users. The rest of the API and
//! the web UI are issue 6.

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use warren_server::Shared;

/// Serves the management API until the future is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/queues", get(queues))
        .route("/api/health/checks/alarms", get(alarms))
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
