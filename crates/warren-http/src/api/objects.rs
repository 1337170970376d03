//! Overview, whoami, nodes, connections, channels and consumers.

use super::rates::Rates;
use super::{node_name, with_broker, ApiError, ApiResult, Listeners, User};
use crate::table_json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_core::{ChannelSummary, ConnectionSummary, ConsumerSummary};
use warren_server::cluster::NodeView;
use warren_server::Shared;

/// What RabbitMQ tells a client whose connection is closed from the management UI.
const CLOSED_VIA_MANAGEMENT: &str = "Closed via management plugin";

pub(crate) async fn overview(State(shared): State<Arc<Shared>>, Extension(rates): Extension<Arc<Rates>>) -> Response {
    let (o, stats) = {
        let core = shared.broker();
        (core.overview(), core.queue_stats())
    };
    let message_stats = rates.totals(&stats);
    let cluster = shared.cluster_view();
    Json(json!({
        "management_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "basic",
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": cluster.cluster_name(),
        "node": cluster.node_name(),
        "erlang_version": "none",
        "erlang_full_version": "none",
        "statistics_db_event_queue": 0,
        "churn_rates": {},
        "message_stats": message_stats,
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
        "listeners": [],
        "contexts": [],
        "exchange_types": exchange_types(),
        "disable_stats": false,
        "enable_queue_totals": true,
        "sample_retention_policies": {"global": [5], "basic": [5], "detailed": [5]},
    }))
    .into_response()
}

/// GET /api/cluster-name: `{"name": ...}`, as RabbitMQ's.
pub(crate) async fn cluster_name(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({"name": shared.cluster_view().cluster_name()})).into_response()
}

pub(crate) async fn whoami(State(shared): State<Arc<Shared>>, Extension(User(name)): Extension<User>) -> Response {
    let tags = shared.broker().user(&name).map(|u| u.tags.clone()).unwrap_or_default();
    Json(json!({"name": name, "tags": tags})).into_response()
}

/// The exchange types Warren routes, as RabbitMQ lists them.
fn exchange_types() -> Value {
    let types = ["direct", "fanout", "headers", "topic", "x-consistent-hash", "x-delayed-message"];
    Value::Array(types.iter().map(|t| json!({"name": t, "description": "", "enabled": true})).collect())
}

/// This node with its figures.
fn node_json(shared: &Shared, name: &str) -> Value {
    use warren_core::auth::Mechanism;
    let (alarms, resources, configured) = {
        let core = shared.broker();
        (core.alarms(), core.resource_use(), core.config().auth_mechanisms.clone())
    };
    let auth_mechanisms: Vec<Value> = [
        (Mechanism::Plain, "SASL PLAIN authentication mechanism"),
        (Mechanism::Amqplain, "AMQPLAIN: login and password in a field table"),
        (Mechanism::External, "SASL EXTERNAL: the user named by the client's TLS certificate"),
    ]
    .iter()
    .map(|(m, d)| json!({"name": m.as_str(), "description": d, "enabled": configured.contains(m)}))
    .collect();
    json!({
        "name": name,
        "type": "disc",
        "running": true,
        "uptime": shared.uptime().as_millis() as u64,
        "os_pid": std::process::id().to_string(),
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "partitions": [],
        "being_drained": false,
        "mem_alarm": alarms.memory,
        "disk_free_alarm": alarms.disk,
        "mem_used": resources.mem_used,
        "mem_limit": resources.mem_limit,
        "disk_free": resources.disk_free,
        "disk_free_limit": resources.disk_free_limit,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "applications": [],
        "contexts": [],
        "auth_mechanisms": auth_mechanisms,
    })
}

/// Another node: what this node knows of it, whether it is connected to it. (RabbitMQ shows a
/// node that is down with these few fields; one that is up, with its figures, which this node
/// does not gather from the others yet.)
fn other_node_json(node: &NodeView) -> Value {
    json!({
        "name": node.name,
        "type": "disc",
        "running": node.running,
        "being_drained": false,
    })
}

