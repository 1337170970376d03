//! A damaged queue log is reported and does not stop the broker: the corrupt record is found by
//! its checksum, the log names the file and offset, and everything else starts and works. A
//! damaged record in the middle of the definitions journal costs only the change in it: the
//! queues declared around it keep their messages, and the log of the queue it declared is moved
//! to quarantine/ (reported at WARN with its message count), never deleted.

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

/// The byte range of the journal record that declares `queue` (records follow a 16-byte
/// header: payload length, checksum, payload).
fn declaring_record(journal: &[u8], queue: &str) -> std::ops::Range<usize> {
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut at = 16;
    while at + 8 <= journal.len() {
        let len = u32::from_le_bytes(journal[at..at + 4].try_into().expect("4 bytes")) as usize;
        let payload = &journal[at + 8..at + 8 + len];
        if has(payload, b"put-queue") && has(payload, queue.as_bytes()) {
            return at..at + 8 + len;
        }
        at += 8 + len;
    }
    panic!("no journal record declares {queue}");
}

#[tokio::test]
async fn a_flipped_byte_mid_journal_loses_no_message() {
    if Broker::is_external() {
        eprintln!("skipped: damages Warren's data directory");
        return;
    }
    let dir = std::env::temp_dir().join(unique("warren-journal"));
    let (first, hit, last) = (unique("first"), unique("hit"), unique("last"));
    let broker = Broker::start_in(&dir);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for q in [&first, &hit, &last] {
        declare(&ch, q, QueueDeclareOptions { durable: true, ..Default::default() }).await;
        for i in 0..3 {
            publish_with(&ch, "", q, format!("{q}-{i}").as_bytes(), persistent.clone()).await;
        }
    }
    broker.kill9();

    // Damage the declaration of the middle queue: records before and after it are intact.
    let path = dir.join("definitions.journal");
    let mut journal = std::fs::read(&path).expect("read journal");
    let record = declaring_record(&journal, &hit);
    let offset = record.start + record.len() / 2;
    journal[offset] ^= 0xff;
    std::fs::write(&path, &journal).expect("write journal");

    let broker = Broker::start_in(&dir);
    let log = std::fs::read_to_string(dir.join("broker.stderr")).expect("broker log");
    let error = format!("{}: a record failing its checksum at byte {}", path.display(), record.start);
    assert!(log.lines().any(|l| l.contains("ERROR") && l.contains(&error)), "no ERROR line with {error}:\n{log}");
    let quarantined = log.lines().find(|l| l.contains("WARN") && l.contains("quarantine"));
    let quarantined = quarantined.unwrap_or_else(|| panic!("no WARN line for the quarantined log:\n{log}"));
    assert!(quarantined.contains("with the 3 messages it holds"), "{quarantined}");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for q in [&first, &last] {
        assert_eq!(get_all(&ch, q).await, (0..3).map(|i| format!("{q}-{i}")).collect::<Vec<_>>());
    }
    close(&conn).await;
    drop(broker);
    // The undeclared queue's messages are in quarantine/, and the damaged journal is kept.
    assert_eq!(segments(&dir.join("quarantine")).len(), 1, "its log was moved aside");
    let kept = std::fs::read_dir(&dir).expect("data dir").flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("definitions.journal.damaged-")
            && std::fs::read(e.path()).is_ok_and(|b| b == journal)
    });
    assert!(kept, "the damaged journal is kept for inspection");
    let _ = std::fs::remove_dir_all(&dir);
}
