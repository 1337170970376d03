//! A replicated quorum queue under faults, in one process: three members of the machine a
//! node runs (`QueueMachine`) over warren-raft's LocalNet, each with its log in a write-ahead
//! log of its own on disk (`Wal`, as a node's), its snapshots in a file, and a store it pages
//! to past a memory window of two messages (so snapshots name most messages in the store, and
//! a snapshot sent to a member that fell behind carries them). Publishes are proposed through whichever member a seeded
//! schedule picks while the schedule isolates members, cuts links one way, heals them, and
//! crashes a member (its group stopped, its WAL closed; half the time a power cut, which also
//! loses what its disk had not synced) to restart it later from what its disk holds; all the
//! while the network loses requests and replies at random and delays each, so
//! that RPCs in flight arrive in other orders. Afterwards every confirmed publish must be
//! delivered exactly once, nothing that was never published may appear, and every member, the
//! restarted ones included, must hold the same queue, byte for byte.
//!
//! The fault schedule and the message faults' generator come from the seed; openraft's own
//! timing does not (its election timeouts are drawn from an unseeded source, and the order in
//! which RPCs meet the generator is its tasks'), so a seed replays the same faults, not the
//! same interleaving. `WARREN_FAULTS_SEED=n` runs one seed.

use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use warren_amqp::{BasicProperties, ShortStr};
use warren_cluster::queues::QueueMachine;
use warren_core::body_store::{BodyStore, SharedBodyStore};
use warren_core::message::Message;
use warren_core::quorum::{Command, Effect, Output, Owner, QuorumConfig, Reply, Stamped};
use warren_raft::{Group, GroupConfig, LocalNet, Machine, ProposeError, Wal, WalConfig};

/// A single command as the log entry a node's host would propose.
fn batch(stamped: Stamped) -> Arc<Vec<Stamped>> {
    Arc::new(vec![stamped])
}

const WAIT: Duration = Duration::from_secs(10);
/// How long a publish waits for its confirm before its outcome counts as unknown.
const CONFIRM_WAIT: Duration = Duration::from_millis(300);

fn config() -> GroupConfig {
    GroupConfig {
        heartbeat_ms: 50,
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        snapshot_every_entries: 40,
        kept_after_snapshot_entries: 10,
        ..Default::default()
    }
}

fn enqueue(n: u64) -> Command {
    let props = BasicProperties { delivery_mode: Some(2), ..Default::default() };
    let raw = props.to_bytes();
    Command::Enqueue { msg: Message::new("".into(), "q".into(), props, raw, Bytes::from(n.to_string())) }
}

fn numbers(out: &Output) -> Vec<u64> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver { delivery, .. } => {
                Some(std::str::from_utf8(&delivery.msg.body).expect("utf-8").parse().expect("a number"))
            }
            _ => None,
        })
        .collect()
}

/// One member: its group and the WAL its log is in (`None` while crashed).
struct Member {
    group: Group<QueueMachine>,
    wal: Wal,
}

/// How a member goes down.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Crash {
    /// The process dies: what the WAL was handed reaches the files (the page cache keeps it).
    Process,
    /// The machine loses power: every segment is cut back to what was synced, so a write
    /// not yet synced is lost (a leader sends entries before its own copy is synced).
    Power,
}

/// Starts member `id` on its disk in `dir` (empty the first time, what it held when it
/// crashed afterwards) and puts it on the network.
async fn start(
    net: &LocalNet<QueueMachine>,
    dir: &std::path::Path,
    id: u64,
    stores: &mut HashMap<u64, SharedBodyStore>,
) -> Member {
    let dir = dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).expect("the member's directory");
    let wal = Wal::open(&dir.join("wal"), WalConfig::default()).expect("open the WAL");
    let log = wal.log::<QueueMachine>(1).expect("the group's log");
    // One store per member for the whole run, as a node's host keeps it for its members
    // started again (handles on the stopped member may outlive it: a second store on the
    // same files would be a second writer).
    let bodies = stores
        .entry(id)
        .or_insert_with(|| {
            BodyStore::open_shared(Arc::new(warren_store::FsBackend), &dir.join("bodies")).expect("the store")
        })
        .clone();
    let mut machine = QueueMachine::with_store(QuorumConfig::default(), bodies);
    machine.set_window(2, 1 << 20);
    let (group, _applied) = Group::start_durable(id, &config(), machine, net.transport(id), log, dir.join("snapshot"))
        .await
        .expect("start");
    net.register(group.clone());
    Member { group, wal }
}

