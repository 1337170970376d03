//! `warrenctl` against a real broker: the library entry point (`warrenctl::run`, everything the
//! binary does but print) with parsed command lines.
//!
//! - Against Warren: `list queues` in detail, and the full command set.
//! - The full command set also runs against any broker with RabbitMQ's management API named by
//!   `WARRENCTL_TEST_MGMT` (host:port) and `WARRENCTL_TEST_AMQP_URL`, e.g. a RabbitMQ 3.10 with
//!   the management plugin; it is how warrenctl is checked against the reference.

mod common;

use common::lapin_client::*;
use common::{unique, Broker};
use serde_json::Value;
use std::time::{Duration, Instant};
use warrenctl::{Cli, Error};

/// Runs warrenctl with `args` against the management API at `addr` (host:port).
fn ctl(addr: &str, args: &[&str]) -> Result<String, Error> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut argv = vec!["warrenctl", "--host", host, "--port", port];
    argv.extend_from_slice(args);
    let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
    warrenctl::run(&cli)
}

fn ok(addr: &str, args: &[&str]) -> String {
    ctl(addr, args).unwrap_or_else(|e| panic!("warrenctl {args:?} failed: {e}"))
}

fn json(addr: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--format", "json"]);
    serde_json::from_str(&ok(addr, &all)).expect("--format json prints JSON")
}

/// The table's rows as cells split on runs of two or more spaces, header first; also checks
/// that every column starts at the same offset on every line.
fn rows(table: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = table.lines().collect();
    assert!(!lines.is_empty(), "a table has a header line");
    let header = lines[0];
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header[..i].ends_with("  ")))
        .map(|(i, _)| i)
        .collect();
    lines
        .iter()
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &s)| {
                    let end = starts.get(n + 1).copied().unwrap_or(line.len()).min(line.len());
                    let cell = if s < line.len() { &line[s..end] } else { "" };
                    assert!(s == 0 || s > line.len() || line[..s].ends_with(' '), "column {n} misaligned in {line:?}");
                    cell.trim().to_string()
                })
                .collect()
        })
        .collect()
}

fn find_row<'a>(rows: &'a [Vec<String>], column: usize, value: &str) -> Option<&'a Vec<String>> {
    rows.iter().find(|r| r.get(column).map(String::as_str) == Some(value))
}

#[tokio::test]
async fn list_queues_against_warren() {
    if Broker::is_external() {
        eprintln!("skipped: drives Warren's HTTP listener");
        return;
    }
    let broker = Broker::start();
    let http = broker.http_addr().expect("HTTP listener");
    let (full, empty) = (unique("ctl-full"), unique("ctl-empty"));
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, &full).await;
    declare_plain(&ch, &empty).await;
    publish_all(&ch, &full, &["a", "b"]).await;

    let table = rows(&ok(&http, &["list", "queues"]));
    assert_eq!(
        table[0],
        ["vhost", "name", "type", "durable", "auto_delete", "messages", "ready", "unacked", "consumers", "policy"]
    );
    let row = find_row(&table, 1, &full).expect("the full queue is listed");
    assert_eq!(row[..9], ["/", full.as_str(), "classic", "false", "false", "2", "2", "0", "0"]);
    let row = find_row(&table, 1, &empty).expect("the empty queue is listed");
    assert_eq!(row[5], "0");

    let listed = json(&http, &["list", "queues"]);
    let q = listed.as_array().expect("a JSON list").iter().find(|q| q["name"] == full.as_str()).expect("listed");
    assert_eq!(q["messages_ready"], 2);

    let denied = ctl(&http, &["--password", "wrong", "list", "queues"]).expect_err("a wrong password fails");
    assert!(denied.0.contains("401"), "{denied}");
    close(&conn).await;
}

