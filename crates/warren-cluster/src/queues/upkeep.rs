//! Keeping this node's members healthy and cheap, checked every 500 ms by
//! [`QueueHost::watch_nodes`](super::QueueHost) and around the members' tasks: snapshots when
//! they are worth it, stuck and panicked members stopped (to be started again from their
//! logs), idle groups' timers turned off, elections called when a leader's node goes.

use super::*;

/// Entries applied since a member's last snapshot before it takes another (at the least).
const SNAPSHOT_AFTER_ENTRIES: u64 = 1000;
/// Message bytes applied since a member's last snapshot after which it takes another sooner:
/// the log holds its entries in memory until a snapshot lets them go.
const SNAPSHOT_AFTER_BYTES: u64 = 32 << 20;

/// Whether a snapshot is worth taking `since` entries after the last one, with `new_bytes` of
/// message bodies applied since and `held_bytes` of bodies in the member's memory (what the
/// snapshot writes).
fn worth_snapshotting(since: u64, new_bytes: u64, held_bytes: u64) -> bool {
    (since >= SNAPSHOT_AFTER_ENTRIES || new_bytes >= SNAPSHOT_AFTER_BYTES) && new_bytes.saturating_mul(2) >= held_bytes
}

/// Asks each member for a snapshot once it is worth it: at least [`SNAPSHOT_AFTER_ENTRIES`]
/// entries or [`SNAPSHOT_AFTER_BYTES`] of messages applied since the last one, and at least
/// half as many message bytes applied since as the snapshot would write. A snapshot carries the
/// bodies the member holds in memory (a backlog past its window is in its store and only named);
/// taken every 1,000 entries whatever the queue held in memory (openraft's policy), a deep
/// backlog was written out again and again, each time the whole of it, and publishing stalled
/// for seconds at a time (session 16: 300,000 messages of 1 KiB).
pub(super) fn snapshot_when_worth_it(replicas: &[Arc<Replica>]) {
    for replica in replicas {
        let status = replica.group.status();
        if matches!(status.role, warren_raft::Role::Shutdown) {
            continue;
        }
        let applied = status.applied_index.unwrap_or(0);
        let snapshot_index = status.snapshot_index.unwrap_or(0);
        let since = applied.saturating_sub(snapshot_index);
        // What a snapshot writes: the bodies the member holds in memory (a backlog past its
        // window is in its store, named by the snapshot, not carried).
        let (held_bytes, enqueued, releasing) = replica.group.with_machine(|m: &QueueMachine| {
            (m.queue().held_bytes(), m.enqueued_bytes(), m.queue().store().map_or(0, |s| s.lock().releasing()))
        });
        let now = tokio::time::Instant::now();
        let mut mark = replica.snapshot_mark.lock();
        if mark.applied != applied {
            mark.applied = applied;
            mark.applied_at = now;
        }
        // A snapshot asked for and not taken yet: not again for a while.
        if mark.asked_at.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) && snapshot_index <= mark.asked_index
        {
            continue;
        }
        // The counter starts again from 0 when the member restores a snapshot.
        let base = if mark.enqueued > enqueued { 0 } else { mark.enqueued };
        // An idle member whose store holds messages that left the queue lets them go (a
        // drained backlog's space comes back without waiting for more traffic).
        let idle = since > 0 && releasing > 0 && now.duration_since(mark.applied_at) >= SNAPSHOT_WHEN_IDLE_AFTER;
        if !idle && !worth_snapshotting(since, enqueued - base, held_bytes) {
            continue;
        }
        mark.enqueued = enqueued;
        mark.asked_at = Some(now);
        mark.asked_index = snapshot_index;
        drop(mark);
        let group = replica.group.clone();
        tokio::spawn(async move {
            let _ = group.trigger_snapshot().await;
        });
    }
}

/// How long a member applies nothing before it snapshots to let go of what its store holds for
/// messages that left the queue.
const SNAPSHOT_WHEN_IDLE_AFTER: Duration = Duration::from_secs(5);

/// What [`snapshot_when_worth_it`] keeps per member.
pub(super) struct SnapshotMark {
    /// The machine's `enqueued_bytes` when a snapshot was last asked for, when, and the
    /// snapshot index then.
    enqueued: u64,
    asked_at: Option<tokio::time::Instant>,
    asked_index: u64,
    /// The applied index last seen, and since when it has not moved.
    applied: u64,
    applied_at: tokio::time::Instant,
}

impl Default for SnapshotMark {
    fn default() -> Self {
        SnapshotMark {
            enqueued: 0,
            asked_at: None,
            asked_index: 0,
            applied: 0,
            applied_at: tokio::time::Instant::now(),
        }
    }
}