/// Crashes a member: off the network, its group stopped, its WAL closed (what it synced stays;
/// nothing it had not acknowledged counts); after a power cut, its segment files cut back to
/// what the WAL had synced when it went off the network.
/// Returns the bytes a power cut took off.
async fn crash(net: &LocalNet<QueueMachine>, member: Member, how: Crash) -> u64 {
    net.unregister(member.group.id());
    // What is on disk at the instant of the cut (off the network, the member can no longer
    // tell anyone of what it syncs afterwards).
    let synced = member.wal.synced_extents();
    member.group.shutdown().await.expect("shutdown");
    let dir = member.wal.dir().to_path_buf();
    member.wal.close().await;
    let mut cut = 0;
    if how == Crash::Power {
        for entry in std::fs::read_dir(&dir).expect("the WAL's directory") {
            let path = entry.expect("an entry").path();
            if path.extension().is_none_or(|e| e != "wal") {
                continue;
            }
            let keep = synced.iter().find(|(p, _)| *p == path).map_or(0, |(_, n)| *n);
            let file = std::fs::OpenOptions::new().write(true).open(&path).expect("a segment");
            let len = file.metadata().expect("its size").len();
            if len > keep {
                file.set_len(keep).expect("cut back to what was synced");
                cut += len - keep;
            }
        }
    }
    cut
}