/// Polls `check` every 100 ms for up to `limit` (RabbitMQ's management API shows connections
/// and consumers only after its next statistics round, 5 s by default).
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every command, against the management API at `http` (AMQP at `amqp_url` for a connection
/// and a consumer to see).
async fn full_cycle(http: &str, amqp_url: &str) {
    let (q, x) = (unique("ctl-q"), unique("ctl-x"));
    let vhost = ["--vhost", "/"];
    ok(http, &[&["declare", "queue", &q, "--arguments", r#"{"x-max-length": 5}"#][..], &vhost].concat());
    ok(http, &["declare", "exchange", &x, "--type", "topic", "--durable", "false"]);
    ok(http, &["declare", "binding", "--source", &x, "--destination", &q, "--routing-key", "a.#"]);

    let queues = rows(&ok(http, &["list", "queues", "--vhost", "/"]));
    let row = find_row(&queues, 1, &q).expect("declared queue listed");
    assert_eq!(row[3], "true", "queues are durable by default");
    let listed = json(http, &["list", "queues"]);
    let declared = listed.as_array().into_iter().flatten().find(|v| v["name"] == q.as_str()).expect("in JSON");
    assert_eq!(declared["arguments"]["x-max-length"], 5);

    let exchanges = rows(&ok(http, &["list", "exchanges"]));
    let row = find_row(&exchanges, 1, &x).expect("declared exchange listed");
    assert_eq!(row[2..4], ["topic", "false"]);
    let bindings = rows(&ok(http, &["list", "bindings"]));
    assert!(bindings.iter().any(|r| r[1] == x && r[2] == q && r[4] == "a.#"), "binding listed: {bindings:?}");

    // Messages through the binding, then a consumer and a connection to list.
    let conn = connect_url(amqp_url).await;
    let ch = confirm_channel(&conn).await;
    publish(&ch, &x, "a.b", b"1").await;
    publish(&ch, &x, "a.c", b"2").await;
    let consumer_ch = channel(&conn).await;
    let _consumer = consume(&consumer_ch, &unique_queue(&consumer_ch).await, false).await;
    wait_for("the queue depth", Duration::from_secs(30), || {
        let v = json(http, &["list", "queues", "--vhost", "/"]);
        v.as_array().into_iter().flatten().any(|v| v["name"] == q.as_str() && v["messages"] == 2)
    });
    ok(http, &["purge", "queue", &q]);
    wait_for("the purge to show", Duration::from_secs(30), || {
        let v = json(http, &["list", "queues", "--vhost", "/"]);
        v.as_array().into_iter().flatten().any(|v| v["name"] == q.as_str() && v["messages"] == 0)
    });

    let mut connection = String::new();
    wait_for("the connection and consumer to be listed", Duration::from_secs(30), || {
        let conns = json(http, &["list", "connections"]);
        let consumers = json(http, &["list", "consumers", "--vhost", "/"]);
        let Some(name) = conns.as_array().and_then(|a| a.first()).and_then(|c| c["name"].as_str()) else {
            return false;
        };
        connection = name.to_string();
        consumers.as_array().is_some_and(|a| !a.is_empty())
    });
    let table = rows(&ok(http, &["list", "connections"]));
    assert!(find_row(&table, 0, &connection).is_some(), "table lists {connection}: {table:?}");
    for what in ["vhosts", "users", "permissions", "consumers"] {
        let table = rows(&ok(http, &["list", what]));
        assert!(table.len() > 1, "list {what} shows at least one row: {table:?}");
    }
    assert!(find_row(&rows(&ok(http, &["list", "users"])), 0, "guest").is_some());
    assert!(find_row(&rows(&ok(http, &["list", "vhosts"])), 0, "/").is_some());

    // Export, delete, import: the definitions bring the queue, exchange and binding back.
    let file = std::env::temp_dir().join(format!("{}.json", unique("ctl-defs")));
    let path = file.to_str().expect("utf-8 temp path");
    ok(http, &["export", "definitions", path]);
    let defs: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("exported file")).expect("JSON");
    assert!(defs["queues"].as_array().into_iter().flatten().any(|v| v["name"] == q.as_str()));
    ok(http, &["delete", "binding", "--source", &x, "--destination", &q, "--routing-key", "a.#"]);
    let bindings = rows(&ok(http, &["list", "bindings"]));
    assert!(!bindings.iter().any(|r| r[1] == x && r[2] == q), "binding gone: {bindings:?}");
    ok(http, &["delete", "queue", &q]);
    ok(http, &["delete", "exchange", &x]);
    assert!(find_row(&rows(&ok(http, &["list", "queues"])), 1, &q).is_none(), "queue gone");
    let missing = ctl(http, &["delete", "queue", &q]).expect_err("deleting a missing queue fails");
    assert!(missing.0.contains("404"), "{missing}");

    ok(http, &["import", "definitions", path]);
    assert!(find_row(&rows(&ok(http, &["list", "queues"])), 1, &q).is_some(), "queue imported");
    assert!(find_row(&rows(&ok(http, &["list", "exchanges"])), 1, &x).is_some(), "exchange imported");
    let bindings = rows(&ok(http, &["list", "bindings"]));
    assert!(bindings.iter().any(|r| r[1] == x && r[2] == q && r[4] == "a.#"), "binding imported: {bindings:?}");
    ok(http, &["delete", "queue", &q]);
    ok(http, &["delete", "exchange", &x]);
    let _ = std::fs::remove_file(&file);

    // Closing the connection from the CLI closes it for the client.
    ok(http, &["close", "connection", &connection, "--reason", "test over"]);
    wait_for("the client to see its connection closed", Duration::from_secs(10), || !conn.status().connected());
}

/// `cluster_status` names the node answering, lists it among the disk and the running nodes, and
/// agrees with its JSON form.
fn cluster_status_names_the_node(http: &str) {
    let doc = json(http, &["cluster_status"]);
    let node = doc["node"].as_str().expect("the answering node").to_string();
    let cluster = doc["cluster_name"].as_str().expect("the cluster name").to_string();
    assert!(doc["disk_nodes"].as_array().expect("disk nodes").iter().any(|n| n == node.as_str()), "{doc}");
    assert!(doc["running_nodes"].as_array().expect("running nodes").iter().any(|n| n == node.as_str()), "{doc}");
    let text = ok(http, &["cluster_status"]);
    assert!(text.starts_with(&format!("Cluster status of node {node} ...\n")), "{text}");
    assert!(text.contains(&format!("\nCluster name: {cluster}\n")), "{text}");
    let running = text.split("Running Nodes\n\n").nth(1).expect("a Running Nodes section");
    assert!(running.lines().any(|l| l == node), "{text}");
    let disk = text.split("Disk Nodes\n\n").nth(1).expect("a Disk Nodes section");
    assert!(disk.lines().take_while(|l| !l.is_empty()).any(|l| l == node), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_against_warren() {
    if Broker::is_external() {
        eprintln!("skipped: drives Warren's HTTP listener");
        return;
    }
    let broker = Broker::start();
    let http = broker.http_addr().expect("HTTP listener");
    cluster_status_names_the_node(&http);
    // A node on its own: the cluster is named after it.
    assert_eq!(
        ok(&http, &["cluster_status"]),
        "Cluster status of node warren@localhost ...\nBasics\n\nCluster name: warren@localhost\n\n\
         Disk Nodes\n\nwarren@localhost\n\nRunning Nodes\n\nwarren@localhost\n"
    );
    // The rolling-upgrade checks have nothing to wait for on one node.
    assert_eq!(
        ok(&http, &["check_if_node_is_quorum_critical"]),
        "no quorum queue would lose its quorum if node warren@localhost is stopped\n"
    );
    assert_eq!(
        ok(&http, &["await_online_quorum_plus_one"]),
        "the target node is the only one in a single node cluster: the command does not apply\n"
    );
}

/// A server-named exclusive queue for a consumer to sit on.
async fn unique_queue(ch: &lapin::Channel) -> String {
    let options = lapin::options::QueueDeclareOptions { exclusive: true, ..Default::default() };
    declare(ch, "", options).await.name().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_against_the_reference() {
    let (Ok(http), Ok(amqp)) = (std::env::var("WARRENCTL_TEST_MGMT"), std::env::var("WARRENCTL_TEST_AMQP_URL")) else {
        eprintln!("skipped: set WARRENCTL_TEST_MGMT=host:port and WARRENCTL_TEST_AMQP_URL to run against a broker");
        return;
    };
    full_cycle(&http, &amqp).await;
    cluster_status_names_the_node(&http);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_against_warren() {
    let broker = Broker::start();
    let http = broker.http_addr().expect("HTTP listener");
    full_cycle(&http, &broker.amqp_url()).await;
}
