//! Policies through the management HTTP API (RabbitMQ's paths and JSON), kept across a
//! restart, and loaded at boot from a definitions file named by `load_definitions`.

mod common;

use common::lapin_client::*;
use common::{unique, Broker};
use std::io::{Read, Write};
use std::net::TcpStream;

/// One HTTP/1.1 request with basic auth guest:guest; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn publish_three_and_count(broker: &Broker, queue: &str) -> Vec<String> {
    let conn = connect(broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, queue).await;
    publish_all(&ch, queue, &["1", "2", "3"]).await;
    let got = get_all(&ch, queue).await;
    close(&conn).await;
    got
}

#[tokio::test]
async fn policy_set_over_http_applies_and_survives_a_restart() {
    if Broker::is_external() {
        eprintln!("skipped: drives Warren's HTTP listener and restarts it");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-policies"));
    let broker = Broker::start_in(&dir);
    let http_addr = broker.http_addr().expect("HTTP listener");
    let body = r#"{"pattern":"^capped\\.","definition":{"max-length":2},"priority":1,"apply-to":"queues"}"#;
    assert_eq!(http(&http_addr, "PUT", "/api/policies/%2F/cap", body).0, 201);
    assert_eq!(http(&http_addr, "PUT", "/api/policies/%2F/cap", body).0, 204, "replacing answers 204");
    let (status, listed) = http(&http_addr, "GET", "/api/policies", "");
    assert_eq!(status, 200);
    assert!(listed.contains("\"name\":\"cap\"") && listed.contains("\"max-length\":2"), "{listed}");
    let bad = r#"{"pattern":"(","definition":{"max-length":2}}"#;
    assert_eq!(http(&http_addr, "PUT", "/api/policies/%2F/bad", bad).0, 400);

    let queue = format!("capped.{}", unique("q"));
    assert_eq!(publish_three_and_count(&broker, &queue).await, vec!["2".to_string(), "3".to_string()]);
    let (_, queues) = http(&http_addr, "GET", "/api/queues", "");
    assert!(queues.contains("\"policy\":\"cap\""), "{queues}");
    broker.kill9();

    let broker = Broker::start_in(&dir);
    let http_addr = broker.http_addr().expect("HTTP listener");
    let queue = format!("capped.{}", unique("q"));
    assert_eq!(publish_three_and_count(&broker, &queue).await, vec!["2".to_string(), "3".to_string()]);
    assert_eq!(http(&http_addr, "DELETE", "/api/policies/%2F/cap", "").0, 204);
    assert_eq!(http(&http_addr, "DELETE", "/api/policies/%2F/cap", "").0, 404);
    let queue = format!("capped.{}", unique("q"));
    assert_eq!(publish_three_and_count(&broker, &queue).await.len(), 3, "no limit once cleared");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn operator_policy_caps_what_clients_ask_for() {
    if Broker::is_external() {
        eprintln!("skipped: drives Warren's HTTP listener");
        return;
    }
    let broker = Broker::start();
    let http_addr = broker.http_addr().expect("HTTP listener");
    let body = r#"{"pattern":".*","definition":{"max-length":1},"apply-to":"queues"}"#;
    assert_eq!(http(&http_addr, "PUT", "/api/operator-policies/%2F/cap", body).0, 201);
    let not_allowed = r#"{"pattern":".*","definition":{"dead-letter-exchange":"x"}}"#;
    assert_eq!(http(&http_addr, "PUT", "/api/operator-policies/%2F/dlx", not_allowed).0, 400);
    assert_eq!(publish_three_and_count(&broker, &unique("op")).await, vec!["3".to_string()]);
}

#[tokio::test]
async fn definitions_file_at_boot_brings_policies() {
    if Broker::is_external() {
        eprintln!("skipped: needs Warren's load_definitions");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-defs"));
    std::fs::create_dir_all(&dir).expect("dir");
    let defs = dir.join("definitions.json");
    std::fs::write(
        &defs,
        r#"{"policies":[{"vhost":"/","name":"boot","pattern":"^boot\\.","apply-to":"queues","definition":{"max-length":1},"priority":0}]}"#,
    )
    .expect("write definitions");
    let broker = Broker::start_in_with_config(&dir, &format!("load_definitions = {}\n", defs.display()));
    let queue = format!("boot.{}", unique("q"));
    assert_eq!(publish_three_and_count(&broker, &queue).await, vec!["3".to_string()]);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