fn any_node_json(shared: &Shared, node: &NodeView) -> Value {
    if node.is_self {
        node_json(shared, &node.name)
    } else {
        other_node_json(node)
    }
}

/// GET /api/nodes: every node of the cluster, by name.
pub(crate) async fn nodes(State(shared): State<Arc<Shared>>) -> Response {
    let nodes = shared.cluster_view().nodes();
    super::json_list(nodes.iter().map(|n| any_node_json(&shared, n)).collect())
}

pub(crate) async fn node(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult {
    let nodes = shared.cluster_view().nodes();
    let node = nodes.iter().find(|n| n.name == name).ok_or(ApiError::NotFound)?;
    Ok(Json(any_node_json(&shared, node)).into_response())
}

/// The listener a connection came in on: AMQPS for TLS connections, else AMQP.
fn listener_of(tls: bool, l: &Listeners) -> Option<std::net::SocketAddr> {
    if tls {
        l.amqps
    } else {
        l.amqp
    }
}

/// RabbitMQ names a connection "client ip:port -> server ip:port"; the server side is the
/// address of the listener it came in on (left out when the API was started without it).
fn connection_name(peer: &str, tls: bool, l: &Listeners) -> String {
    match listener_of(tls, l) {
        Some(a) => format!("{peer} -> {a}"),
        None => peer.to_string(),
    }
}

fn split_peer(peer: &str) -> (&str, u16) {
    match peer.rsplit_once(':') {
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']'), port.parse().unwrap_or(0)),
        None => (peer, 0),
    }
}

fn connection_json(c: &ConnectionSummary, l: &Listeners, node: &str) -> Value {
    let (host, port) = split_peer(&c.peer);
    let listener = listener_of(c.session.tls, l);
    json!({
        "name": connection_name(&c.peer, c.session.tls, l),
        "node": node,
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "state": "running",
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": c.session.auth_mechanism,
        "ssl": c.session.tls,
        "peer_host": host,
        "peer_port": port,
        "host": listener.map(|a| a.ip().to_string()),
        "port": listener.map(|a| a.port()),
        "channels": c.channels,
        "channel_max": c.channel_max,
        "connected_at": c.session.connected_at_ms,
        "client_properties": table_json(&c.client_properties),
    })
}

pub(crate) async fn connections(Extension(l): Extension<Listeners>, State(shared): State<Arc<Shared>>) -> Response {
    let list = shared.broker().connections();
    let node = node_name(&shared);
    let items = list.iter().map(|c| connection_json(c, &l, &node)).collect();
    super::json_list(items)
}

/// GET /api/vhosts/{vhost}/connections: a non-administrator (without `monitoring`) sees its own.
pub(crate) async fn vhost_connections(
    Extension(l): Extension<Listeners>,
    State(shared): State<Arc<Shared>>,
    Extension(User(user)): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    let node = node_name(&shared);
    let core = shared.broker();
    if !core.has_vhost(&vhost) {
        return Err(ApiError::NotFound);
    }
    let sees_all = core.user(&user).is_some_and(|u| u.is_administrator() || u.has_tag("monitoring"));
    let items = core
        .connections()
        .iter()
        .filter(|c| c.vhost == vhost && (sees_all || c.user == user))
        .map(|c| connection_json(c, &l, &node))
        .collect();
    Ok(super::json_list(items))
}

fn find_connection(shared: &Shared, name: &str, l: &Listeners) -> Option<ConnectionSummary> {
    shared.broker().connections().into_iter().find(|c| connection_name(&c.peer, c.session.tls, l) == name)
}

