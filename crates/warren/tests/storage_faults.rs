//! Storage faults (issue 12), on a real file system that fills up: a size-limited tmpfs that the
//! test mounts itself (as root; skipped with a note where mounting is impossible). A full disk
//! nacks the publishes it cannot store and closes no connection; the queue says it is degraded;
//! when space comes back it heals by itself and every confirmed message is still there after a
//! SIGKILL. A flood is blocked by the disk alarm before the disk fills.

mod common;

use common::lapin_client::*;
use common::{eventually, unique, within, Broker};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size, mounted by the test and unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(unique("warren-tmpfs"));
        std::fs::create_dir_all(&dir).expect("create mount point");
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"]).arg(&dir).status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("note: skipped, cannot mount a {size_mib} MiB tmpfs here (needs root): {other:?}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(path).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
}

/// Fills the file system of `path` with a file of its own until at most `leave` bytes are free.
fn ballast(path: &Path, leave: u64) -> PathBuf {
    let file = path.join("ballast");
    let size = free_bytes(path).saturating_sub(leave);
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&file).expect("ballast");
    let mut written = 0;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        std::io::Write::write_all(&mut f, &chunk[..n]).expect("write ballast");
        written += n as u64;
    }
    file
}

async fn queue_state(broker: &Broker, queue: &str) -> String {
    let addr = broker.http_addr().expect("http");
    let url = format!("http://{addr}/api/queues/%2F/{queue}");
    let v: serde_json::Value = reqwest::Client::new()
        .get(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("GET queue")
        .json()
        .await
        .expect("json");
    v["state"].as_str().unwrap_or_default().to_string()
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes `id` and waits for its confirm: true for an ack, false for a nack.
async fn publish_confirmed(ch: &lapin::Channel, queue: &str, id: u32, size: usize) -> bool {
    let mut body = id.to_string().into_bytes();
    body.push(b':');
    body.resize(size, b'x');
    let confirm =
        within("basic.publish", ch.basic_publish("", queue, BasicPublishOptions::default(), &body, persistent()))
            .await
            .expect("publish");
    match within("confirm", confirm).await.expect("confirm") {
        Confirmation::Ack(_) => true,
        Confirmation::Nack(_) => false,
        other => panic!("unexpected confirmation {other:?}"),
    }
}

fn id_of(body: &[u8]) -> u32 {
    let s = String::from_utf8_lossy(body);
    s.split(':').next().and_then(|n| n.parse().ok()).expect("message id")
}

#[tokio::test]
async fn a_full_disk_nacks_what_it_cannot_store_and_publishing_resumes_when_space_returns() {
    if Broker::is_external() {
        return;
    }
    let Some(fs) = Tmpfs::mount(32) else { return };
    let data = fs.path().join("data");
    // No disk alarm: this test is about the write that fails.
    let broker = Broker::start_in_with_config(&data, "disk_free_limit.absolute = 0\n");
    let queue = unique("full");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, &queue, QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }).await;
    let ballast = ballast(fs.path(), 4 << 20);

    let (mut acked, mut nacked) = (BTreeSet::new(), BTreeSet::new());
    let mut id = 0;
    // About 4 MiB of room: 32 KiB messages fill it within a few hundred.
    while nacked.len() < 5 {
        assert!(id < 2_000, "the disk never filled");
        if publish_confirmed(&ch, &queue, id, 32 << 10).await {
            acked.insert(id);
        } else {
            nacked.insert(id);
        }
        id += 1;
    }
    assert!(conn.status().connected(), "a full disk closes no connection");
    assert!(ch.status().connected(), "nor the channel");
    assert_eq!(queue_state(&broker, &queue).await, "degraded");

    // Space comes back: publishing resumes with no restart.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let mut resumed = 0;
    for _ in 0..200 {
        let ok = publish_confirmed(&ch, &queue, id, 32 << 10).await;
        if ok {
            acked.insert(id);
            resumed += 1;
        } else {
            nacked.insert(id);
            resumed = 0;
        }
        id += 1;
        if resumed == 20 {
            break;
        }
    }
    assert_eq!(resumed, 20, "twenty publishes in a row confirmed after space came back");
    eventually("the queue is healthy again", || async { queue_state(&broker, &queue).await == "running" }).await;

    // Every confirmed message survives a SIGKILL; nothing unknown appears.
    broker.kill9();
    let broker = Broker::start_in_with_config(&data, "disk_free_limit.absolute = 0\n");
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &queue, true).await;
    let mut seen = BTreeSet::new();
    while seen.len() < acked.len() + nacked.len() {
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), next_delivery(&mut consumer)).await;
        let Ok(d) = next else { break };
        let got = id_of(&d.data);
        assert!(got < id, "message {got} was never published");
        assert!(seen.insert(got), "message {got} delivered twice");
        if seen.is_superset(&acked) {
            break;
        }
    }
    let lost: Vec<&u32> = acked.difference(&seen).collect();
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?} ({} acked, {} nacked)", acked.len(), nacked.len());
    eprintln!(
        "full disk: {} confirmed, {} nacked, all confirmed ones recovered after SIGKILL",
        acked.len(),
        nacked.len()
    );
}

#[tokio::test]
async fn a_flood_is_blocked_by_the_disk_alarm_before_the_disk_fills() {
    if Broker::is_external() {
        return;
    }
    let Some(fs) = Tmpfs::mount(48) else { return };
    let data = fs.path().join("data");
    let broker = Broker::start_in_with_config(&data, "disk_free_limit.absolute = 8MB\n");
    let queue = unique("flood");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, &queue, QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }).await;
    // Publish far more than fits without waiting for confirms; the flood stops when blocked.
    let flood_ch = ch.clone();
    let flood_queue = queue.clone();
    let flood = tokio::spawn(async move {
        let body = vec![b'f'; 64 << 10];
        let mut confirms = Vec::new();
        for _ in 0..1_000 {
            let p = flood_ch.basic_publish("", &flood_queue, BasicPublishOptions::default(), &body, persistent());
            match p.await {
                Ok(c) => confirms.push(c),
                Err(_) => break,
            }
        }
        confirms
    });
    eventually("connection.blocked", || async { conn.status().blocked() }).await;
    assert!(!flood.is_finished() || free_bytes(fs.path()) > 0, "blocked before the disk filled");
    assert!(free_bytes(fs.path()) > 1 << 20, "the alarm left room: {} bytes free", free_bytes(fs.path()));
    assert_eq!(queue_state(&broker, &queue).await, "running", "no write failed");
    flood.abort();
}
