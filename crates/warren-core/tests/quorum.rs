//! The quorum queue's state machine (`warren_core::quorum`): its semantics case by case, and a
//! seeded run of random commands that checks its invariants after every step, delivers only the
//! head and only to attached consumers, conserves every message, and gives the same outputs and
//! the same state byte for byte on a second run of the same seed (as a replica applying the same
//! log must). `WARREN_QUORUM_SEED=n` replays one seed.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;
use std::sync::Arc;
use warren_amqp::{BasicProperties, ShortStr};
use warren_core::body_store::{BodyStore, SharedBodyStore};
use warren_core::message::{Message, MessageRef};
use warren_core::quorum::{
    Command, DeadReason, Effect, Gone, MsgId, Output, Owner, QuorumConfig, QuorumQueue, Reply, Stamped,
};
use warren_store::FsBackend;

fn msg(n: u64) -> MessageRef {
    msg_with(n, None)
}

fn msg_with(n: u64, expiration: Option<&str>) -> MessageRef {
    let props = BasicProperties { expiration: expiration.map(ShortStr::from), ..Default::default() };
    let raw = props.to_bytes();
    Message::new(ShortStr::from(""), ShortStr::from("q"), props, raw, Bytes::from(n.to_string()))
}

fn number(m: &MessageRef) -> u64 {
    std::str::from_utf8(&m.body).expect("utf-8").parse().expect("a number")
}

const A: Owner = Owner { node: 1, conn: 1, channel: 1 };
const B: Owner = Owner { node: 2, conn: 7, channel: 1 };

/// A queue and its log: every command gets the next index and the given clock.
struct Log {
    q: QuorumQueue,
    index: u64,
    now: u64,
}

impl Log {
    fn new(config: QuorumConfig) -> Self {
        Log { q: QuorumQueue::new(config), index: 0, now: 1_000 }
    }

    fn apply(&mut self, command: Command) -> Output {
        self.index += 1;
        let out = self.q.apply(self.index, &Stamped { now_ms: self.now, command });
        self.q.check_invariants().expect("invariants hold");
        out
    }

    fn publish(&mut self, n: u64) -> Output {
        self.apply(Command::Enqueue { msg: msg(n) })
    }

    fn attach(&mut self, owner: Owner, tag: &str, prefetch: u32) -> Output {
        self.apply(Command::Attach { owner, tag: tag.into(), prefetch, no_ack: false, priority: 0, exclusive: false })
    }
}

/// The deliveries of an output as (tag, message number, redelivered, delivery count).
fn delivered(out: &Output) -> Vec<(String, u64, bool, u32)> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver { tag, delivery, .. } => {
                Some((tag.to_string(), number(&delivery.msg), delivery.redelivered, delivery.delivery_count))
            }
            _ => None,
        })
        .collect()
}

fn ids(out: &Output) -> Vec<MsgId> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver { delivery, .. } => Some(delivery.id),
            _ => None,
        })
        .collect()
}

