//! The definitions journal: random sequences of topology changes (durable and transient queues
//! and exchanges, auto-delete exchanges, bindings to queues and exchanges, deletions), with
//! snapshot rewrites forced in between, survive a crash and restart exactly: what comes back is
//! the durable part of what the broker held before the crash, and the journal is folded into a
//! new snapshot as it grows.

use std::path::PathBuf;
use std::sync::Arc;
use warren_amqp::FieldTable;
use warren_core::{Broker, Caller, Config};
use warren_store::{Backend, MemBackend};

/// The durable topology as the broker shows it: queues, exchanges, and bindings whose ends are
/// both durable.
#[derive(Debug, PartialEq)]
struct Durable {
    queues: Vec<(String, String, bool)>,
    exchanges: Vec<(String, String, String, bool)>,
    bindings: Vec<(String, String, String, bool, String)>,
}

fn durable(b: &Broker) -> Durable {
    let queues: Vec<_> = b
        .queues()
        .into_iter()
        .filter(|q| q.durable && !q.exclusive)
        .map(|q| (q.vhost, q.name, q.auto_delete))
        .collect();
    let exchanges: Vec<_> = b
        .exchanges()
        .into_iter()
        .filter(|x| x.durable && !x.name.is_empty() && !x.name.starts_with("amq."))
        .map(|x| (x.vhost, x.name, x.kind, x.auto_delete))
        .collect();
    let durable_x = |v: &str, n: &str| b.exchanges().iter().any(|x| x.vhost == v && x.name == n && x.durable);
    let durable_q = |v: &str, n: &str| queues.iter().any(|q| q.0 == v && q.1 == n);
    let mut bindings: Vec<_> = b
        .bindings()
        .into_iter()
        .filter(|b| !b.source.is_empty() && durable_x(&b.vhost, &b.source))
        .filter(|b| if b.to_queue { durable_q(&b.vhost, &b.destination) } else { durable_x(&b.vhost, &b.destination) })
        .map(|b| (b.vhost, b.source, b.destination, b.to_queue, b.routing_key))
        .collect();
    bindings.sort();
    Durable { queues, exchanges, bindings }
}

/// One random change; refusals (a redeclare with other properties, a missing end) are part of
/// the game and change nothing.
fn random_change(b: &mut Broker, rng: &mut fastrand::Rng, step: usize) {
    let mut out = Vec::new();
    let q = format!("q{}", rng.usize(0..8));
    let x = format!("x{}", rng.usize(0..5));
    let y = format!("x{}", rng.usize(0..5));
    let key = format!("k{}", rng.usize(0..3));
    let vhost = if rng.u8(0..4) == 0 { "v" } else { "/" };
    // A change outside the topology (rewriting the whole snapshot) is rare, so most of what a
    // crash finds is in the journal.
    if rng.u16(0..3000) == 0 {
        let _ = b.add_vhost(&format!("other{step}"));
        return;
    }
    let _ = match rng.u8(0..19) {
        0..=4 => b.declare_queue(Caller::Broker, vhost, &q, rng.u8(0..5) > 0, false, FieldTable::new(), 0, &mut out),
        5..=6 => b.delete_queue_checked(Caller::Broker, vhost, &q, false, false, 0, &mut out),
        7..=9 => {
            let kind = ["direct", "fanout", "topic"][rng.usize(0..3)];
            b.declare_exchange(
                Caller::Broker,
                vhost,
                &x,
                kind,
                rng.u8(0..5) > 0,
                rng.u8(0..3) == 0,
                false,
                FieldTable::new(),
                0,
                &mut out,
            )
        }
        10 => b.delete_exchange_checked(Caller::Broker, vhost, &x, false, 0, &mut out),
        11..=14 => b.set_binding(Caller::Broker, true, vhost, &x, &q, true, &key, FieldTable::new(), 0, &mut out),
        15..=16 => b.set_binding(Caller::Broker, false, vhost, &x, &q, true, &key, FieldTable::new(), 0, &mut out),
        17 => b.set_binding(Caller::Broker, true, vhost, &x, &y, false, &key, FieldTable::new(), 0, &mut out),
        _ => b.set_binding(Caller::Broker, false, vhost, &x, &y, false, &key, FieldTable::new(), 0, &mut out),
    };
}

#[test]
fn random_topology_changes_survive_crashes_through_the_journal() {
    let mem = MemBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(mem.clone());
    let dir = PathBuf::from("/data");
    let journal = dir.join("definitions.journal");
    let (mut b, _) = Broker::open(Config::default(), backend.clone(), dir.clone()).expect("opens");
    b.add_vhost("v").expect("vhost");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut largest_journal = 0;
    let mut built = false;
    // Rounds longer than the journal's slack (1024 records past the snapshot's size), so the
    // journal is also folded in while the broker runs.
    for round in 0..3 {
        for step in 0..12000 {
            random_change(&mut b, &mut rng, round * 1000 + step);
            largest_journal = largest_journal.max(mem.file_len(&journal).unwrap_or(0));
        }
        let before = durable(&b);
        built |= !before.queues.is_empty() && !before.bindings.is_empty();
        drop(b);
        // Power cut: only what was synced stays.
        mem.crash(&mut |_, durable_len, _| durable_len);
        let reopened = Broker::open(Config::default(), backend.clone(), dir.clone()).expect("reopens");
        b = reopened.0;
        assert_eq!(durable(&b), before, "round {round}: the durable topology after the crash");
        // The restart folded the journal into the snapshot.
        assert_eq!(mem.file_len(&journal), Some(16), "round {round}: a fresh journal after the restart");
    }
    eprintln!("largest journal: {largest_journal} bytes");
    assert!(built, "some round ended with durable queues and bindings to compare");
    // The journal was used (it grew) and stayed bounded by the snapshot rewrites.
    assert!(largest_journal > 16, "changes went to the journal");
    assert!(largest_journal > 60_000, "the journal took a run of changes: {largest_journal} bytes");
    assert!(largest_journal < 150_000, "the journal is folded in as it grows: {largest_journal} bytes");
}

#[test]
fn a_journal_of_another_generation_is_not_replayed() {
    let mem = MemBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(mem.clone());
    let dir = PathBuf::from("/data");
    let journal = dir.join("definitions.journal");
    let (mut b, _) = Broker::open(Config::default(), backend.clone(), dir.clone()).expect("opens");
    let mut out = Vec::new();
    b.add_vhost("v").expect("vhost");
    b.declare_queue(Caller::Broker, "v", "gone", true, false, FieldTable::new(), 0, &mut out).expect("declare");
    let old_journal = backend.read(&journal).expect("journal");
    // Deleting the vhost rewrites the snapshot (without the queue) and starts a new journal.
    assert!(b.delete_vhost("v", 0, &mut out).expect("delete vhost"));
    drop(b);
    // As if the crash came between the snapshot and the new journal: the old journal, which
    // declares the queue, is back. It continues the older snapshot and must be ignored.
    backend.replace_durably(&journal, &old_journal).expect("old journal back");
    let (b, _) = Broker::open(Config::default(), backend, dir).expect("reopens");
    assert!(b.queues().iter().all(|q| q.name != "gone"), "the stale journal was not replayed");
    assert_eq!(b.vhost_names(), ["/"]);
}
