//! The management HTTP API against a real Warren: a real client (`rabbitmq_http_client`, the
//! library `rabbitmqadmin` v2 is built on) lists, declares, publishes, gets and deletes; plain
//! HTTP checks shapes and errors; connections are listed and closed; definitions go out of one
//! broker and into another, and a RabbitMQ 3.10 export is imported.

mod common;

use common::lapin_client::*;
use common::{eventually, unique, Broker};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::{ExchangeType, QueueType};
use rabbitmq_http_client::requests::{ExchangeParams, QueueParams};
use serde_json::{json, Value};

/// The spawned broker's management API; None (the test is skipped) for an external broker,
/// whose management port the harness does not know.
fn http_base(broker: &Broker) -> Option<String> {
    if Broker::is_external() {
        eprintln!("note: skipped, the management API of an external broker is not known here");
        return None;
    }
    Some(format!("http://{}", broker.http_addr().expect("a spawned broker listens for HTTP")))
}

fn api_client(base: &str) -> Client<String, &'static str, &'static str> {
    Client::new(format!("{base}/api"), "guest", "guest")
}

/// One request with guest:guest; returns the status and the JSON body (Null when empty).
async fn call(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{base}{path}")).basic_auth("guest", Some("guest"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("HTTP body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn rabbitmqadmin_client_lists_declares_publishes_gets_and_deletes() {
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let rc = api_client(&base);
    let (x, q) = (unique("http-x"), unique("http-q"));

    rc.declare_exchange("/", &ExchangeParams::durable(&x, ExchangeType::Direct, None)).await.expect("declare exchange");
    rc.declare_queue("/", &QueueParams::new(&q, QueueType::Classic, true, false, None)).await.expect("declare queue");
    rc.bind_queue("/", &q, &x, Some("rk"), None).await.expect("bind");

    let routed = rc.publish_message("/", &x, "rk", "hello", Default::default()).await.expect("publish");
    assert!(routed.routed);
    let unrouted = rc.publish_message("/", &x, "nowhere", "lost", Default::default()).await.expect("publish");
    assert!(!unrouted.routed);

    let queues = rc.list_queues().await.expect("list queues");
    let info = queues.iter().find(|i| i.name == q).expect("queue listed");
    assert_eq!(info.message_count, 1);
    assert!(info.durable);
    let exchanges = rc.list_exchanges().await.expect("list exchanges");
    assert!(exchanges.iter().any(|e| e.name == x && e.exchange_type == "direct"));
    let bindings = rc.list_bindings().await.expect("list bindings");
    assert!(bindings.iter().any(|b| b.source == x && b.destination == q && b.routing_key == "rk"));

    // Peek (requeue), then take.
    let peeked = rc.get_messages("/", &q, 5, "ack_requeue_true").await.expect("get");
    assert_eq!(peeked.len(), 1);
    assert_eq!(peeked[0].payload, "hello");
    assert_eq!(peeked[0].routing_key, "rk");
    let taken = rc.get_messages("/", &q, 5, "ack_requeue_false").await.expect("get");
    assert_eq!(taken.len(), 1);
    assert!(taken[0].redelivered, "a requeued message comes back redelivered");
    assert_eq!(rc.get_queue_info("/", &q).await.expect("queue info").message_count, 0);

    let me = rc.current_user().await.expect("whoami");
    assert_eq!(me.name, "guest");

    rc.delete_queue("/", &q, false).await.expect("delete queue");
    rc.delete_exchange("/", &x, false).await.expect("delete exchange");
    assert!(!rc.list_queues().await.expect("list").iter().any(|i| i.name == q));
    assert!(rc.delete_queue("/", &q, false).await.is_err(), "deleting a missing queue is an error");
    rc.delete_queue("/", &q, true).await.expect("idempotent delete of a missing queue");
}

#[tokio::test]
async fn http_shapes_and_errors_match_rabbitmq() {
    use reqwest::Method;
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let q = unique("shape-q");

    let anonymous = reqwest::get(format!("{base}/api/queues")).await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong = reqwest::Client::new()
        .get(format!("{base}/api/overview"))
        .basic_auth("guest", Some("nope"))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status().as_u16(), 401);

    let (status, body) = call(&base, Method::GET, "/api/queues/%2F/missing", None).await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({"error": "Object Not Found", "reason": "Not Found"}));

    let path = format!("/api/queues/%2F/{q}");
    assert_eq!(call(&base, Method::PUT, &path, Some(json!({"durable": false}))).await.0, 201);
    assert_eq!(call(&base, Method::PUT, &path, Some(json!({"durable": false}))).await.0, 204);
    let (status, body) = call(&base, Method::PUT, &path, Some(json!({"durable": true}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request");
    assert!(body["reason"].as_str().is_some_and(|r| r.starts_with("inequivalent arg 'durable'")), "{body}");

    // Messages, counts and rates.
    let publish = json!({"routing_key": q, "payload": "m", "payload_encoding": "string", "properties": {"delivery_mode": 2, "headers": {"k": "v"}}});
    for _ in 0..3 {
        let (status, body) =
            call(&base, Method::POST, "/api/exchanges/%2F/amq.default/publish", Some(publish.clone())).await;
        assert_eq!((status, body), (200, json!({"routed": true})));
    }
    let (_, first) = call(&base, Method::GET, &path, None).await;
    assert_eq!(first["messages"], 3);
    assert_eq!(first["messages_ready"], 3);
    assert_eq!(first["messages_unacknowledged"], 0);
    assert_eq!(first["message_stats"]["publish"], 3);
    let get = json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"});
    let (status, got) = call(&base, Method::POST, &format!("{path}/get"), Some(get)).await;
    assert_eq!(status, 200);
    assert_eq!(got[0]["payload"], "m");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["message_count"], 2);
    assert_eq!(got[0]["properties"]["delivery_mode"], 2);
    assert_eq!(got[0]["properties"]["headers"]["k"], "v");
    let (_, second) = call(&base, Method::GET, &path, None).await;
    assert_eq!(second["message_stats"]["deliver_get"], 1);
    assert_eq!(second["message_stats"]["ack"], 1);
    assert!(second["message_stats"]["deliver_get_details"]["rate"].as_f64().is_some_and(|r| r > 0.0), "{second}");

    let (status, body) = call(&base, Method::DELETE, &format!("{path}?if-empty=true"), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(call(&base, Method::DELETE, &format!("{path}/contents"), None).await.0, 204);
    assert_eq!(call(&base, Method::GET, &path, None).await.1["messages"], 0);

    // Bindings by their properties key.
    let x = unique("shape-x");
    let xpath = format!("/api/exchanges/%2F/{x}");
    assert_eq!(call(&base, Method::PUT, &xpath, Some(json!({"type": "topic"}))).await.0, 201);
    let untyped = format!("/api/exchanges/%2F/{}", unique("untyped"));
    assert_eq!(call(&base, Method::PUT, &untyped, Some(json!({}))).await.0, 201, "direct when the type is left out");
    assert_eq!(call(&base, Method::GET, &untyped, None).await.1["type"], "direct");
    let bad_type = format!("/api/exchanges/%2F/{}", unique("badtype"));
    assert_eq!(call(&base, Method::PUT, &bad_type, Some(json!({"type": 5}))).await.0, 400);
    let nowhere = json!({"routing_key": "k", "payload": "p", "payload_encoding": "string", "properties": {}});
    let (status, body) = call(&base, Method::POST, "/api/exchanges/%2F/missing-x/publish", Some(nowhere)).await;
    assert_eq!(status, 400, "RabbitMQ answers a publish to a missing exchange with 400");
    assert_eq!(body["reason"], "404 NOT_FOUND - no exchange 'missing-x' in vhost '/'");
    let bpath = format!("/api/bindings/%2F/e/{x}/q/{q}");
    assert_eq!(call(&base, Method::POST, &bpath, Some(json!({"routing_key": "a.*"}))).await.0, 201);
    let (_, listed) = call(&base, Method::GET, &bpath, None).await;
    assert_eq!(listed[0]["properties_key"], "a.%2A", "quoted as RabbitMQ quotes it");
    assert_eq!(listed[0]["destination_type"], "queue");
    let (_, of_queue) = call(&base, Method::GET, &format!("{path}/bindings"), None).await;
    assert_eq!(of_queue.as_array().map(Vec::len), Some(2), "default and explicit binding: {of_queue}");
    // The key goes into the path percent-encoded once more, as clients do.
    assert_eq!(call(&base, Method::DELETE, &format!("{bpath}/a.%252A"), None).await.0, 204);
    assert_eq!(call(&base, Method::DELETE, &format!("{bpath}/a.%252A"), None).await.0, 404);
    assert_eq!(call(&base, Method::DELETE, &xpath, None).await.0, 204);
    assert_eq!(call(&base, Method::DELETE, &xpath, None).await.0, 404);

    for check in ["alarms", "local-alarms", "virtual-hosts", "node-is-quorum-critical"] {
        let (status, body) = call(&base, Method::GET, &format!("/api/health/checks/{check}"), None).await;
        assert_eq!((status, &body["status"]), (200, &json!("ok")), "{check}");
    }
    let port = broker.port();
    assert_eq!(call(&base, Method::GET, &format!("/api/health/checks/port-listener/{port}"), None).await.0, 200);
    let (status, body) = call(&base, Method::GET, "/api/health/checks/port-listener/1", None).await;
    assert_eq!((status, &body["status"], &body["missing"]), (503, &json!("failed"), &json!(1)));
    assert_eq!(call(&base, Method::GET, "/api/aliveness-test/%2F", None).await.1, json!({"status": "ok"}));
    assert_eq!(
        call(&base, Method::GET, "/api/whoami", None).await.1,
        json!({"name": "guest", "tags": ["administrator"]})
    );
    let (_, nodes) = call(&base, Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes[0]["running"], true);
}

#[tokio::test]
async fn connections_channels_consumers_listed_and_closed_with_connection_forced() {
    use reqwest::Method;
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let q = unique("conn-q");
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_plain(&ch, &q).await;
    let _consumer = consume(&ch, &q, false).await;

    let (_, conns) = call(&base, Method::GET, "/api/connections", None).await;
    let listed = conns.as_array().expect("connection list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["user"], "guest");
    assert_eq!(listed[0]["vhost"], "/");
    assert_eq!(listed[0]["protocol"], "AMQP 0-9-1");
    let name = listed[0]["name"].as_str().expect("connection name").to_string();
    let client = format!("{}:{}", listed[0]["peer_host"].as_str().unwrap_or("?"), listed[0]["peer_port"]);
    assert_eq!(name, format!("{client} -> 127.0.0.1:{}", broker.port()), "named 'client -> server' as in RabbitMQ");
    let (_, chans) = call(&base, Method::GET, "/api/channels", None).await;
    assert_eq!(chans[0]["consumer_count"], 1);
    assert_eq!(chans[0]["connection_details"]["name"], name.as_str());
    let (_, consumers) = call(&base, Method::GET, "/api/consumers/%2F", None).await;
    assert_eq!(consumers[0]["queue"], json!({"name": q, "vhost": "/"}));
    assert_eq!(consumers[0]["ack_required"], true);
    let (_, q_info) = call(&base, Method::GET, &format!("/api/queues/%2F/{q}"), None).await;
    assert_eq!(q_info["consumers"], 1);

    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    conn.on_error(move |e| {
        let _ = closed_tx.send(e.to_string());
    });
    let encoded: String = name.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(call(&base, Method::DELETE, &format!("/api/connections/{encoded}"), None).await.0, 204);
    eventually("the connection to be closed", || {
        let connected = conn.status().connected();
        async move { !connected }
    })
    .await;
    let error = closed_rx.recv_timeout(common::TIMEOUT).expect("the client saw the close");
    assert!(error.contains("CONNECTION_FORCED") || error.contains("320"), "{error}");
    assert!(error.contains("Closed via management plugin"), "{error}");
    eventually("the connection to leave the list", || {
        let base = base.clone();
        async move { call(&base, Method::GET, "/api/connections", None).await.1 == json!([]) }
    })
    .await;
    assert_eq!(call(&base, Method::DELETE, &format!("/api/connections/{encoded}"), None).await.0, 404);
}

/// The parts of an export that must survive a round trip.
fn topology(doc: &Value) -> Vec<Value> {
    ["queues", "exchanges", "bindings", "policies"].iter().map(|k| doc[*k].clone()).collect()
}

#[tokio::test]
async fn definitions_round_trip_and_rabbitmq_export_import() {
    use reqwest::Method;
    if Broker::is_external() {
        return;
    }
    let a = Broker::start();
    let b = Broker::start();
    let (Some(base_a), Some(base_b)) = (http_base(&a), http_base(&b)) else { return };
    let put = |base: &str, path: &str, body: Value| {
        let (base, path) = (base.to_string(), path.to_string());
        async move { call(&base, Method::PUT, &path, Some(body)).await.0 }
    };
    assert_eq!(put(&base_a, "/api/exchanges/%2F/events", json!({"type": "topic", "durable": true})).await, 201);
    assert_eq!(put(&base_a, "/api/exchanges/%2F/fan", json!({"type": "fanout"})).await, 201);
    assert_eq!(put(&base_a, "/api/queues/%2F/events.all", json!({"arguments": {"x-max-length": 10}})).await, 201);
    assert_eq!(
        put(&base_a, "/api/policies/%2F/cap", json!({"pattern": "^events", "definition": {"max-length": 5}})).await,
        201
    );
    let bind = json!({"routing_key": "#", "arguments": {"x-match": "any"}});
    assert_eq!(call(&base_a, Method::POST, "/api/bindings/%2F/e/events/q/events.all", Some(bind)).await.0, 201);
    assert_eq!(
        call(&base_a, Method::POST, "/api/bindings/%2F/e/events/e/fan", Some(json!({"routing_key": "x"}))).await.0,
        201
    );

    let (status, exported) = call(&base_a, Method::GET, "/api/definitions", None).await;
    assert_eq!(status, 200);
    assert_eq!(exported["queues"].as_array().map(Vec::len), Some(1));
    assert_eq!(exported["exchanges"].as_array().map(Vec::len), Some(2));
    assert_eq!(exported["bindings"].as_array().map(Vec::len), Some(2));
    assert_eq!(call(&base_b, Method::POST, "/api/definitions", Some(exported.clone())).await.0, 204);
    let (_, reexported) = call(&base_b, Method::GET, "/api/definitions", None).await;
    assert_eq!(topology(&reexported), topology(&exported));
    // The bindings work in the new broker.
    let publish = json!({"routing_key": "a.b", "payload": "p", "payload_encoding": "string", "properties": {}});
    assert_eq!(call(&base_b, Method::POST, "/api/exchanges/%2F/events/publish", Some(publish)).await.1["routed"], true);
    let (_, per_vhost) = call(&base_b, Method::GET, "/api/definitions/%2F", None).await;
    assert!(per_vhost["queues"][0].get("vhost").is_none(), "per-vhost exports leave the vhost out");

    // A definitions file exported by RabbitMQ 3.10.
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/rabbitmq-3.10-definitions.json")).expect("fixture is JSON");
    assert_eq!(call(&base_b, Method::POST, "/api/definitions", Some(fixture)).await.0, 204);
    let (_, q) = call(&base_b, Method::GET, "/api/queues/%2F/orders.created", None).await;
    assert_eq!(q["policy"], "orders-ttl");
    let publish =
        json!({"routing_key": "order.created", "payload": "o", "payload_encoding": "string", "properties": {}});
    assert_eq!(call(&base_b, Method::POST, "/api/exchanges/%2F/orders/publish", Some(publish)).await.1["routed"], true);
    let (_, audit) = call(&base_b, Method::GET, "/api/queues/%2F/orders.audit", None).await;
    assert_eq!(audit["messages"], 1, "routed through the exchange-to-exchange binding");
    let (_, created) = call(&base_b, Method::GET, "/api/queues/%2F/orders.created", None).await;
    assert_eq!(created["messages"], 1);

    let (status, body) = call(&base_b, Method::POST, "/api/definitions", Some(json!({"queues": "nope"}))).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn definitions_file_exported_by_rabbitmq_loads_at_boot() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rabbitmq-3.10-definitions.json");
    let Some(broker) = Broker::start_with_config(&format!("load_definitions = {}", fixture.display())) else { return };
    let Some(base) = http_base(&broker) else { return };
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    publish(&ch, "orders", "order.created", b"o").await;
    let bodies = get_all(&ch, "orders.created").await;
    assert_eq!(bodies, ["o"]);
    assert_eq!(get_all(&ch, "orders.audit").await, ["o"], "through the exchange-to-exchange binding");
    close(&conn).await;
    let (_, q) = call(&base, reqwest::Method::GET, "/api/queues/%2F/orders.created", None).await;
    assert_eq!(q["policy"], "orders-ttl");
}

/// What rabbitmqadmin shows of a running broker (`list connections`, `channels`, `consumers`,
/// `overview`, `nodes`, health checks) parses, and `close connection` closes.
#[tokio::test]
async fn rabbitmqadmin_client_reads_connections_and_closes_one() {
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let rc = api_client(&base);
    let q = unique("admin-q");
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_plain(&ch, &q).await;
    let _consumer = consume(&ch, &q, false).await;

    let conns = rc.list_connections().await.expect("list connections");
    assert_eq!(conns.len(), 1);
    let channels = rc.list_channels().await.expect("list channels");
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].consumer_count, 1);
    let consumers = rc.list_consumers().await.expect("list consumers");
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].queue.name, q);
    rc.purge_queue("/", &q).await.expect("purge");
    let overview = rc.overview().await.expect("overview");
    assert_eq!(overview.object_totals.consumers, 1);
    let nodes = rc.list_nodes().await.expect("list nodes");
    assert_eq!(nodes.len(), 1);
    rc.health_check_cluster_wide_alarms().await.expect("alarms");
    rc.health_check_local_alarms().await.expect("local alarms");
    rc.health_check_if_node_is_quorum_critical().await.expect("quorum critical");
    rc.health_check_port_listener(broker.port()).await.expect("port listener");
    assert!(rc.health_check_port_listener(1).await.is_err());

    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    conn.on_error(move |e| {
        let _ = closed_tx.send(e.to_string());
    });
    rc.close_connection(&conns[0].name, Some("maintenance"), false).await.expect("close connection");
    let error = closed_rx.recv_timeout(common::TIMEOUT).expect("the client saw the close");
    assert!(error.contains("maintenance"), "the X-Reason text reaches the client: {error}");
    let defs = rc.export_cluster_wide_definitions_as_data().await.expect("export");
    assert!(defs.queues.iter().any(|d| d.name == q));
}

