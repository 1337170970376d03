//! Group commit and settles: a sync round that confirms wait for makes appends durable, while
//! ack files are synced at most every `ACK_SYNC_INTERVAL_MS`, so a crash in between may bring
//! an acknowledged message back (at-least-once), never lose a confirmed one.

mod common;

use common::Harness;
use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::{BasicProperties, FieldTable, Method};
use warren_core::{Broker, Config, ACK_SYNC_INTERVAL_MS};
use warren_store::{Backend, MemBackend};

fn sync(h: &mut Harness, all: bool) -> usize {
    let job = h.broker.begin_sync(h.now_ms, all);
    let n = job.handles.len();
    for handle in &job.handles {
        handle.sync().expect("sync");
    }
    h.broker.end_sync(job.epoch, Vec::new(), h.now_ms, &mut h.out);
    n
}

/// A broker opened on what a power cut leaves of `mem` now.
fn reopened_after_power_cut(mem: &MemBackend) -> Broker {
    let cut = mem.snapshot();
    cut.crash(&mut |_, durable, _| durable);
    let backend: Arc<dyn Backend> = Arc::new(cut);
    Broker::open(Config::default(), backend, PathBuf::from("/data")).expect("reopens").0
}

/// Ready messages of "jobs" in a broker opened on what a power cut leaves of `mem` now.
fn after_power_cut(mem: &MemBackend) -> u32 {
    let b = reopened_after_power_cut(mem);
    b.queues().iter().find(|q| q.name == "jobs").map_or(0, |q| q.messages_ready)
}

fn durable_declare(queue: &str) -> Method {
    Method::QueueDeclare {
        queue: queue.into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    }
}

/// A broker on a fresh in-memory disk.
fn fresh() -> (MemBackend, Harness) {
    let mem = MemBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(mem.clone());
    let (broker, _) = Broker::open(Config::default(), backend, PathBuf::from("/data")).expect("opens");
    (mem, Harness { broker, out: Vec::new(), now_ms: 1_000_000 })
}

/// A broker on a fresh in-memory disk with a durable queue "jobs" holding one persistent
/// message (not synced yet).
fn one_persistent_message() -> (MemBackend, Harness) {
    let (mem, mut h) = fresh();
    h.connect(1, true);
    h.open(1, 1);
    h.send(1, 1, durable_declare("jobs"));
    let persistent = BasicProperties { delivery_mode: Some(2), ..Default::default() };
    h.publish_props(1, 1, "", "jobs", persistent, "work");
    (mem, h)
}

#[test]
fn settles_are_synced_apart_from_appends_within_the_ack_interval() {
    let (mem, mut h) = one_persistent_message();
    // The round a confirm waits for: the append is durable.
    assert!(sync(&mut h, false) > 0);
    assert_eq!(after_power_cut(&mem), 1, "the confirmed message survives");

    h.consume(1, 1, "jobs", "c", false);
    let (_, tag, _, _) = h.deliveries(1).into_iter().next().expect("delivered");
    // Settles were just synced (as by a round a moment ago); the next ones wait for the interval.
    sync(&mut h, true);
    h.send(1, 1, Method::BasicAck { delivery_tag: tag, multiple: false });
    // A round right after the ack leaves the ack file out: a power cut brings the message back.
    sync(&mut h, false);
    assert!(!h.broker.has_unsynced_writes(h.now_ms), "the settle is not due yet");
    assert_eq!(after_power_cut(&mem), 1, "an ack younger than the interval may be lost");
    // Once the interval has passed, the next round covers the ack file.
    h.now_ms += ACK_SYNC_INTERVAL_MS;
    assert!(h.broker.has_unsynced_writes(h.now_ms), "the settle is due");
    assert!(sync(&mut h, false) > 0);
    assert_eq!(after_power_cut(&mem), 0, "the ack is durable");
}

#[test]
fn a_full_sync_covers_settles_at_once() {
    let (mem, mut h) = one_persistent_message();
    sync(&mut h, true);
    h.consume(1, 1, "jobs", "c", false);
    let (_, tag, _, _) = h.deliveries(1).into_iter().next().expect("delivered");
    h.send(1, 1, Method::BasicAck { delivery_tag: tag, multiple: false });
    // Settles were synced a moment ago, so a plain round would leave this one out; what a clean
    // stop does takes everything, settles included.
    sync(&mut h, true);
    assert_eq!(after_power_cut(&mem), 0, "the ack is durable");
}

