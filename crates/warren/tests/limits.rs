//! Vhost limits (RabbitMQ's `max-connections` and `max-queues`) and user limits
//! (`max-connections` and `max-channels`) against a real Warren: set with `rabbitmq_http_client`
//! (the library of `rabbitmqadmin` v2), enforced on lapin clients with RabbitMQ 3.10's reply
//! codes and texts, kept across a restart and carried by definitions.

mod common;

use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::{UserLimitTarget, VirtualHostLimitTarget};
use rabbitmq_http_client::password_hashing::{base64_encoded_salted_password_hash_sha256, salt};
use rabbitmq_http_client::requests::{EnforcedLimitParams, Permissions, UserParams, VirtualHostParams};
use serde_json::{json, Value};

fn client(broker: &Broker) -> Option<Client<String, &'static str, &'static str>> {
    if Broker::is_external() {
        eprintln!("note: skipped, the management API of an external broker is not known here");
        return None;
    }
    let addr = broker.http_addr().expect("a spawned broker listens for HTTP");
    Some(Client::new(format!("http://{addr}/api"), "guest", "guest"))
}

async fn try_connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// The reply code and text of a refused operation.
fn refusal<T>(result: lapin::Result<T>) -> (u16, String) {
    match result {
        Ok(_) => panic!("expected the broker to refuse"),
        Err(e) => (reply_code(&e), e.to_string()),
    }
}

#[tokio::test]
async fn max_connections_refuses_connections_to_the_vhost_past_the_limit() {
    let broker = Broker::start();
    let Some(rc) = client(&broker) else { return };
    let vhost = unique("lim-conn");
    rc.create_vhost(&VirtualHostParams::named(&vhost)).await.expect("create vhost");
    rc.set_vhost_limit(&vhost, EnforcedLimitParams::new(VirtualHostLimitTarget::MaxConnections, 2))
        .await
        .expect("set max-connections");
    let url = broker.amqp_url_with("guest", "guest", &vhost);

    let first = connect_url(&url).await;
    let second = connect_url(&url).await;
    let (code, text) = refusal(try_connect(&url).await);
    assert_eq!(code, 530);
    assert!(
        text.contains(&format!("access to vhost '{vhost}' refused for user 'guest': connection limit (2) is reached")),
        "{text}"
    );
    // Other vhosts are not counted against it, and the connections within it go on working.
    let other = connect(&broker).await;
    let ch = channel(&first).await;
    declare_plain(&ch, "").await;

    // One closes: one more may come in.
    close(&second).await;
    let third = connect_url(&url).await;
    assert!(try_connect(&url).await.is_err(), "the vhost is full again");

    // Cleared, the limit no longer applies; 0 would refuse everyone.
    rc.clear_vhost_limit(&vhost, VirtualHostLimitTarget::MaxConnections).await.expect("clear the limit");
    let fourth = connect_url(&url).await;
    assert!(rc.list_vhost_limits(&vhost).await.expect("limits of the vhost").is_empty());
    for c in [&first, &third, &fourth, &other] {
        close(c).await;
    }
    rc.set_vhost_limit(&vhost, EnforcedLimitParams::new(VirtualHostLimitTarget::MaxConnections, 0))
        .await
        .expect("set max-connections 0");
    let (code, text) = refusal(try_connect(&url).await);
    assert_eq!(code, 530);
    assert!(text.contains("connection limit (0) is reached"), "{text}");
}

#[tokio::test]
async fn max_queues_refuses_new_queues_but_not_redeclares() {
    let broker = Broker::start();
    let Some(rc) = client(&broker) else { return };
    let vhost = unique("lim-q");
    rc.create_vhost(&VirtualHostParams::named(&vhost)).await.expect("create vhost");
    rc.set_vhost_limit(&vhost, EnforcedLimitParams::new(VirtualHostLimitTarget::MaxQueues, 2))
        .await
        .expect("set max-queues");
    let conn = connect_url(&broker.amqp_url_with("guest", "guest", &vhost)).await;
    let ch = channel(&conn).await;
    declare_plain(&ch, "q1").await;
    declare_plain(&ch, "q2").await;
    declare_plain(&ch, "q2").await;
    declare_passive(&ch, "q1").await.expect("a passive declare is not a new queue");

    let (code, text) =
        refusal(try_declare_with(&ch, "q3", QueueDeclareOptions::default(), FieldTable::default()).await);
    assert_eq!(code, 406);
    assert!(
        text.contains(&format!("cannot declare queue 'q3': queue limit in vhost '{vhost}' (2) is reached")),
        "{text}"
    );
    // Only that channel closed; a server-named queue counts as well.
    let ch = channel(&conn).await;
    let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let (code, text) = refusal(try_declare_with(&ch, "", options, FieldTable::default()).await);
    assert_eq!(code, 406);
    assert!(text.contains("cannot declare queue 'amq.gen-"), "{text}");

    // A queue deleted frees a place; the queue declared over HTTP is counted too.
    let ch = channel(&conn).await;
    ch.queue_delete("q1", Default::default()).await.expect("delete q1");
    declare_plain(&ch, "q3").await;
    let queue_params = rabbitmq_http_client::requests::QueueParams::new_durable_classic_queue("q4", None);
    assert!(rc.declare_queue(&vhost, &queue_params).await.is_err(), "the HTTP API is held to the limit");
    assert_eq!(rc.list_queues_in(&vhost).await.expect("queues").len(), 2);
    close(&conn).await;
}