pub(crate) async fn connection(
    Extension(l): Extension<Listeners>,
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult {
    let c = find_connection(&shared, &name, &l).ok_or(ApiError::NotFound)?;
    Ok(Json(connection_json(&c, &l, &node_name(&shared))).into_response())
}

/// DELETE /api/connections/{name}: the client gets connection.close 320 CONNECTION_FORCED,
/// with the `X-Reason` header's text when given (as RabbitMQ does).
pub(crate) async fn close_connection(
    Extension(l): Extension<Listeners>,
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = find_connection(&shared, &name, &l).ok_or(ApiError::NotFound)?;
    let reason = headers.get("x-reason").and_then(|v| v.to_str().ok()).unwrap_or(CLOSED_VIA_MANAGEMENT);
    let closed = with_broker(&shared, |b, _, out| Ok(b.close_connection(c.id, reason, out)))?;
    if !closed {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn channel_name(ch: &ChannelSummary, l: &Listeners) -> String {
    format!("{} ({})", connection_name(&ch.peer, ch.tls, l), ch.number)
}

fn channel_json(ch: &ChannelSummary, l: &Listeners, node: &str) -> Value {
    let (host, port) = split_peer(&ch.peer);
    json!({
        "name": channel_name(ch, l),
        "number": ch.number,
        "node": node,
        "vhost": ch.vhost,
        "user": ch.user,
        "user_who_performed_action": ch.user,
        "state": "running",
        "connection_details": {"name": connection_name(&ch.peer, ch.tls, l), "peer_host": host, "peer_port": port},
        "consumer_count": ch.consumers,
        "messages_unacknowledged": ch.unacked,
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": ch.prefetch,
        "global_prefetch_count": ch.global_prefetch,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
    })
}

pub(crate) async fn channels(Extension(l): Extension<Listeners>, State(shared): State<Arc<Shared>>) -> Response {
    let list = shared.broker().channels();
    let node = node_name(&shared);
    super::json_list(list.iter().map(|ch| channel_json(ch, &l, &node)).collect())
}

pub(crate) async fn channel(
    Extension(l): Extension<Listeners>,
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult {
    let list = shared.broker().channels();
    let ch = list.iter().find(|ch| channel_name(ch, &l) == name).ok_or(ApiError::NotFound)?;
    Ok(Json(channel_json(ch, &l, &node_name(&shared))).into_response())
}

pub(crate) async fn connection_channels(
    Extension(l): Extension<Listeners>,
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult {
    let c = find_connection(&shared, &name, &l).ok_or(ApiError::NotFound)?;
    let list = shared.broker().channels();
    let node = node_name(&shared);
    Ok(super::json_list(list.iter().filter(|ch| ch.conn == c.id).map(|ch| channel_json(ch, &l, &node)).collect()))
}

fn consumer_json(c: &ConsumerSummary, timeout_ms: u64, l: &Listeners, node: &str) -> Value {
    let (host, port) = split_peer(&c.peer);
    json!({
        "consumer_tag": c.tag,
        "queue": {"name": c.queue, "vhost": c.vhost},
        "channel_details": {
            "name": format!("{} ({})", connection_name(&c.peer, c.tls, l), c.channel),
            "number": c.channel,
            "connection_name": connection_name(&c.peer, c.tls, l),
            "node": node,
            "peer_host": host,
            "peer_port": port,
            "user": c.user,
        },
        "ack_required": c.ack_required,
        "prefetch_count": c.prefetch,
        "exclusive": c.exclusive,
        "active": true,
        "activity_status": "up",
        "arguments": {},
        "consumer_timeout": timeout_ms,
    })
}

fn consumer_list(shared: &Shared, vhost: Option<&str>, l: &Listeners) -> Response {
    let (list, timeout) = {
        let core = shared.broker();
        (core.consumers(), core.config().consumer_timeout_ms.unwrap_or(0))
    };
    let node = node_name(shared);
    let items = list
        .iter()
        .filter(|c| vhost.is_none_or(|v| v == c.vhost))
        .map(|c| consumer_json(c, timeout, l, &node))
        .collect();
    super::json_list(items)
}

pub(crate) async fn consumers(Extension(l): Extension<Listeners>, State(shared): State<Arc<Shared>>) -> Response {
    consumer_list(&shared, None, &l)
}

pub(crate) async fn vhost_consumers(
    Extension(l): Extension<Listeners>,
    State(shared): State<Arc<Shared>>,
    Path(vhost): Path<String>,
) -> Response {
    consumer_list(&shared, Some(&vhost), &l)
}