/// "Get messages" with reject_requeue_false rejects: the message is dead-lettered.
#[tokio::test]
async fn get_with_reject_requeue_false_dead_letters() {
    use reqwest::Method;
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    let (q, dlq) = (unique("rej-q"), unique("rej-dlq"));
    assert_eq!(call(&base, Method::PUT, &format!("/api/queues/%2F/{dlq}"), Some(json!({}))).await.0, 201);
    let args = json!({"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}});
    assert_eq!(call(&base, Method::PUT, &format!("/api/queues/%2F/{q}"), Some(args)).await.0, 201);
    let publish = json!({"routing_key": q, "payload": "aGk=", "payload_encoding": "base64", "properties": {}});
    assert_eq!(
        call(&base, Method::POST, "/api/exchanges/%2F/amq.default/publish", Some(publish)).await.1["routed"],
        true
    );
    let get = json!({"count": 10, "ackmode": "reject_requeue_false", "encoding": "base64"});
    let (_, got) = call(&base, Method::POST, &format!("/api/queues/%2F/{q}/get"), Some(get)).await;
    assert_eq!(got[0]["payload"], "aGk=");
    assert_eq!(got[0]["payload_encoding"], "base64");
    assert_eq!(call(&base, Method::GET, &format!("/api/queues/%2F/{q}"), None).await.1["messages"], 0);
    let get = json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"});
    let (_, dead) = call(&base, Method::POST, &format!("/api/queues/%2F/{dlq}/get"), Some(get)).await;
    assert_eq!(dead[0]["payload"], "hi");
    assert_eq!(dead[0]["properties"]["headers"]["x-death"][0]["reason"], "rejected");
}

/// A request with a raw body (for bodies at and past a size limit); the status and the JSON
/// body (Null when there is none or it is not JSON).
async fn post_raw(base: &str, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .basic_auth("guest", Some("guest"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("HTTP body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The (vhost, name) pairs of a listing's items.
fn names(items: &Value) -> Vec<(String, String)> {
    let items = items.as_array().expect("an array of items");
    items
        .iter()
        .map(|i| (i["vhost"].as_str().unwrap_or("?").into(), i["name"].as_str().unwrap_or("?").into()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(v, n)| (v.to_string(), n.to_string())).collect()
}

#[tokio::test]
async fn queues_are_paged_sorted_and_filtered_as_rabbitmq_pages_them() {
    use reqwest::Method;
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    assert_eq!(call(&base, Method::PUT, "/api/vhosts/v2", Some(json!({}))).await.0, 201);
    for name in ["alpha", "beta", "gamma", "delta", "Alpha", "b1"] {
        assert_eq!(call(&base, Method::PUT, &format!("/api/queues/%2F/{name}"), Some(json!({}))).await.0, 201);
    }
    assert_eq!(call(&base, Method::PUT, "/api/queues/v2/alpha", Some(json!({}))).await.0, 201);
    for q in ["gamma", "gamma", "beta"] {
        let publish = json!({"routing_key": q, "payload": "m", "payload_encoding": "string", "properties": {}});
        assert_eq!(call(&base, Method::POST, "/api/exchanges/%2F/amq.default/publish", Some(publish)).await.0, 200);
    }
    let get = |query: &str| {
        let base = base.clone();
        let path = format!("/api/queues{query}");
        async move { call(&base, Method::GET, &path, None).await }
    };
    let all = pairs(&[
        ("/", "Alpha"),
        ("/", "alpha"),
        ("/", "b1"),
        ("/", "beta"),
        ("/", "delta"),
        ("/", "gamma"),
        ("v2", "alpha"),
    ]);

    // Without `page`: the plain array, by vhost then name (bytes); sorted when asked, but
    // `name` and `page_size` are ignored, as in RabbitMQ.
    assert_eq!(names(&get("").await.1), all);
    assert_eq!(names(&get("?name=alp&page_size=2").await.1), all);
    let by_name = names(&get("?sort=name").await.1);
    assert_eq!(&by_name[..3], pairs(&[("/", "Alpha"), ("/", "alpha"), ("v2", "alpha")]));
    let reversed: Vec<_> = all.iter().rev().cloned().collect();
    assert_eq!(names(&get("?sort_reverse=true").await.1), reversed);
    // A numeric field, ties kept in listing order; a path into an object; an unknown field.
    let by_messages = names(&get("?sort=messages").await.1);
    assert_eq!(&by_messages[4..], pairs(&[("v2", "alpha"), ("/", "beta"), ("/", "gamma")]));
    let by_publish = names(&get("?sort=message_stats.publish&sort_reverse=true").await.1);
    assert_eq!(&by_publish[..2], pairs(&[("/", "gamma"), ("/", "beta")]));
    assert_eq!(names(&get("?sort=nonesuch").await.1), all);

    // Pages.
    let (status, page) = get("?page=2&page_size=3").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(names(&page["items"]), all[3..6].to_vec());
    let counts = |p: &Value| -> Vec<i64> {
        ["filtered_count", "item_count", "page", "page_count", "page_size", "total_count"]
            .iter()
            .map(|k| p[k].as_i64().unwrap_or(-1))
            .collect()
    };
    assert_eq!(counts(&page), [7, 3, 2, 3, 3, 7]);
    let (_, last) = get("?page=3&page_size=3").await;
    assert_eq!((names(&last["items"]), counts(&last)), (all[6..].to_vec(), vec![7, 1, 3, 3, 3, 7]));
    let (_, first) = get("?page=1").await;
    assert_eq!(counts(&first), [7, 7, 1, 1, 100, 7], "page_size defaults to 100");
    assert_eq!(get("?page=1&page_size=500").await.0, 200);
    let (_, sorted) = get("?page=1&page_size=2&sort=name&sort_reverse=true").await;
    assert_eq!(names(&sorted["items"]), pairs(&[("/", "gamma"), ("/", "delta")]));
    let (_, vhost) = call(&base, Method::GET, "/api/queues/v2?page=1&page_size=1", None).await;
    assert_eq!((names(&vhost["items"]), counts(&vhost)), (pairs(&[("v2", "alpha")]), vec![1, 1, 1, 1, 1, 1]));

    // The name filter: a case-insensitive substring, or a case-insensitive regex.
    let (_, alp) = get("?page=1&name=ALP").await;
    assert_eq!(names(&alp["items"]), pairs(&[("/", "Alpha"), ("/", "alpha"), ("v2", "alpha")]));
    assert_eq!((alp["filtered_count"].clone(), alp["total_count"].clone()), (json!(3), json!(7)));
    let (_, regex) = get("?page=1&name=%5EB&use_regex=true").await;
    assert_eq!(names(&regex["items"]), pairs(&[("/", "b1"), ("/", "beta")]));
    let (_, literal) = get("?page=1&name=%5Eb").await;
    assert_eq!((literal["filtered_count"].clone(), literal["page_count"].clone()), (json!(0), json!(0)));
    assert_eq!(names(&literal["items"]), pairs(&[]));

    // The page just after a full last page is empty; one further is out of range.
    let (status, empty) = get("?page=2&page_size=7").await;
    assert_eq!((status, counts(&empty)), (200, vec![7, 0, 2, 1, 7, 7]));
    let (status, body) = get("?page=3&page_size=3&name=alp").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": "page_out_of_range", "reason": "Page out of range, page: 3 page size: 3, len: 3"})
    );

    // Bad values, answered as RabbitMQ answers them.
    let invalid = |reason: &str| json!({"error": "invalid_pagination_parameters", "reason": reason});
    let bad = json!({"error": "bad_request", "reason": "Pagination parameters are invalid"});
    assert_eq!(
        get("?page=1&page_size=501").await,
        (400, invalid("Invalid pagination parameters: page number 1, page size 501"))
    );
    assert_eq!(
        get("?page=1&page_size=0").await,
        (400, invalid("Invalid pagination parameters: page number 1, page size 0"))
    );
    assert_eq!(
        get("?page=0").await,
        (400, invalid("Invalid pagination parameters: page number 0, page size undefined"))
    );
    for query in ["?page=abc", "?page=1.5", "?page=1&page_size=x", "?page_size=x", "?page=1&name=(&use_regex=true"] {
        assert_eq!(get(query).await, (400, bad.clone()), "{query}");
    }
    assert_eq!(get("?page=1&sort_reverse=yes").await.0, 400);
    assert_eq!(call(&base, Method::GET, "/api/queues/nope?page=1", None).await.0, 404);

    // A user who may see only v2 counts and pages only v2's queues.
    let user = json!({"password": "pw", "tags": "management"});
    assert_eq!(call(&base, Method::PUT, "/api/users/pager", Some(user)).await.0, 201);
    let all_perms = json!({"configure": ".*", "write": ".*", "read": ".*"});
    assert_eq!(call(&base, Method::PUT, "/api/permissions/v2/pager", Some(all_perms)).await.0, 201);
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/queues?page=1"))
        .basic_auth("pager", Some("pw"))
        .send()
        .await
        .expect("HTTP request");
    let page: Value = resp.json().await.expect("JSON");
    assert_eq!((names(&page["items"]), page["total_count"].clone()), (pairs(&[("v2", "alpha")]), json!(1)));
}

#[tokio::test]
async fn definitions_import_takes_bodies_up_to_management_http_max_body_size() {
    use reqwest::Method;
    const LIMIT: usize = 100_000;
    let Some(broker) = Broker::start_with_config(&format!("management.http.max_body_size = {LIMIT}\n")) else {
        return;
    };
    let Some(base) = http_base(&broker) else { return };
    let q = unique("limit-q");
    let doc = json!({"queues": [{"name": q, "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}]});
    // JSON padded with whitespace to exactly the limit, then one byte more.
    let mut at_limit = doc.to_string().into_bytes();
    at_limit.resize(LIMIT, b' ');
    assert_eq!(at_limit.len(), LIMIT);
    let mut past_limit = at_limit.clone();
    past_limit.push(b' ');

    let too_large = json!({"error": "payload_too_large", "reason": "Exceeded HTTP request body size limit"});
    for path in ["/api/definitions", "/api/definitions/%2F"] {
        assert_eq!(post_raw(&base, Method::POST, path, past_limit.clone()).await, (413, too_large.clone()), "{path}");
        assert_eq!(post_raw(&base, Method::POST, path, at_limit.clone()).await.0, 204, "{path}");
    }
    assert_eq!(call(&base, Method::GET, &format!("/api/queues/%2F/{q}"), None).await.0, 200);

    // Other endpoints keep their own, smaller limit whatever the key says (2 MiB), and say so
    // in JSON too.
    let mut big = b"{}".to_vec();
    big.resize(2 * 1024 * 1024 + 1, b' ');
    let path = format!("/api/queues/%2F/{}", unique("big-body"));
    assert_eq!(post_raw(&base, Method::PUT, &path, big).await, (413, too_large));
}

#[tokio::test]
async fn definitions_with_100_000_bindings_import_over_http() {
    use reqwest::Method;
    const QUEUES: usize = 1_000;
    const BINDINGS: usize = 100_000;
    let broker = Broker::start();
    let Some(base) = http_base(&broker) else { return };
    // The shape of a RabbitMQ export with one exchange, 1,000 durable queues and 100,000
    // bindings with distinct routing keys: 12.7 MB without spaces (13.9 MB as Python writes it),
    // as large as the exports that got 413.
    let queue = |i: usize| format!("bulk-{:04}", i % QUEUES);
    let queues: Vec<Value> = (0..QUEUES)
        .map(|i| json!({"name": queue(i), "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}))
        .collect();
    let bindings: Vec<Value> = (0..BINDINGS)
        .map(|i| {
            json!({"source": "bulk.x", "vhost": "/", "destination": queue(i), "destination_type": "queue",
                   "routing_key": format!("rk-{i:06}"), "arguments": {}})
        })
        .collect();
    let exchange = json!({"name": "bulk.x", "vhost": "/", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}});
    let doc = json!({"rabbit_version": "3.10.8", "vhosts": [{"name": "/"}], "queues": queues, "exchanges": [exchange], "bindings": bindings});
    let body = serde_json::to_vec(&doc).expect("JSON");
    assert!(body.len() > 12_000_000, "{} bytes", body.len());

    let (status, answer) = post_raw(&base, Method::POST, "/api/definitions", body).await;
    assert_eq!(status, 204, "{answer}");
    let (status, listed) = call(&base, Method::GET, "/api/exchanges/%2F/bulk.x/bindings/source", None).await;
    assert_eq!(status, 200);
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), BINDINGS);
    let keys: std::collections::HashSet<&str> = listed.iter().filter_map(|b| b["routing_key"].as_str()).collect();
    assert_eq!(keys.len(), BINDINGS, "every routing key is there once");

    // And they route: the first, the last and one between.
    for i in [0, 54_321, BINDINGS - 1] {
        let publish = json!({"routing_key": format!("rk-{i:06}"), "payload": "m", "payload_encoding": "string", "properties": {}});
        let (status, routed) = call(&base, Method::POST, "/api/exchanges/%2F/bulk.x/publish", Some(publish)).await;
        assert_eq!((status, routed), (200, json!({"routed": true})));
        let (_, q) = call(&base, Method::GET, &format!("/api/queues/%2F/{}", queue(i)), None).await;
        assert_eq!(q["messages"], 1, "{}", queue(i));
    }
}