/// How long a member may stay behind what its group committed, without applying anything,
/// before it is taken for stuck.
const STUCK_AFTER: Duration = Duration::from_secs(20);

/// Stops each member that has been stuck for [`STUCK_AFTER`]: entries committed (as this node
/// knows from its own log, or from the leader that committed its forwarded commands) that
/// openraft does not apply here, or entries applied that the host does not take in. Whatever
/// wedged it (none is known: this is a safety net), such a member would leave what the group
/// checked out to this node's consumers checked out for good, since the node itself is up.
/// Stopped, it is started again from its log by `restart_dead_members` (a new core calls an
/// election should its leader not be sending it the log).
pub(super) fn restart_stuck_members(replicas: &[Arc<Replica>]) {
    let now = tokio::time::Instant::now();
    for replica in replicas {
        if *replica.stop.borrow() {
            continue;
        }
        let status = replica.group.status();
        if status.role == warren_raft::Role::Shutdown {
            continue;
        }
        let applied = status.applied_index;
        let handled = *replica.handled.borrow();
        let committed = replica
            .log
            .committed_index()
            .max(Some(replica.known_committed.load(std::sync::atomic::Ordering::Relaxed)).filter(|i| *i > 0));
        let taken_in = replica.group.with_machine(|m| m.queue().applied_index());
        let behind = committed > applied || taken_in > handled;
        let mut progress = replica.progress.lock();
        if !behind || (progress.0, progress.1) != (applied, handled) {
            *progress = (applied, handled, behind.then_some(now));
            continue;
        }
        let since = *progress.2.get_or_insert(now);
        if now.duration_since(since) < STUCK_AFTER {
            continue;
        }
        progress.2 = Some(now);
        tracing::error!(
            "quorum queue '{}' in vhost '{}': this node's member has applied nothing for {STUCK_AFTER:?} (applied {applied:?}, taken in {handled}, committed {committed:?}); it stops, to be started again from its log",
            replica.name,
            replica.vhost
        );
        let group = replica.group.clone();
        tokio::spawn(async move {
            let _ = group.shutdown().await;
        });
    }
}

/// Waits for one of a member's tasks to end. One that panicked would leave the member half
/// alive: its group goes on (this node still acknowledges the log) while the deliveries to this
/// node's consumers, or this node's commands, stop for good, and what the group checked out
/// here stays checked out. The member is stopped instead, with the panic logged, and
/// `restart_dead_members` starts it again from its log (which returns what was checked out
/// here and never delivered).
pub(super) async fn supervise(replica: Arc<Replica>, what: &'static str, task: tokio::task::JoinHandle<()>) {
    let Err(e) = task.await else { return };
    if !e.is_panic() || *replica.stop.borrow() {
        return;
    }
    let panic = e.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    tracing::error!(
        "quorum queue '{}' in vhost '{}': {what} failed on this node ({message}); its member stops, to be started again from its log",
        replica.name,
        replica.vhost
    );
    let _ = replica.group.shutdown().await;
}

/// What changes when a group does something: its term, its leader, its last log index.
pub(super) type ActivityKey = (u64, Option<u64>, Option<u64>);

pub(super) fn activity_key(status: &warren_raft::Status) -> ActivityKey {
    (status.term, status.leader, status.last_log_index)
}

/// How long a group must have done nothing before a follower's member turns its timers off,
/// and before a leader's does: followers first, so that none misses heartbeats with its
/// election timer still running (the check runs every 500 ms, so a follower is quiet within
/// 2.5 s and a leader not before 4 s).
const QUIET_FOLLOWER_AFTER: Duration = Duration::from_secs(2);
const QUIET_LEADER_AFTER: Duration = Duration::from_secs(4);

/// Turns the timers of this node's members of idle groups off, and on again for those that
/// did something since (`Group::set_quiet`): a thousand idle quorum queues then cost neither
/// heartbeats nor election ticks. An idle group's leader lost is seen by its node's connection
/// closing ([`QueueHost::watch_nodes`] wakes the group and calls elections); a leader woken by
/// a proposal (`Group::submit`) sends heartbeats at once, and its followers wake as their logs
/// move.
pub(super) fn quiet_or_wake(replicas: &[Arc<Replica>]) {
    let now = tokio::time::Instant::now();
    for replica in replicas {
        let status = replica.group.status();
        let key = activity_key(&status);
        let mut activity = replica.activity.lock();
        if activity.0 != key {
            *activity = (key, now);
            if replica.group.is_quiet() {
                replica.group.set_quiet(false);
            }
            continue;
        }
        let idle_for = now.duration_since(activity.1);
        let after = if status.role == warren_raft::Role::Leader { QUIET_LEADER_AFTER } else { QUIET_FOLLOWER_AFTER };
        let settled =
            matches!(status.role, warren_raft::Role::Leader | warren_raft::Role::Follower | warren_raft::Role::Learner)
                && status.leader.is_some();
        // Not while this node has commands for the group: a follower whose leader went silent
        // (isolated, paused) sees its log stand still too, and must keep its election timer.
        let busy = replica.busy.load(std::sync::atomic::Ordering::Relaxed) || !replica.pending.lock().is_empty();
        if settled && !busy && idle_for >= after && !replica.group.is_quiet() {
            replica.group.set_quiet(true);
        }
    }
}