async fn run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = std::env::temp_dir().join(format!("warren-faults-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let net: LocalNet<QueueMachine> = LocalNet::new();
    let mut members: Vec<Option<Member>> = Vec::new();
    let mut stores = HashMap::new();
    for id in 1..=3 {
        members.push(Some(start(&net, &dir, id, &mut stores).await));
    }
    let first = members[0].as_ref().expect("member 1").group.clone();
    first.initialize((1..=3).map(|id| (id, format!("local-{id}"))).collect()).await.expect("initialize");
    first.wait_for_leader(WAIT).await.expect("a leader");
    // Every message from here on: 2% lost, each held back up to 5 ms.
    net.set_message_faults(seed, 0.02, Duration::from_millis(5));
    // The crashed member and the step at which it comes back.
    let mut down: Option<(u64, u64)> = None;
    let (mut crashes, mut restarts, mut power_cuts, mut lost_bytes) = (0, 0, 0u32, 0u64);

    let (mut confirmed, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    let mut now = 1_000;
    for n in 0..40u64 {
        match rng.u8(0..12) {
            0 => net.isolate(rng.u64(1..4)),
            1 => {
                let (a, b) = (rng.u64(1..4), rng.u64(1..4));
                if a != b {
                    net.cut(a, b);
                }
            }
            2 | 3 => net.heal(),
            // A crash, while every member runs (one at a time: two down would stop the queue).
            4 if down.is_none() => {
                // Half the time the member that leads, as far as member 1 knows.
                let leading = members[0].as_ref().and_then(|m| m.group.status().leader).filter(|_| rng.bool());
                let id = leading.unwrap_or_else(|| rng.u64(1..4));
                let member = members[id as usize - 1].take().expect("a running member");
                // A publish in flight as it goes: a leader sends entries on before its own copy
                // is synced, so a power cut may take from it what its followers hold.
                now += 1;
                let inflight = 1_000 + n;
                unknown.insert(inflight);
                let (group, stamped) = (member.group.clone(), Stamped { now_ms: now, command: enqueue(inflight) });
                let publish = tokio::spawn(async move { group.propose(batch(stamped)).await.map(|_| ()) });
                // Cut while the publish is on its way to the disk (a few turns of the runtime).
                for _ in 0..rng.u8(1..12) {
                    tokio::task::yield_now().await;
                }
                let how = if rng.bool() { Crash::Power } else { Crash::Process };
                lost_bytes += crash(&net, member, how).await;
                power_cuts += u32::from(how == Crash::Power);
                publish.abort();
                down = Some((id, n + rng.u64(1..5)));
                crashes += 1;
            }
            _ => {}
        }
        if let Some((id, back)) = down {
            if n >= back {
                let member = start(&net, &dir, id, &mut stores).await;
                // A publish through it at once, before it has heard from anyone (a node's host
                // proposes what waited for the restart): a member that lost its log's tail must
                // not put something else under log ids its peers hold.
                now += 1;
                let at_restart = 2_000 + n;
                unknown.insert(at_restart);
                let (group, stamped) = (member.group.clone(), Stamped { now_ms: now, command: enqueue(at_restart) });
                tokio::spawn(async move { tokio::time::timeout(CONFIRM_WAIT, group.propose(batch(stamped))).await });
                members[id as usize - 1] = Some(member);
                down = None;
                restarts += 1;
            }
        }
        // One step in eight publishes nothing: that number must never be delivered.
        if rng.u8(0..8) == 0 {
            continue;
        }
        // Publish through a member the schedule picks, following "not leader" answers.
        let mut target = rng.u64(1..4);
        now += 1;
        let stamped = Stamped { now_ms: now, command: enqueue(n) };
        let mut outcome = Some(false);
        for _ in 0..3 {
            let Some(member) = &members[target as usize - 1] else {
                // Crashed: the publisher's connection to it failed, as a client's would.
                break;
            };
            let group = &member.group;
            match tokio::time::timeout(CONFIRM_WAIT, group.propose(batch(stamped.clone()))).await {
                Ok(Ok((_, out))) => {
                    assert_eq!(out[0].reply, Reply::Ok, "seed {seed}: publish {n}");
                    outcome = Some(true);
                    break;
                }
                Ok(Err(ProposeError::NotLeader { leader: Some(l) })) if l != target => target = l,
                Ok(Err(ProposeError::NotLeader { .. })) => {
                    // No leader known here yet (an election is on): wait a little for one.
                    let known =
                        group.wait_until(CONFIRM_WAIT, "a leader", |s| s.leader.is_some_and(|l| l != target)).await;
                    match known.ok().and_then(|s| s.leader) {
                        Some(l) => target = l,
                        None => break,
                    }
                }
                Ok(Err(e)) => panic!("seed {seed}: publish {n}: {e:?}"),
                // Proposed but not confirmed in time: it may still commit.
                Err(_) => {
                    outcome = None;
                    break;
                }
            }
        }
        match outcome {
            Some(true) => {
                confirmed.insert(n);
            }
            // Refused ("not leader" may come after the entry was appended by a leader that was
            // then deposed, and a majority may hold it) or not confirmed in time: it may commit.
            Some(false) | None => {
                unknown.insert(n);
            }
        }
    }

    // Heal, restart a crashed member, let a leader settle, and drain through it with a
    // consumer that takes everything.
    net.heal();
    net.clear_message_faults();
    if let Some((id, _)) = down.take() {
        members[id as usize - 1] = Some(start(&net, &dir, id, &mut stores).await);
        restarts += 1;
    }
    let groups: Vec<Group<QueueMachine>> =
        members.iter().map(|m| m.as_ref().expect("every member runs").group.clone()).collect();
    let leader = groups[0].wait_for_leader(WAIT).await.expect("a leader after healing");
    let drain = Owner { node: 9, conn: 9, channel: 9 };
    let attach = Command::Attach {
        owner: drain,
        tag: ShortStr::from("drain"),
        prefetch: 0,
        no_ack: true,
        priority: 0,
        exclusive: false,
    };
    let mut target = leader;
    let (index, out) = loop {
        now += 1;
        match tokio::time::timeout(
            WAIT,
            groups[target as usize - 1].propose(batch(Stamped { now_ms: now, command: attach.clone() })),
        )
        .await
        {
            Ok(Ok(done)) => break done,
            Ok(Err(ProposeError::NotLeader { leader: Some(l) })) => target = l,
            Ok(Err(ProposeError::NotLeader { leader: None })) => {
                target = groups[0].wait_for_leader(WAIT).await.expect("a leader");
            }
            other => panic!("seed {seed}: drain: {other:?}"),
        }
    };
    let delivered = numbers(&out[0]);
    let unique: BTreeSet<u64> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "seed {seed}: a message delivered twice");
    let lost: Vec<u64> = confirmed.difference(&unique).copied().collect();
    assert!(lost.is_empty(), "seed {seed}: confirmed and lost: {lost:?}");
    let unexpected: Vec<u64> =
        unique.iter().copied().filter(|n| !confirmed.contains(n) && !unknown.contains(n)).collect();
    assert!(unexpected.is_empty(), "seed {seed}: delivered but never published: {unexpected:?}");

    for g in &groups {
        g.wait_for_applied(index, WAIT).await.expect("every member catches up");
    }
    // Each member's queue, paged messages read back from its store.
    let snapshots: Vec<Vec<u8>> = groups
        .iter()
        .map(|g| g.with_machine(|m| m.snapshot_to_send(&m.snapshot())).expect("read back what it paged"))
        .collect();
    assert!(snapshots.windows(2).all(|w| w[0] == w[1]), "seed {seed}: the members differ");
    eprintln!(
        "seed {seed}: {} confirmed, {} unknown, {} delivered, {crashes} crashes ({power_cuts} power cuts, \
         {lost_bytes} unsynced bytes lost) and \
         {restarts} restarts, \
         all members equal at index {index}",
        confirmed.len(),
        unknown.len(),
        delivered.len()
    );
    for member in members.into_iter().flatten() {
        let _ = crash(&net, member, Crash::Process).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publishes_survive_partitions_crashes_and_lost_and_reordered_messages() {
    let seeds: Vec<u64> = match std::env::var("WARREN_FAULTS_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => (0..5).collect(),
    };
    for seed in seeds {
        eprintln!("faults: seed {seed} (replay with WARREN_FAULTS_SEED={seed})");
        run(seed).await;
    }
}
