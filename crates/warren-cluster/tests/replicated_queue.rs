//! A quorum queue replicated on three nodes (in one process, over warren-raft's LocalNet):
//! confirmed messages survive the loss of the leader, the new leader returns what consumers on
//! the lost node held, and every member ends with the same queue.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::time::Duration;
use warren_amqp::{BasicProperties, ShortStr};
use warren_cluster::ReplicatedQueue;
use warren_core::message::Message;
use warren_core::quorum::{Command, Effect, Gone, Output, Owner, QuorumConfig, Reply, Stamped};
use warren_raft::{Group, GroupConfig, LocalNet, ProposeError};

const WAIT: Duration = Duration::from_secs(5);

fn config() -> GroupConfig {
    GroupConfig { heartbeat_ms: 50, election_timeout_min_ms: 150, election_timeout_max_ms: 300, ..Default::default() }
}

fn enqueue(n: u64) -> Command {
    let props = BasicProperties { delivery_mode: Some(2), ..Default::default() };
    let raw = props.to_bytes();
    Command::Enqueue { msg: Message::new("".into(), "q".into(), props, raw, Bytes::from(n.to_string())) }
}

struct Nodes {
    net: LocalNet<ReplicatedQueue>,
    groups: Vec<Group<ReplicatedQueue>>,
    now: u64,
}

impl Nodes {
    async fn start() -> Nodes {
        let net = LocalNet::new();
        let mut groups = Vec::new();
        for id in 1..=3 {
            let (g, _applied) = net
                .start(
                    id,
                    &config(),
                    ReplicatedQueue::new(QuorumConfig { delivery_limit: Some(20), ..Default::default() }),
                )
                .await
                .expect("start");
            groups.push(g);
        }
        let members = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
        groups[0].initialize(members).await.expect("initialize");
        groups[0].wait_for_leader(WAIT).await.expect("a leader");
        Nodes { net, groups, now: 1_000 }
    }

    fn group(&self, id: u64) -> &Group<ReplicatedQueue> {
        &self.groups[id as usize - 1]
    }

    /// Proposes through `via` (a member that can reach a majority), following "not leader"
    /// answers; returns the log index and the queue's output.
    async fn propose(&mut self, via: &[u64], command: Command) -> (u64, Output) {
        self.now += 1;
        let stamped = Stamped { now_ms: self.now, command };
        let mut target = via[0];
        for _ in 0..20 {
            match tokio::time::timeout(WAIT, self.group(target).propose(stamped.clone())).await {
                Ok(Ok(done)) => return done,
                Ok(Err(ProposeError::NotLeader { leader: Some(l) })) if via.contains(&l) => target = l,
                Ok(Err(ProposeError::NotLeader { .. })) => {
                    let status = self
                        .group(via[0])
                        .wait_until(WAIT, "a reachable leader", |s| s.leader.is_some_and(|l| via.contains(&l)))
                        .await
                        .expect("a leader among the reachable members");
                    target = status.leader.expect("a leader");
                }
                Ok(Err(e)) => panic!("proposal failed: {e:?}"),
                Err(_) => panic!("proposal through {target} did not commit in {WAIT:?}"),
            }
        }
        panic!("no leader took the proposal");
    }
}

fn deliveries(out: &Output) -> Vec<(Owner, u64, bool, u32, u64)> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver { owner, delivery, .. } => Some((
                *owner,
                std::str::from_utf8(&delivery.msg.body).expect("utf-8").parse().expect("number"),
                delivery.redelivered,
                delivery.delivery_count,
                delivery.id,
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn confirmed_messages_survive_the_leader_and_every_member_ends_the_same() {
    let mut nodes = Nodes::start().await;
    let all = [1, 2, 3];
    // Twenty publishes, each confirmed once a majority holds it.
    for n in 0..20 {
        let (_, out) = nodes.propose(&all, enqueue(n)).await;
        assert_eq!(out.reply, Reply::Ok);
    }
    let old = nodes.group(1).leader().expect("a leader");
    // A consumer on the leader's node takes five and holds them.
    let on_old = Owner { node: old as u32, conn: 1, channel: 1 };
    let (_, out) = nodes
        .propose(
            &all,
            Command::Attach {
                owner: on_old,
                tag: ShortStr::from("c1"),
                prefetch: 5,
                no_ack: false,
                priority: 0,
                exclusive: false,
            },
        )
        .await;
    let held = deliveries(&out);
    assert_eq!(held.iter().map(|d| d.1).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    // It settles two of them.
    let settled = vec![held[0].4, held[1].4];
    let (_, out) = nodes.propose(&all, Command::Settle { owner: on_old, ids: settled }).await;
    assert_eq!(deliveries(&out).iter().map(|d| d.1).collect::<Vec<_>>(), vec![5, 6]);

    // The leader's node is cut off: the other two elect a leader and go on.
    nodes.net.isolate(old);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    let status = nodes
        .group(rest[0])
        .wait_until(WAIT, "a new leader", |s| s.leader.is_some_and(|l| l != old))
        .await
        .expect("the majority elects a leader");
    let new = status.leader.expect("a leader");
    // Its consumers are gone: what they held returns, counted as a delivery attempt.
    let (_, out) = nodes.propose(&rest, Command::Down(Gone::Node(old as u32))).await;
    assert!(deliveries(&out).is_empty(), "no consumer left to deliver to");
    for n in 20..25 {
        nodes.propose(&rest, enqueue(n)).await;
    }
    let on_new = Owner { node: new as u32, conn: 9, channel: 1 };
    let (_, out) = nodes
        .propose(
            &rest,
            Command::Attach {
                owner: on_new,
                tag: ShortStr::from("c2"),
                prefetch: 0,
                no_ack: true,
                priority: 0,
                exclusive: false,
            },
        )
        .await;
    let got: Vec<(u64, bool, u32)> = deliveries(&out).iter().map(|d| (d.1, d.2, d.3)).collect();
    // What was ready, then the five it held (returned to the back as RabbitMQ's quorum queues
    // do, redelivered with x-delivery-count 1), then what was published after.
    let expected: Vec<(u64, bool, u32)> = (7..20)
        .map(|n| (n, false, 0))
        .chain((2..7).map(|n| (n, true, 1)))
        .chain((20..25).map(|n| (n, false, 0)))
        .collect();
    assert_eq!(got, expected);
    let numbers: BTreeSet<u64> = got.iter().map(|d| d.0).chain([0, 1]).collect();
    assert_eq!(numbers, (0..25).collect::<BTreeSet<_>>(), "every confirmed message delivered");
    let (last, _) = nodes.propose(&rest, Command::Tick).await;

    // The old leader comes back, catches up and holds the same queue as the others.
    nodes.net.heal();
    for id in all {
        nodes.group(id).wait_for_applied(last, WAIT).await.expect("caught up");
    }
    let snapshots: Vec<Vec<u8>> =
        all.iter().map(|id| nodes.group(*id).with_machine(|m| m.queue().snapshot())).collect();
    assert_eq!(snapshots[0], snapshots[1]);
    assert_eq!(snapshots[1], snapshots[2]);
    nodes.group(old).with_machine(|m| {
        assert_eq!((m.queue().ready_count(), m.queue().unsettled_count(), m.queue().consumer_count()), (0, 0, 1));
    });
    for g in &nodes.groups {
        g.shutdown().await.expect("shutdown");
    }
}