/// Calls elections in `group` when its leader is among the nodes `gone`, from the members still
/// connected (`up`, and this node `me`), staggered by their rank so that two do not split the
/// vote: the lowest id calls one at once (the others may have stopped hearing the leader long
/// ago) and again just after `lease`, the time a member refuses votes for after it last heard
/// its leader (openraft's leader lease, its maximal election timeout), when the others grant
/// it; the second lowest calls one a little later if no leader came by then and it has not
/// granted its vote to another candidate meanwhile (the first may have had the shorter log,
/// which the others refuse), and once more later still. An election a member calls is one
/// openraft's timers would have called later; each stops once a new leader is known.
pub(super) fn campaign_if_leader_gone<M: warren_raft::Machine>(
    group: &Group<M>,
    me: u64,
    up: &std::collections::BTreeSet<u64>,
    gone: &[u64],
    lease: Duration,
) {
    let status = group.status();
    let Some(leader) = status.leader.filter(|l| gone.contains(l)) else { return };
    let lost_term = status.term;
    let here = status.voters.iter().copied().filter(|v| *v == me || up.contains(v));
    let at: Vec<Duration> = match here.into_iter().position(|v| v == me) {
        Some(0) => vec![Duration::ZERO, lease + Duration::from_millis(30)],
        Some(1) => vec![lease + Duration::from_millis(130), lease + Duration::from_millis(300)],
        _ => return,
    };
    let group = group.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let last = at.len() - 1;
        for (i, when) in at.into_iter().enumerate() {
            tokio::time::sleep_until(start + when).await;
            let now = group.status();
            if now.role == warren_raft::Role::Shutdown || now.leader.is_some_and(|l| l != leader) {
                return;
            }
            // This member granted its vote to another candidate since the leader went (no other
            // way gives it another's vote before it calls an election itself): let that one
            // finish, up to the last call.
            let granted = now.term > lost_term && now.voted_for.is_some_and(|v| v != me) && !now.vote_committed;
            if granted && i < last {
                continue;
            }
            if let Err(e) = campaign_past_higher_terms(&group, leader).await {
                tracing::warn!("cannot call an election in group {:016x}: {}", group.id(), e.reason);
                return;
            }
        }
    });
}

/// How often a member calls an election again at once when a candidate of a higher term
/// refused its own, and how long it waits for an election's outcome.
const CAMPAIGN_RETRIES: usize = 3;
const CAMPAIGN_SETTLES: Duration = Duration::from_millis(150);