fn dead(out: &Output) -> Vec<(u64, DeadReason)> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeadLetter { msg, reason, .. } => Some((number(msg), *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn prefetch_bounds_what_a_consumer_holds_and_a_settle_gives_room() {
    let mut log = Log::new(QuorumConfig::default());
    for n in 0..5 {
        log.publish(n);
    }
    let out = log.attach(A, "c", 2);
    assert_eq!(delivered(&out), vec![("c".into(), 0, false, 0), ("c".into(), 1, false, 0)]);
    assert_eq!(log.q.unsettled_count(), 2);
    let first = ids(&out)[0];
    let out = log.apply(Command::Settle { owner: A, ids: vec![first] });
    assert_eq!(delivered(&out), vec![("c".into(), 2, false, 0)]);
    // Another channel cannot settle what this one holds.
    let held = ids(&out)[0];
    let out = log.apply(Command::Settle { owner: B, ids: vec![held] });
    assert!(out.effects.is_empty());
    assert_eq!(log.q.unsettled_count(), 2);
}

#[test]
fn a_returned_message_goes_to_the_back_and_counts_a_delivery() {
    // As RabbitMQ 3.10.8's quorum queues: a nack with requeue puts the message behind the
    // messages not yet delivered, in the order messages came back.
    let mut log = Log::new(QuorumConfig::default());
    for n in 0..3 {
        log.publish(n);
    }
    let out = log.attach(A, "c", 1);
    let id = ids(&out)[0];
    let out = log.apply(Command::Return { owner: A, ids: vec![id] });
    assert_eq!(delivered(&out), vec![("c".into(), 1, false, 0)], "the next fresh message first");
    let out = log.apply(Command::Settle { owner: A, ids: ids(&out) });
    assert_eq!(delivered(&out), vec![("c".into(), 2, false, 0)]);
    let out = log.apply(Command::Settle { owner: A, ids: ids(&out) });
    assert_eq!(delivered(&out), vec![("c".into(), 0, true, 1)], "then the returned one, redelivered, count 1");
}

#[test]
fn past_the_delivery_limit_a_message_is_dead_lettered() {
    let mut log = Log::new(QuorumConfig { delivery_limit: Some(2), ..Default::default() });
    log.publish(0);
    let mut out = log.attach(A, "c", 1);
    for returns in 1..=2 {
        let id = ids(&out)[0];
        out = log.apply(Command::Return { owner: A, ids: vec![id] });
        assert_eq!(delivered(&out), vec![("c".into(), 0, true, returns)]);
    }
    let id = ids(&out)[0];
    out = log.apply(Command::Return { owner: A, ids: vec![id] });
    assert_eq!(dead(&out), vec![(0, DeadReason::DeliveryLimit)]);
    assert!(delivered(&out).is_empty());
    assert_eq!(delivered(&log.publish(1)), vec![("c".into(), 1, false, 0)], "the consumer has its room back");
}

#[test]
fn discard_dead_letters_as_rejected() {
    let mut log = Log::new(QuorumConfig::default());
    log.publish(0);
    let out = log.attach(A, "c", 0);
    let out = log.apply(Command::Discard { owner: A, ids: ids(&out) });
    assert_eq!(dead(&out), vec![(0, DeadReason::Rejected)]);
    assert_eq!(log.q.unsettled_count() + log.q.ready_count(), 0);
}

#[test]
fn higher_priority_consumers_first_and_round_robin_among_equals() {
    let mut log = Log::new(QuorumConfig::default());
    log.attach(A, "low", 0);
    log.apply(Command::Attach {
        owner: B,
        tag: "high".into(),
        prefetch: 2,
        no_ack: false,
        priority: 5,
        exclusive: false,
    });
    log.attach(B, "low2", 0);
    let mut got = Vec::new();
    for n in 0..6 {
        got.extend(delivered(&log.publish(n)).into_iter().map(|d| d.0));
    }
    assert_eq!(got, ["high", "high", "low", "low2", "low", "low2"]);
}

#[test]
fn a_single_active_consumer_takes_everything_until_it_goes() {
    let mut log = Log::new(QuorumConfig { single_active_consumer: true, ..Default::default() });
    log.attach(A, "first", 0);
    log.attach(B, "second", 0);
    let tags: Vec<String> = (0..3).flat_map(|n| delivered(&log.publish(n))).map(|d| d.0).collect();
    assert_eq!(tags, ["first"; 3]);
    log.apply(Command::Cancel { owner: A, tag: "first".into() });
    assert_eq!(delivered(&log.publish(3)), vec![("second".into(), 3, false, 0)]);
    // The cancelled consumer keeps what it held until it settles it.
    assert_eq!(log.q.unsettled_count(), 4);
    assert_eq!(log.q.consumer_count(), 2);
}

#[test]
fn a_node_that_goes_returns_what_its_consumers_held_to_the_others() {
    let mut log = Log::new(QuorumConfig::default());
    log.attach(A, "on-1", 0);
    for n in 0..2 {
        log.publish(n);
    }
    log.attach(B, "on-2", 0);
    let out = log.apply(Command::Down(Gone::Node(1)));
    assert_eq!(delivered(&out), vec![("on-2".into(), 0, true, 1), ("on-2".into(), 1, true, 1)]);
    assert_eq!(log.q.consumer_count(), 1);
    // A connection's channels all go with it.
    let out = log.apply(Command::Down(Gone::Connection { node: 2, conn: 7 }));
    assert!(out.effects.is_empty());
    assert_eq!((log.q.consumer_count(), log.q.ready_count(), log.q.unsettled_count()), (0, 2, 0));
}

#[test]
fn expired_messages_leave_from_the_head_and_get_skips_them() {
    let mut log = Log::new(QuorumConfig { message_ttl_ms: Some(100), ..Default::default() });
    log.publish(0);
    log.apply(Command::Enqueue { msg: msg_with(1, Some("10")) });
    log.now += 50;
    let out = log.apply(Command::Tick);
    assert!(out.effects.is_empty(), "nothing expired at the head yet");
    log.now += 60;
    let out = log.apply(Command::Tick);
    assert_eq!(dead(&out), vec![(0, DeadReason::Expired), (1, DeadReason::Expired)]);
    log.publish(2);
    log.apply(Command::Enqueue { msg: msg_with(3, Some("0")) });
    log.now += 101;
    log.publish(4);
    let out = log.apply(Command::Get { owner: A, no_ack: true });
    assert_eq!(dead(&out), vec![(2, DeadReason::Expired), (3, DeadReason::Expired)]);
    assert_eq!(out.got.as_ref().map(|d| number(&d.msg)), Some(4));
    assert!(matches!(out.reply, Reply::Got { delivery: Some(_), remaining: 0 }));
    let out = log.apply(Command::Get { owner: A, no_ack: true });
    assert_eq!(out.reply, Reply::Got { delivery: None, remaining: 0 });
}

#[test]
fn length_limits_drop_from_the_head_or_refuse() {
    let mut log = Log::new(QuorumConfig { max_length: Some(2), ..Default::default() });
    for n in 0..3 {
        let out = log.publish(n);
        assert_eq!(out.reply, Reply::Ok);
        if n == 2 {
            assert_eq!(dead(&out), vec![(0, DeadReason::MaxLen)]);
        }
    }
    let mut log = Log::new(QuorumConfig { max_length: Some(2), reject_publish: true, ..Default::default() });
    let replies: Vec<Reply> = (0..3).map(|n| log.publish(n).reply).collect();
    assert_eq!(replies, [Reply::Ok, Reply::Ok, Reply::Rejected]);
    assert_eq!(log.q.ready_count(), 2);
}

#[test]
fn a_get_without_no_ack_is_held_by_its_channel_until_settled_or_returned() {
    let mut log = Log::new(QuorumConfig::default());
    log.publish(0);
    log.publish(1);
    let out = log.apply(Command::Get { owner: A, no_ack: false });
    let id = out.got.as_ref().expect("a message").id;
    assert_eq!(
        out.reply,
        Reply::Got {
            delivery: Some(warren_core::quorum::GotMessage { id, redelivered: false, delivery_count: 0 }),
            remaining: 1
        }
    );
    let out = log.apply(Command::Down(Gone::Channel(A)));
    assert!(out.effects.is_empty());
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = log.apply(Command::Get { owner: B, no_ack: true }).got.expect("a message");
        got.push((number(&d.msg), d.redelivered, d.delivery_count));
    }
    assert_eq!(got, vec![(1, false, 0), (0, true, 1)], "the returned message behind the other");
    log.publish(2);
    let out = log.apply(Command::Purge);
    assert_eq!(out.reply, Reply::Purged(1));
}

/// What a seeded run checks against: where each message is, as the test's own bookkeeping.
#[derive(Default)]
struct Ledger {
    accepted: BTreeSet<u64>,
    /// Message number -> how it ended.
    ended: BTreeMap<u64, &'static str>,
    /// Held deliveries: id -> (owner, message number).
    held: BTreeMap<MsgId, (Owner, u64)>,
    /// The ready messages in the order they must go out.
    order: VecDeque<u64>,
}

fn end(l: &mut Ledger, n: u64, how: &'static str) {
    assert!(l.accepted.contains(&n), "message {n} ended ({how}) without being accepted");
    let before = l.ended.insert(n, how);
    assert!(before.is_none(), "message {n} ended twice: {before:?}, then {how}");
}

/// Held deliveries coming back, in this order: to the back of the queue, unless the output
/// dead-lettered them (past the delivery limit).
fn give_back(l: &mut Ledger, ids: impl IntoIterator<Item = MsgId>, out: &Output) {
    let over_limit: BTreeSet<u64> =
        dead(out).into_iter().filter(|(_, r)| *r == DeadReason::DeliveryLimit).map(|(n, _)| n).collect();
    for id in ids {
        let (_, n) = l.held.remove(&id).expect("held");
        if !over_limit.contains(&n) {
            l.order.push_back(n);
        }
    }
}

/// Runs `steps` random commands from `seed` (restored from its own snapshot before step
/// `restore_at`); returns the transcript of outputs and the queue.
fn run(seed: u64, steps: usize, restore_at: Option<usize>) -> (String, QuorumQueue) {
    run_paged(seed, steps, restore_at, None)
}

/// The most messages a paging run of this seed kept in its store only at once.
static PAGED_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A store in a fresh temporary directory, and the directory.
fn temp_store(name: &str) -> (SharedBodyStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("warren-quorum-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = BodyStore::open_shared(Arc::new(FsBackend), &dir).expect("open the store");
    (store, dir)
}

/// As [`run`], by a member that pages to `paged` past a window of a few messages: a snapshot
/// (taken with its store synced, its releases settled once it is "written") names paged
/// messages by their place in the store.
fn run_paged(
    seed: u64,
    steps: usize,
    restore_at: Option<usize>,
    paged: Option<&SharedBodyStore>,
) -> (String, QuorumQueue) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let config = QuorumConfig {
        delivery_limit: Some(rng.u64(1..4)),
        max_length: rng.bool().then(|| rng.u64(3..20)),
        reject_publish: rng.bool(),
        single_active_consumer: rng.u8(0..4) == 0,
        message_ttl_ms: (rng.u8(0..3) == 0).then(|| rng.u64(5..50)),
        ..Default::default()
    };
    let mut log = Log::new(config.clone());
    let window = |q: &mut QuorumQueue| q.set_window(1 + (seed % 4) as usize, 64);
    if let Some(store) = paged {
        log.q = QuorumQueue::with_store(config, store.clone());
        window(&mut log.q);
    }
    let owners: Vec<Owner> =
        (0..4).map(|i| Owner { node: 1 + i % 3, conn: u64::from(i / 2), channel: 1 + (i % 2) as u16 }).collect();
    let mut ledger = Ledger::default();
    let mut consumers: BTreeMap<(Owner, String), (u32, bool)> = BTreeMap::new();
    let mut transcript = String::new();
    let mut next = 0u64;
    for step in 0..steps {
        if restore_at == Some(step) {
            // A replica that joins from a snapshot here must go on exactly as this one.
            match paged {
                None => log.q = QuorumQueue::restore(&log.q.snapshot()).expect("restores"),
                Some(store) => {
                    // A member that restarts from its own snapshot and store.
                    store.lock().sync().expect("sync");
                    let bytes = log.q.snapshot();
                    store.lock().settle_released();
                    log.q = QuorumQueue::restore_with(&bytes, Some(store.clone())).expect("restores");
                    window(&mut log.q);
                }
            }
        }
        log.now += rng.u64(0..10);
        let owner = owners[rng.usize(0..owners.len())];
        let mine: Vec<MsgId> = ledger.held.iter().filter(|(_, (o, _))| *o == owner).map(|(id, _)| *id).collect();
        let some = |rng: &mut fastrand::Rng| -> Vec<MsgId> { mine.iter().copied().filter(|_| rng.bool()).collect() };
        let command = match rng.u8(0..100) {
            0..=34 => {
                next += 1;
                let expiration = (rng.u8(0..8) == 0).then(|| rng.u64(0..30).to_string());
                Command::Enqueue { msg: msg_with(next, expiration.as_deref()) }
            }
            35..=44 => Command::Attach {
                owner,
                tag: format!("t{}", rng.u8(0..3)).into(),
                prefetch: rng.u32(0..4),
                no_ack: rng.u8(0..4) == 0,
                priority: i64::from(rng.u8(0..2)),
                exclusive: false,
            },
            45..=49 => Command::Cancel { owner, tag: format!("t{}", rng.u8(0..3)).into() },
            50..=64 => Command::Settle { owner, ids: some(&mut rng) },
            65..=72 => {
                let mut ids = some(&mut rng);
                rng.shuffle(&mut ids);
                Command::Return { owner, ids }
            }
            73..=77 => Command::Discard { owner, ids: some(&mut rng) },
            78..=85 => Command::Get { owner, no_ack: rng.bool() },
            86..=89 => Command::Down(match rng.u8(0..3) {
                0 => Gone::Channel(owner),
                1 => Gone::Connection { node: owner.node, conn: owner.conn },
                _ => Gone::Node(owner.node),
            }),
            90..=91 => Command::Purge,
            _ => Command::Tick,
        };
        // Every command goes through its log encoding, as a replica would read it.
        let mut encoded = Vec::new();
        Stamped { now_ms: log.now, command: command.clone() }.encode(&mut encoded);
        let decoded = Stamped::decode(&encoded).expect("decodes");
        assert_eq!(decoded.now_ms, log.now);
        let command = decoded.command;
        let out = log.apply(command.clone());
        writeln!(transcript, "{step} {:?}", summary(&out)).expect("write");
        // The test's own view of what the command did, before its effects.
        match &command {
            Command::Enqueue { msg } if out.reply != Reply::Rejected => {
                ledger.accepted.insert(number(msg));
                ledger.order.push_back(number(msg));
            }
            Command::Attach { owner, tag, prefetch, no_ack, .. } if out.reply == Reply::Ok => {
                consumers.insert((*owner, tag.to_string()), (*prefetch, *no_ack));
            }
            Command::Cancel { owner, tag } => {
                consumers.remove(&(*owner, tag.to_string()));
            }
            Command::Settle { ids, .. } => {
                for id in ids {
                    let (_, n) = ledger.held.remove(id).expect("held");
                    end(&mut ledger, n, "settled");
                }
            }
            Command::Return { ids, .. } => give_back(&mut ledger, ids.iter().copied(), &out),
            Command::Discard { ids, .. } => {
                for id in ids {
                    ledger.held.remove(id).expect("held");
                }
            }
            Command::Down(gone) => {
                let covers = |o: &Owner| match *gone {
                    Gone::Channel(c) => c == *o,
                    Gone::Connection { node, conn } => o.node == node && o.conn == conn,
                    Gone::Node(node) => o.node == node,
                };
                let back: Vec<MsgId> = ledger.held.iter().filter(|(_, (o, _))| covers(o)).map(|(id, _)| *id).collect();
                give_back(&mut ledger, back, &out);
                consumers.retain(|(o, _), _| !covers(o));
            }
            _ => {}
        }
        account(seed, step, &mut ledger, &consumers, &out);
        // After its effects (expired messages leave the head before a get takes it).
        match &command {
            Command::Get { owner, no_ack } => {
                if let Some(d) = &out.got {
                    let n = number(&d.msg);
                    assert_eq!(ledger.order.pop_front(), Some(n), "seed {seed} step {step}: got the head");
                    if *no_ack {
                        end(&mut ledger, n, "got");
                    } else {
                        ledger.held.insert(d.id, (*owner, n));
                    }
                }
            }
            Command::Purge => {
                let Reply::Purged(n) = out.reply else { panic!("purge replies Purged") };
                assert_eq!(n, ledger.order.len() as u64);
                while let Some(n) = ledger.order.pop_front() {
                    end(&mut ledger, n, "purged");
                }
            }
            _ => {}
        }
        PAGED_SEEN.fetch_max(log.q.paged_count(), std::sync::atomic::Ordering::Relaxed);
        assert_eq!(log.q.unsettled_count(), ledger.held.len() as u64, "seed {seed} step {step}: held");
        assert_eq!(log.q.ready_count(), ledger.order.len() as u64, "seed {seed} step {step}: ready");
    }
    // Drain: every channel goes, and one consumer takes what is left.
    for node in 1..=3 {
        let out = log.apply(Command::Down(Gone::Node(node)));
        let back: Vec<MsgId> = ledger.held.iter().filter(|(_, (o, _))| o.node == node).map(|(id, _)| *id).collect();
        give_back(&mut ledger, back, &out);
        consumers.retain(|(o, _), _| o.node != node);
        account(seed, steps, &mut ledger, &consumers, &out);
    }
    let drain = Owner { node: 9, conn: 9, channel: 9 };
    let out = log.apply(Command::Attach {
        owner: drain,
        tag: "drain".into(),
        prefetch: 0,
        no_ack: true,
        priority: 0,
        exclusive: false,
    });
    consumers.insert((drain, "drain".into()), (0, true));
    account(seed, steps, &mut ledger, &consumers, &out);
    assert_eq!((log.q.ready_count(), log.q.unsettled_count()), (0, 0), "seed {seed}: drained");
    assert_eq!(ledger.ended.len(), ledger.accepted.len(), "seed {seed}: every accepted message ended once");
    (transcript, log.q)
}

/// Keeps the ledger's account of an output's effects: deliveries (only to attached consumers,
/// always the head of the expected order) and dead-lettering (expired and dropped messages from
/// the head; rejected and over-limit ones from what was held).
fn account(
    seed: u64,
    step: usize,
    ledger: &mut Ledger,
    consumers: &BTreeMap<(Owner, String), (u32, bool)>,
    out: &Output,
) {
    for e in &out.effects {
        match e {
            Effect::Deliver { owner, tag, delivery } => {
                let n = number(&delivery.msg);
                let (_, no_ack) = *consumers
                    .get(&(*owner, tag.to_string()))
                    .unwrap_or_else(|| panic!("seed {seed} step {step}: delivery to {tag} which is not attached"));
                let head = ledger.order.pop_front();
                assert_eq!(head, Some(n), "seed {seed} step {step}: delivered {n} but the head is {head:?}");
                if no_ack {
                    end(ledger, n, "auto-acked");
                } else {
                    ledger.held.insert(delivery.id, (*owner, n));
                }
            }
            Effect::DeadLetter { msg, reason, .. } => {
                let n = number(msg);
                if matches!(reason, DeadReason::Expired | DeadReason::MaxLen) {
                    let head = ledger.order.pop_front();
                    assert_eq!(head, Some(n), "seed {seed} step {step}: {reason:?} {n} but the head is {head:?}");
                } else {
                    assert!(!ledger.order.contains(&n), "seed {seed} step {step}: {reason:?} {n} was ready");
                }
                end(ledger, n, reason.as_str());
            }
        }
    }
}

/// An output as text: the reply, then each effect with its ids, owners, tags and reasons.
fn summary(out: &Output) -> String {
    let mut s = format!("{:?}", out.reply);
    for e in &out.effects {
        match e {
            Effect::Deliver { owner, tag, delivery } => write!(
                s,
                " deliver({owner:?},{tag},{},{},{},{})",
                delivery.id,
                number(&delivery.msg),
                delivery.redelivered,
                delivery.delivery_count
            ),
            Effect::DeadLetter { msg, reason, delivery_count } => {
                write!(s, " dead({},{},{delivery_count})", number(msg), reason.as_str())
            }
        }
        .expect("write");
    }
    s
}

#[test]
fn seeded_runs_conserve_every_message_and_replay_byte_for_byte() {
    let seeds: Vec<u64> = match std::env::var("WARREN_QUORUM_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => (0..32).collect(),
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| {
            let (first, q1) = run(seed, 600, None);
            let (second, q2) = run(seed, 600, None);
            assert_eq!(first, second, "seed {seed}: a second run differs");
            assert_eq!(format!("{q1:?}"), format!("{q2:?}"), "seed {seed}: the states differ");
            let restore_at = Some((200 + seed as usize * 7) % 600);
            let (restored, q3) = run(seed, 600, restore_at);
            assert_eq!(first, restored, "seed {seed}: a run restored from a snapshot differs");
            assert_eq!(q1.snapshot(), q3.snapshot(), "seed {seed}: the snapshots differ");
            // A member that pages past a small window does exactly the same, and once the
            // queue is empty and a snapshot written, its store holds nothing.
            let (store, dir) = temp_store(&format!("seed-{seed}"));
            PAGED_SEEN.store(0, std::sync::atomic::Ordering::Relaxed);
            let (paged, q4) = run_paged(seed, 600, restore_at, Some(&store));
            assert!(PAGED_SEEN.load(std::sync::atomic::Ordering::Relaxed) > 0, "seed {seed}: nothing was paged");
            assert_eq!(first, paged, "seed {seed}: a member that pages differs");
            assert_eq!(q1.snapshot(), q4.snapshot(), "seed {seed}: the paging member's snapshot differs");
            store.lock().sync().expect("sync");
            store.lock().settle_released();
            assert_eq!(store.lock().records(), 0, "seed {seed}: records left in the store");
            drop((q4, store));
            let _ = std::fs::remove_dir_all(dir);
        });
        if let Err(e) = result {
            eprintln!("quorum machine failed with seed {seed}: replay with WARREN_QUORUM_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn a_member_pages_past_its_window_and_its_snapshot_names_what_it_paged() {
    let (store, dir) = temp_store("window");
    let config = QuorumConfig::default();
    let mut log = Log::new(config.clone());
    log.q = QuorumQueue::with_store(config.clone(), store.clone());
    log.q.set_window(3, 1 << 20);
    let mut plain = Log::new(config);
    for n in 0..10 {
        log.publish(n);
        plain.publish(n);
    }
    assert_eq!((log.q.ready_count(), log.q.paged_count()), (10, 7), "three in memory, seven in the store");
    assert_eq!(store.lock().records(), 7);
    assert_eq!(log.q.held_bytes(), 3, "the bodies in memory: \"0\", \"1\", \"2\"");
    store.lock().sync().expect("sync");
    let bytes = log.q.snapshot();
    assert!(bytes.len() < plain.q.snapshot().len(), "paged messages are named, not carried");
    assert!(QuorumQueue::restore(&bytes).is_err(), "paged messages need the store");
    // Another member gets the bodies inline: the same as a member that never paged.
    let sent = QuorumQueue::resolve_snapshot(&bytes, &store).expect("resolves");
    assert_eq!(sent, plain.q.snapshot());
    assert_eq!(QuorumQueue::restore(&sent).expect("restores").snapshot(), sent);
    // Records written after the snapshot (the log applied after it writes them again) go when
    // the member restarts from it.
    log.publish(10);
    assert_eq!(store.lock().records(), 8);
    let mut again = Log::new(QuorumConfig::default());
    again.q = QuorumQueue::restore_with(&bytes, Some(store.clone())).expect("restores");
    again.index = log.index;
    assert_eq!(store.lock().records(), 7);
    again.q.set_window(3, 1 << 20);
    again.publish(10);
    // Delivered in order, the paged ones read back; each settled one is released and goes once
    // a later snapshot is written.
    let out = again.attach(A, "c", 0);
    let got: Vec<u64> = delivered(&out).iter().map(|d| d.1).collect();
    assert_eq!(got, (0..=10).collect::<Vec<_>>());
    again.apply(Command::Settle { owner: A, ids: ids(&out) });
    assert_eq!(store.lock().records(), 8, "kept until a snapshot without them is written");
    store.lock().sync().expect("sync");
    let _ = again.q.snapshot();
    store.lock().settle_released();
    assert_eq!(store.lock().records(), 0);
    drop((log, again, store));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_snapshot_restores_the_same_queue_and_refuses_what_is_not_one() {
    let mut log = Log::new(QuorumConfig { delivery_limit: Some(3), max_length: Some(10), ..Default::default() });
    for n in 0..4 {
        log.publish(n);
    }
    log.apply(Command::Enqueue { msg: msg_with(4, Some("500")) });
    let out = log.attach(A, "c", 2);
    log.apply(Command::Return { owner: A, ids: ids(&out)[..1].to_vec() });
    log.apply(Command::Get { owner: B, no_ack: false });
    let bytes = log.q.snapshot();
    let back = QuorumQueue::restore(&bytes).expect("restores");
    assert_eq!(format!("{back:?}"), format!("{:?}", log.q));
    assert_eq!(back.snapshot(), bytes);
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(QuorumQueue::restore(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(QuorumQueue::restore(&longer).is_err());
}

#[test]
fn a_command_that_is_cut_or_unknown_is_refused() {
    let mut b = Vec::new();
    Stamped { now_ms: 5, command: Command::Enqueue { msg: msg(1) } }.encode(&mut b);
    for cut in [0, 8, 9, b.len() - 1] {
        assert!(Stamped::decode(&b[..cut]).is_err(), "cut at {cut}");
    }
    let mut unknown = b.clone();
    unknown[8] = 99;
    assert!(Stamped::decode(&unknown).is_err());
    let mut settle = Vec::new();
    Stamped { now_ms: 5, command: Command::Settle { owner: A, ids: vec![1, 2] } }.encode(&mut settle);
    // A count of ids larger than the bytes that follow.
    settle[8 + 1 + 14 + 7] = 200;
    assert!(Stamped::decode(&settle).is_err());
}

#[test]
fn an_exclusive_consume_reads_back_as_exclusive_and_an_older_one_as_not() {
    for exclusive in [false, true] {
        let attach = Command::Attach { owner: A, tag: "c".into(), prefetch: 3, no_ack: false, priority: 1, exclusive };
        let mut b = Vec::new();
        Stamped { now_ms: 5, command: attach }.encode(&mut b);
        // The tag byte: 2 as before the flag existed, 11 for an exclusive consume.
        assert_eq!(b[8], if exclusive { 11 } else { 2 });
        match Stamped::decode(&b).expect("decodes").command {
            Command::Attach { exclusive: back, prefetch: 3, priority: 1, .. } => assert_eq!(back, exclusive),
            other => panic!("not an attach: {other:?}"),
        }
    }
}
