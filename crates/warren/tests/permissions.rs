//! Access control seen by clients: users, vhosts and permissions loaded at boot from a
//! definitions file exported by RabbitMQ 3.10.8 (`tests/fixtures/rabbitmq-3.10-access-definitions.json`,
//! users with RabbitMQ's own password hashes), enforced with RabbitMQ's refusals, kept across a
//! restart.
//!
//! The fixture has vhost `v1`; alice (password `pw`, tags monitoring and management) with
//! configure `^(alice|amq\.gen.*)`, write `^(alice|amq\.default|amq\.topic)$`, read `^alice`
//! on `v1` and topic permission on `amq.topic` of write `^{username}\.`, read `^{username}`;
//! bob (password `pw`) without permissions; guest (password `guest`) with everything on `/`.
//!
//! To check these expectations against RabbitMQ: `rabbitmqctl import_definitions` the fixture,
//! then run with `WARREN_TEST_AMQP_URL=amqp://guest:guest@HOST:PORT/%2f` and
//! `WARREN_TEST_EXTERNAL_CONFIGURED=1`.

mod common;

use common::lapin_client::*;
use common::{unique, within, Broker};
use lapin::options::{BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rabbitmq-3.10-access-definitions.json")
}

fn config() -> String {
    format!("load_definitions = {}\n", fixture().display())
}

/// (reply code, reply text) of a lapin error carrying a channel.close or connection.close.
fn refusal(e: &lapin::Error) -> (u16, String) {
    match e {
        lapin::Error::ProtocolError(p) => (p.get_id(), p.get_message().to_string()),
        other => panic!("expected an AMQP error with a reply code, got: {other}"),
    }
}

async fn try_connect(broker: &Broker, user: &str, password: &str, vhost: &str) -> lapin::Result<Connection> {
    within(
        "connection",
        Connection::connect(&broker.amqp_url_with(user, password, vhost), ConnectionProperties::default()),
    )
    .await
}

fn refused(text: &str) -> (u16, String) {
    (403, format!("ACCESS_REFUSED - {text}"))
}

/// Publishes on a confirm channel; returns the channel.close the broker answered with, if any.
async fn publish_refusal(conn: &Connection, exchange: &str, key: &str) -> Option<(u16, String)> {
    let ch = confirm_channel(conn).await;
    let confirm = within(
        "basic.publish",
        ch.basic_publish(exchange, key, BasicPublishOptions::default(), b"m", BasicProperties::default()),
    )
    .await;
    let result = match confirm {
        Ok(c) => within("the confirm", c).await.map(|_| ()),
        Err(e) => Err(e),
    };
    result.err().map(|e| refusal(&e))
}

async fn declare_refusal(conn: &Connection, queue: &str) -> Option<(u16, String)> {
    let ch = channel(conn).await;
    let options = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    within("queue.declare", ch.queue_declare(queue, options, FieldTable::default())).await.err().map(|e| refusal(&e))
}

async fn bind_refusal(conn: &Connection, queue: &str, exchange: &str, key: &str) -> Option<(u16, String)> {
    let ch = channel(conn).await;
    within("queue.bind", ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), FieldTable::default()))
        .await
        .err()
        .map(|e| refusal(&e))
}

/// What alice may and may not do in v1, checked on one connection that outlives each refusal.
async fn alice_gets_exactly_her_permissions(broker: &Broker) {
    let conn = try_connect(broker, "alice", "pw", "v1").await.expect("alice opens v1 with her imported hash");
    let mine = format!("alice.{}", unique("q"));
    assert_eq!(declare_refusal(&conn, &mine).await, None);
    let other = unique("other");
    assert_eq!(
        declare_refusal(&conn, &other).await,
        Some(refused(&format!("access to queue '{other}' in vhost 'v1' refused for user 'alice'")))
    );
    // Server-named queues: configure on amq.gen-* is granted.
    assert_eq!(declare_refusal(&conn, "").await, None);
    // queue.bind needs write on the queue (alice.* is not writable, only exactly "alice").
    assert_eq!(
        bind_refusal(&conn, &mine, "amq.topic", "alice.x").await,
        Some(refused(&format!("access to queue '{mine}' in vhost 'v1' refused for user 'alice'")))
    );
    // basic.publish needs write on the exchange; the default exchange is checked as amq.default.
    assert_eq!(publish_refusal(&conn, "", &mine).await, None);
    assert_eq!(
        publish_refusal(&conn, "amq.direct", &mine).await,
        Some(refused("access to exchange 'amq.direct' in vhost 'v1' refused for user 'alice'"))
    );
    // Topic permission: write ^alice\. on amq.topic.
    assert_eq!(publish_refusal(&conn, "amq.topic", "alice.x").await, None);
    assert_eq!(
        publish_refusal(&conn, "amq.topic", "bob.x").await,
        Some(refused("access to topic 'bob.x' in exchange 'amq.topic' in vhost 'v1' refused for user 'alice'"))
    );
    // Reading her queue works; after all those refusals the connection is still fine.
    let ch = channel(&conn).await;
    let message = get(&ch, &mine, true).await;
    assert!(message.is_none() || body(&message.expect("message").delivery) == "m");
    close(&conn).await;
}

async fn vhost_access_is_refused_as_rabbitmq_refuses_it(broker: &Broker) {
    let e = try_connect(broker, "bob", "pw", "v1").await.expect_err("bob has no permissions in v1");
    assert_eq!(refusal(&e), (530, "NOT_ALLOWED - access to vhost 'v1' refused for user 'bob'".into()));
    let e = try_connect(broker, "alice", "pw", "/").await.expect_err("alice has no permissions in /");
    assert_eq!(refusal(&e), (530, "NOT_ALLOWED - access to vhost '/' refused for user 'alice'".into()));
    let e = try_connect(broker, "alice", "pw", "nope").await.expect_err("no such vhost");
    assert_eq!(refusal(&e), (530, "NOT_ALLOWED - vhost nope not found".into()));
    assert!(try_connect(broker, "alice", "wrong", "v1").await.is_err(), "a wrong password is refused");
    // guest's imported hash works too.
    let conn = try_connect(broker, "guest", "guest", "/").await.expect("guest opens /");
    close(&conn).await;
}

#[tokio::test]
async fn imported_users_get_exactly_their_permissions() {
    let Some(broker) = Broker::start_with_config(&config()) else { return };
    alice_gets_exactly_her_permissions(&broker).await;
    vhost_access_is_refused_as_rabbitmq_refuses_it(&broker).await;
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart() {
    if Broker::is_external() {
        eprintln!("skipped: restarts Warren");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-permissions"));
    let broker = Broker::start_in_with_config(&dir, &config());
    let conn = try_connect(&broker, "alice", "pw", "v1").await.expect("alice opens v1");
    close(&conn).await;
    broker.kill9();
    // Restarted without the definitions file: everything comes from the data directory.
    std::fs::remove_file(dir.join("rabbitmq.conf")).expect("remove the config");
    let broker = Broker::start_in(&dir);
    alice_gets_exactly_her_permissions(&broker).await;
    vhost_access_is_refused_as_rabbitmq_refuses_it(&broker).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