/// One request as guest; the status and the JSON body (Null when empty).
async fn call(base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}")).basic_auth("guest", Some("guest"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.expect("body")).unwrap_or(Value::Null))
}

#[tokio::test]
async fn limits_have_rabbitmq_shapes_survive_a_restart_and_travel_in_definitions() {
    if Broker::is_external() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-limits"));
    let broker = Broker::start_in(&dir);
    let base = format!("http://{}", broker.http_addr().expect("HTTP"));
    let put = |path: &'static str, body: Value| call(&base, reqwest::Method::PUT, path, Some(body));
    assert_eq!(put("/api/vhost-limits/%2F/max-connections", json!({"value": 100})).await.0, 204);
    assert_eq!(put("/api/vhost-limits/%2F/max-queues", json!({"value": -1})).await.0, 204);
    let (code, body) = put("/api/vhost-limits/%2F/max-bogus", json!({"value": 1})).await;
    assert_eq!(code, 400);
    assert!(body["reason"].as_str().expect("reason").contains("Unrecognised terms"), "{body}");
    let (code, body) = put("/api/vhost-limits/%2F/max-queues", json!({"value": "x"})).await;
    assert_eq!(code, 400);
    assert!(body["reason"].as_str().expect("reason").contains("max-queues should be a number"), "{body}");
    assert_eq!(put("/api/vhost-limits/%2F/max-queues", json!({"valu": 1})).await.0, 400);
    assert_eq!(put("/api/vhost-limits/nosuch/max-queues", json!({"value": 1})).await.0, 404);

    assert_eq!(put("/api/user-limits/guest/max-channels", json!({"value": 64})).await.0, 204);
    assert_eq!(put("/api/user-limits/guest/max-bogus", json!({"value": 64})).await.0, 400);
    assert_eq!(put("/api/user-limits/nobody/max-channels", json!({"value": 64})).await.0, 400);
    let expected = json!([{"vhost": "/", "value": {"max-connections": 100, "max-queues": -1}}]);
    assert_eq!(call(&base, reqwest::Method::GET, "/api/vhost-limits", None).await, (200, expected.clone()));
    assert_eq!(call(&base, reqwest::Method::GET, "/api/vhost-limits/%2F", None).await, (200, expected.clone()));
    let (_, defs) = call(&base, reqwest::Method::GET, "/api/definitions", None).await;
    let parameter = json!({"value": {"max-connections": 100, "max-queues": -1}, "vhost": "/",
        "component": "vhost-limits", "name": "limits"});
    assert_eq!(defs["parameters"], json!([parameter]));
    let guest = defs["users"].as_array().and_then(|u| u.iter().find(|u| u["name"] == "guest")).expect("guest");
    assert_eq!(guest["limits"], json!({"max-channels": 64}));

    // Durable: a restart keeps them.
    drop(broker);
    let broker = Broker::start_in(&dir);
    let base = format!("http://{}", broker.http_addr().expect("HTTP"));
    assert_eq!(call(&base, reqwest::Method::GET, "/api/vhost-limits", None).await, (200, expected));
    let user_limits = json!([{"user": "guest", "value": {"max-channels": 64}}]);
    assert_eq!(call(&base, reqwest::Method::GET, "/api/user-limits", None).await, (200, user_limits));

    // Imported into another broker, the definitions bring them along and they hold.
    let other = Broker::start();
    let other_base = format!("http://{}", other.http_addr().expect("HTTP"));
    let mut doc = defs.clone();
    doc["parameters"][0]["value"]["max-connections"] = json!(1);
    assert_eq!(call(&other_base, reqwest::Method::POST, "/api/definitions", Some(doc)).await.0, 204);
    let conn = connect(&other).await;
    assert_eq!(refusal(try_connect(&other.amqp_url()).await).0, 530);
    close(&conn).await;
    assert_eq!(call(&other_base, reqwest::Method::DELETE, "/api/vhost-limits/%2F/max-connections", None).await.0, 204);
    let (_, left) = call(&other_base, reqwest::Method::GET, "/api/vhost-limits", None).await;
    assert_eq!(left, json!([{"vhost": "/", "value": {"max-queues": -1}}]));
    let (_, users) = call(&other_base, reqwest::Method::GET, "/api/user-limits/guest", None).await;
    assert_eq!(users, json!([{"user": "guest", "value": {"max-channels": 64}}]), "imported with the user");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user with every permission on `/`.
async fn user_with_access(rc: &Client<String, &'static str, &'static str>, name: &str) {
    let hash = base64_encoded_salted_password_hash_sha256(&salt(), "pw");
    rc.create_user(&UserParams { name, password_hash: &hash, tags: "" }).await.expect("create user");
    let perms = Permissions { user: name, vhost: "/", configure: ".*", write: ".*", read: ".*" };
    rc.declare_permissions(&perms).await.expect("permissions");
}

#[tokio::test]
async fn user_max_connections_refuses_that_users_next_connection() {
    let broker = Broker::start();
    let Some(rc) = client(&broker) else { return };
    let user = unique("lim-user");
    user_with_access(&rc, &user).await;
    rc.set_user_limit(&user, EnforcedLimitParams::new(UserLimitTarget::MaxConnections, 1))
        .await
        .expect("set max-connections");
    let url = broker.amqp_url_with(&user, "pw", "/");
    let first = connect_url(&url).await;
    let (code, text) = refusal(try_connect(&url).await);
    assert_eq!(code, 530);
    assert!(
        text.contains(&format!("connection refused for user '{user}': user connection limit (1) is reached")),
        "{text}"
    );
    // Other users are not counted against it.
    let guest = connect(&broker).await;
    close(&first).await;
    let again = connect_url(&url).await;
    let limits = rc.list_all_user_limits().await.expect("user limits");
    assert!(limits.iter().any(|l| l.username == user), "listed");
    close(&again).await;
    close(&guest).await;
}

#[tokio::test]
async fn user_max_channels_counts_the_channels_of_all_its_connections() {
    let broker = Broker::start();
    let Some(rc) = client(&broker) else { return };
    let user = unique("lim-chan");
    user_with_access(&rc, &user).await;
    rc.set_user_limit(&user, EnforcedLimitParams::new(UserLimitTarget::MaxChannels, 2))
        .await
        .expect("set max-channels");
    let url = broker.amqp_url_with(&user, "pw", "/");
    let a = connect_url(&url).await;
    let ch1 = channel(&a).await;
    let b = connect_url(&url).await;
    let _ch2 = channel(&b).await;
    // The third channel, on either connection, closes that connection with 530.
    let third = within("a third channel.open", b.create_channel()).await;
    let Err(err) = third else { panic!("a channel past the user's max-channels was opened") };
    assert_eq!(reply_code(&err), 530, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "number of channels opened for user '{user}' has reached the maximum allowed user limit of (2)"
        )),
        "{err}"
    );
    // The other connection is untouched, and with b gone there is room again.
    declare_plain(&ch1, "").await;
    let _ch3 = channel(&a).await;
    close(&a).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    use common::raw::RawConnection;
    let Some(broker) = Broker::start_with_config("tcp_listen_options.send_timeout = 1000\n") else { return };
    let queue = unique("not-reading");
    let (_conn, ch) = connect_channel(&broker).await;
    declare_plain(&ch, &queue).await;
    // A consumer that never reads its socket (manual acks: what it was sent stays unacked).
    let mut stuck = RawConnection::open(&broker).await;
    stuck.open_channel(1).await;
    stuck.consume(1, &queue, "stuck").await;
    // Far more than the socket buffers hold.
    let body = vec![b's'; 256 << 10];
    for _ in 0..200 {
        publish(&ch, "", &queue, &body).await;
    }
    // The broker gives the connection up: its consumer goes and its deliveries come back.
    eventually("the stuck consumer is gone", || async {
        declare_passive(&ch, &queue).await.is_ok_and(|q| q.consumer_count() == 0)
    })
    .await;
    eventually("every message is ready again", || async {
        declare_passive(&ch, &queue).await.is_ok_and(|q| q.message_count() == 200)
    })
    .await;
    drop(stuck);
}