/// Calls an election, and calls it again at once (up to [`CAMPAIGN_RETRIES`] times) when it was
/// refused only for its term: openraft's `elect` takes the next term after this member's, which
/// a member that called (and lost) an election of its own since the leader went has already
/// passed (it refuses the vote, and this member learns its term from the answer). Refused
/// for its log or a lease, it is not called again: openraft's timers take over.
async fn campaign_past_higher_terms<M: warren_raft::Machine>(
    group: &Group<M>,
    lost_leader: u64,
) -> Result<(), warren_raft::Stopped> {
    for _ in 0..CAMPAIGN_RETRIES {
        let term = group.status().term + 1;
        group.campaign().await?;
        let elected_or_passed = |s: &warren_raft::Status| {
            s.leader.is_some_and(|l| l != lost_leader) || s.term > term || s.role == warren_raft::Role::Shutdown
        };
        let Ok(now) = group.wait_until(CAMPAIGN_SETTLES, "an election's outcome", elected_or_passed).await else {
            return Ok(());
        };
        if now.leader.is_some_and(|l| l != lost_leader) || now.role == warren_raft::Role::Shutdown {
            return Ok(());
        }
        // A higher term: its candidate may be winning (this member granted it), or it lost
        // and only told this member its term. Give a winner the time to say so.
        let leader_known = |s: &warren_raft::Status| s.leader.is_some_and(|l| l != lost_leader);
        if group.wait_until(Duration::from_millis(50), "a leader", leader_known).await.is_ok() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_worth_it_once_the_log_holds_half_what_it_would_write() {
        // A queue that keeps up: every 1,000 entries, as before.
        assert!(worth_snapshotting(1000, 10, 0));
        assert!(!worth_snapshotting(999, 10, 0));
        // Large entries: after 32 MiB of messages, however few entries hold them.
        assert!(worth_snapshotting(100, 32 << 20, 4 << 20));
        assert!(!worth_snapshotting(100, (32 << 20) - 1, 0));
        // A 300 MB backlog held in memory: not until 150 MB came in since the last one.
        assert!(!worth_snapshotting(5000, 100 << 20, 300 << 20));
        assert!(worth_snapshotting(5000, 150 << 20, 300 << 20));
        // Draining it with nothing new: once what is left is no more than twice the log.
        assert!(!worth_snapshotting(9000, 100 << 20, 250 << 20));
        assert!(worth_snapshotting(9000, 100 << 20, 200 << 20));
    }

    use crate::ReplicatedQueue;
    use warren_core::quorum::{Command as QueueCommand, QuorumConfig, Stamped};
    use warren_raft::{GroupConfig, LocalNet};

    const WAIT: Duration = Duration::from_secs(10);

    fn config() -> GroupConfig {
        GroupConfig {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            ..Default::default()
        }
    }

    /// Three members with a leader; every member's timers off (as an idle group's are), so that
    /// only the elections `campaign_if_leader_gone` calls can elect anyone.
    async fn quiet_group() -> (LocalNet<ReplicatedQueue>, Vec<Group<ReplicatedQueue>>, u64) {
        let net = LocalNet::new();
        let mut groups = Vec::new();
        for id in 1..=3 {
            let (g, _applied) =
                net.start(id, &config(), ReplicatedQueue::new(QuorumConfig::default())).await.expect("start");
            groups.push(g);
        }
        let members = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
        groups[2].initialize(members).await.expect("initialize");
        let leader = groups[2].wait_for_leader(WAIT).await.expect("a leader");
        for g in groups.iter().filter(|g| g.id() != leader) {
            g.set_quiet(true);
        }
        groups[leader as usize - 1].set_quiet(true);
        (net, groups, leader)
    }

    /// Proposes through the leader and waits until `members` applied it.
    async fn propose(groups: &[Group<ReplicatedQueue>], leader: u64, members: &[u64]) {
        let command = Stamped { now_ms: 1, command: QueueCommand::Tick };
        let (index, _) = groups[leader as usize - 1].propose(command).await.expect("committed");
        for id in members {
            groups[*id as usize - 1].wait_for_applied(index, WAIT).await.expect("applied");
        }
    }

    /// Kills `leader` (cut off and stopped) and tells the other two it went, as a node's
    /// connection closing does; returns the leader they elect.
    async fn lose_leader(net: &LocalNet<ReplicatedQueue>, groups: &[Group<ReplicatedQueue>], leader: u64) -> u64 {
        net.isolate(leader);
        groups[leader as usize - 1].shutdown().await.expect("shutdown");
        let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let lease = Duration::from_millis(config().election_timeout_max_ms);
        for &me in &survivors {
            let up = survivors.iter().copied().filter(|id| *id != me).collect();
            campaign_if_leader_gone(&groups[me as usize - 1], me, &up, &[leader], lease);
        }
        let first = &groups[survivors[0] as usize - 1];
        let status = first
            .wait_until(WAIT, "a new leader", |s| s.leader.is_some_and(|l| l != leader))
            .await
            .expect("the survivors elect a leader with their timers off");
        status.leader.expect("a leader")
    }

    #[tokio::test]
    async fn the_lowest_survivor_with_the_longest_log_is_elected() {
        let (net, groups, leader) = quiet_group().await;
        propose(&groups, leader, &[1, 2, 3]).await;
        let lowest = (1..=3).find(|id| *id != leader).expect("a survivor");
        assert_eq!(lose_leader(&net, &groups, leader).await, lowest);
    }

    /// The lowest survivor missed the leader's last entry: the others refuse it, and the second
    /// lowest, whose term it has passed by calling elections, must call past that term.
    /// Before, the second lowest called one election in a term already taken, was refused,
    /// and the group waited for timers (1.2 s more with openraft's penalty for a shorter log
    /// seen; never, with timers off).
    #[tokio::test]
    async fn a_survivor_with_a_longer_log_is_elected_when_the_lowest_missed_an_entry() {
        let (net, groups, leader) = quiet_group().await;
        propose(&groups, leader, &[1, 2, 3]).await;
        let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let (behind, ahead) = (survivors[0], survivors[1]);
        net.cut(leader, behind);
        propose(&groups, leader, &[ahead]).await;
        let behind_status = groups[behind as usize - 1].status();
        let ahead_status = groups[ahead as usize - 1].status();
        assert!(behind_status.last_log_index < ahead_status.last_log_index, "{behind_status:?} {ahead_status:?}");
        assert_eq!(lose_leader(&net, &groups, leader).await, ahead);
    }
}
