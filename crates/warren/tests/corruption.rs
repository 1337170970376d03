//! A damaged queue log is reported and does not stop the broker: the corrupt record is found by
//! its checksum, the log names the file and offset, and everything else starts and works.

mod common;

use common::lapin_client::*;
use common::{unique, Broker};
use lapin::options::QueueDeclareOptions;
use lapin::BasicProperties;
use std::path::{Path, PathBuf};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "seg") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_corrupt_segment_is_reported_and_the_broker_starts() {
    if Broker::is_external() {
        eprintln!("skipped: damages Warren's data directory");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-corrupt"));
    let (damaged, healthy) = (unique("damaged"), unique("healthy"));
    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for q in [&damaged, &healthy] {
        declare(&ch, q, QueueDeclareOptions { durable: true, ..Default::default() }).await;
    }
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for i in 0..100 {
        publish_with(&ch, "", &damaged, format!("d{i}").as_bytes(), persistent.clone()).await;
    }
    publish_with(&ch, "", &healthy, b"fine", persistent).await;
    broker.kill9();

    // Flip a byte in the middle of the damaged queue's segment (the larger of the two).
    let mut segs = segments(&dir.join("queues"));
    segs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let target = segs.last().expect("a segment").clone();
    let mut bytes = std::fs::read(&target).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&target, bytes).expect("write segment");

    let broker = Broker::start_in(&dir);
    let log = std::fs::read_to_string(dir.join("broker.stderr")).expect("broker log");
    let reported = log.lines().any(|l| l.contains("corrupt") && l.contains(&*target.to_string_lossy()));
    assert!(reported, "no corruption report naming {}:\n{log}", target.display());
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    assert_eq!(get_all(&ch, &healthy).await, vec!["fine".to_string()]);
    let survivors = get_all(&ch, &damaged).await;
    assert!(!survivors.is_empty() && survivors.len() < 100, "records before the damage survive: {}", survivors.len());
    assert_eq!(survivors[0], "d0");
    close(&conn).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