/// The confirms (ack or nack, by publish sequence number) produced for `conn`.
fn confirms(h: &mut Harness, conn: u64) -> Vec<(bool, u64)> {
    h.take(conn)
        .into_iter()
        .filter_map(|o| match o {
            warren_core::Out::Method { method: Method::BasicAck { delivery_tag, .. }, .. } => {
                Some((true, delivery_tag))
            }
            warren_core::Out::Method { method: Method::BasicNack { delivery_tag, .. }, .. } => {
                Some((false, delivery_tag))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_sync_nacks_only_the_publishes_that_waited_on_its_queue() {
    let (_mem, mut h) = fresh();
    let persistent = BasicProperties { delivery_mode: Some(2), ..Default::default() };
    for (conn, queue) in [(1, "a"), (2, "b")] {
        h.connect(conn, true);
        h.open(conn, 1);
        h.send(conn, 1, durable_declare(queue));
        // As the server does before it answers the declare.
        if let Some(journal) = h.broker.take_definitions_sync(conn) {
            journal.sync().expect("sync");
        }
        h.send(conn, 1, Method::ConfirmSelect { nowait: false });
    }
    // The first round also covers the journal; the one that matters here does not.
    sync(&mut h, false);
    h.out.clear();
    // One round covers both publishes; the sync of queue a's file fails.
    h.publish_props(1, 1, "", "a", persistent.clone(), "to a");
    h.publish_props(2, 1, "", "b", persistent, "to b");
    let job = h.broker.begin_sync(h.now_ms, false);
    assert_eq!(job.handles.len(), job.owners.len());
    let mut owners = job.owners.clone();
    owners.dedup();
    assert_eq!(owners.len(), 2, "one owner per queue: {:?}", job.owners);
    for handle in &job.handles {
        handle.sync().expect("sync");
    }
    let failed = vec![(owners[0], std::io::Error::other("injected EIO"))];
    h.broker.end_sync(job.epoch, failed, h.now_ms, &mut h.out);
    let (one, two) = (confirms(&mut h, 1), confirms(&mut h, 2));
    let mut got = [one.clone(), two.clone()];
    got.sort();
    assert_eq!(got, [vec![(false, 1)], vec![(true, 1)]], "exactly one publisher is nacked: {one:?} {two:?}");
}

/// The queues of a broker opened on what a power cut leaves of `mem` now.
fn queues_after_power_cut(mem: &MemBackend) -> Vec<String> {
    reopened_after_power_cut(mem).queues().into_iter().map(|q| q.name).collect()
}

/// A client's durable declare appends to the definitions journal under the lock but does not
/// sync it there: its host syncs the journal (`take_definitions_sync`) before it answers, and a
/// sync round covers the journal too, so a confirm never depends on a declaration that a power
/// cut could take back.
#[test]
fn a_clients_durable_declare_is_synced_by_its_host_or_the_next_round_not_under_the_lock() {
    let (mem, mut h) = fresh();
    h.connect(1, true);
    h.open(1, 1);
    // The first durable change writes the whole snapshot (synced at once); later ones append.
    h.send(1, 1, durable_declare("first"));
    if let Some(handle) = h.broker.take_definitions_sync(1) {
        handle.sync().expect("sync");
    }
    assert_eq!(queues_after_power_cut(&mem), ["first"]);

    h.send(1, 1, durable_declare("jobs"));
    assert!(h.broker.take_definitions_sync(2).is_none(), "owed to the connection that declared");
    let handle = h.broker.take_definitions_sync(1).expect("the declare's journal append waits for a sync");
    assert!(h.broker.take_definitions_sync(1).is_none(), "handed over once");
    assert_eq!(queues_after_power_cut(&mem), ["first"], "not synced under the lock");
    handle.sync().expect("sync");
    assert_eq!(queues_after_power_cut(&mem), ["first", "jobs"], "durable once the host synced it");

    // Without the host's sync, the next round covers the journal.
    h.send(1, 1, durable_declare("more"));
    assert!(h.broker.has_unsynced_writes(h.now_ms), "the journal is owed a sync");
    assert!(sync(&mut h, false) > 0);
    assert_eq!(queues_after_power_cut(&mem), ["first", "jobs", "more"]);
}
