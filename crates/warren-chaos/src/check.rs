//! The checker: reads a [`History`] and the final state the run observed, and says what held.
//! Pure functions only, so that the tests below can feed it histories made by hand.

use crate::history::{Entity, FaultKind, History, MetaOp, Outcome};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How many ids each report lists at most.
const SAMPLE: usize = 20;

/// What the checker enforces.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The queue is replicated (a quorum queue): a confirm given by a node cut off from a
    /// majority is a violation. For a classic queue (on one node, its home) it is only reported.
    pub replicated: bool,
    /// Enforce the time-to-recover gates (needs a majority left standing: 3 nodes or more).
    pub gates: bool,
    /// Publishing must resume within this long (p99) of a leader SIGKILL.
    pub kill_gate_ms: f64,
    /// ... and within this long (p99) of a leader pause or isolation.
    pub pause_gate_ms: f64,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules { replicated: true, gates: true, kill_gate_ms: 2000.0, pause_gate_ms: 5000.0 }
    }
}

/// Time to recover after one fault.
#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub fault: usize,
    pub kind: FaultKind,
    pub hit_leader: Option<bool>,
    /// From the fault to the first confirm of a publish sent after it; `None`: never.
    pub ms: Option<f64>,
    /// Whether this fault counts towards a gate (it hit the leader, or the leader was unknown).
    pub gated: bool,
}

/// Percentiles of a group of recoveries (a fault that never recovered counts as infinite).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub count: usize,
    pub never: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Stats {
    fn of(values: &[Option<f64>]) -> Stats {
        let mut v: Vec<f64> = values.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
        v.sort_by(f64::total_cmp);
        let pick = |p: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            // Nearest rank.
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            Some(v[rank - 1])
        };
        Stats {
            count: v.len(),
            never: values.iter().filter(|x| x.is_none()).count(),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: v.last().copied(),
        }
    }
}

/// A confirm given through a node while it was cut off from a majority.
#[derive(Clone, Debug, Serialize)]
pub struct MinorityConfirm {
    pub id: u64,
    pub node: usize,
    pub fault: usize,
    pub sent_ms: f64,
    pub confirmed_ms: f64,
}

/// The verdict on the messages.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MessageReport {
    pub published: usize,
    pub acked: usize,
    pub nacked: usize,
    pub unknown: usize,
    /// Deliveries in all (of which flagged redelivered), and distinct ids delivered.
    pub deliveries: usize,
    pub redelivered: usize,
    /// When the last delivery came (ms since the run started).
    pub last_delivery_ms: f64,
    pub delivered_ids: usize,
    /// Confirmed and never delivered: must be 0.
    pub lost: usize,
    pub lost_sample: Vec<u64>,
    /// Delivered and never published (by this run): must be 0.
    pub unexpected: usize,
    pub unexpected_sample: Vec<String>,
    /// Ids delivered more than once, and the extra deliveries (allowed: at-least-once).
    pub duplicated_ids: usize,
    pub duplicate_deliveries: usize,
    /// Publishes whose outcome was unknown: how many came out anyway.
    pub unknown_delivered: usize,
    pub unknown_not_delivered: usize,
    pub nacked_delivered: usize,
    /// Confirms through a node cut off from a majority (see [`minority_confirms`]).
    pub minority_confirms: usize,
    pub minority_sample: Vec<MinorityConfirm>,
    pub minority_enforced: bool,
    pub recoveries: Vec<Recovery>,
    /// Gated SIGKILLs, and gated pauses and partitions.
    pub after_kill: Stats,
    pub after_pause_or_partition: Stats,
    /// Every check that failed, in words.
    pub failures: Vec<String>,
}

/// Checks the messages in `h`.
pub fn check_messages(h: &History, rules: &Rules) -> MessageReport {
    let mut r = MessageReport { published: h.publishes.len(), ..MessageReport::default() };
    let mut delivered: HashMap<u64, usize> = HashMap::new();
    for d in &h.deliveries {
        r.deliveries += 1;
        r.redelivered += usize::from(d.redelivered);
        r.last_delivery_ms = r.last_delivery_ms.max(d.at_us as f64 / 1000.0);
        match d.id {
            Some(id) if (id as usize) < h.publishes.len() => *delivered.entry(id).or_default() += 1,
            _ => {
                r.unexpected += 1;
                if r.unexpected_sample.len() < SAMPLE {
                    r.unexpected_sample.push(match (&d.foreign, d.id) {
                        (Some(body), _) => format!("{body:?} through node {}", d.node + 1),
                        (None, Some(id)) => format!("id {id} (never published) through node {}", d.node + 1),
                        (None, None) => format!("unreadable body through node {}", d.node + 1),
                    });
                }
            }
        }
    }
    r.delivered_ids = delivered.len();
    for &n in delivered.values() {
        if n > 1 {
            r.duplicated_ids += 1;
            r.duplicate_deliveries += n - 1;
        }
    }
    for (id, p) in h.publishes.iter().enumerate() {
        let id = id as u64;
        let came_out = delivered.contains_key(&id);
        match p.outcome {
            Outcome::Acked => {
                r.acked += 1;
                if !came_out {
                    r.lost += 1;
                    if r.lost_sample.len() < SAMPLE {
                        r.lost_sample.push(id);
                    }
                }
            }
            Outcome::Nacked => {
                r.nacked += 1;
                r.nacked_delivered += usize::from(came_out);
            }
            // A publish still pending at the end is as unknown as one whose connection went.
            Outcome::Unknown | Outcome::Pending => {
                r.unknown += 1;
                if came_out {
                    r.unknown_delivered += 1;
                } else {
                    r.unknown_not_delivered += 1;
                }
            }
        }
    }
    let minority = minority_confirms(h);
    r.minority_confirms = minority.len();
    r.minority_sample = minority.into_iter().take(SAMPLE).collect();
    r.minority_enforced = rules.replicated;
    r.recoveries = recoveries(h);
    let group = |kill: bool| -> Vec<Option<f64>> {
        // A replace starts with a SIGKILL: its failover is a kill's.
        let killed = |k: FaultKind| matches!(k, FaultKind::Kill | FaultKind::Replace);
        r.recoveries.iter().filter(|x| x.gated && killed(x.kind) == kill).map(|x| x.ms).collect()
    };
    r.after_kill = Stats::of(&group(true));
    r.after_pause_or_partition = Stats::of(&group(false));

    if r.lost > 0 {
        r.failures.push(format!("{} confirmed messages were never delivered (lost), e.g. {:?}", r.lost, r.lost_sample));
    }
    if r.unexpected > 0 {
        r.failures.push(format!(
            "{} deliveries of messages never published (unexpected), e.g. {:?}",
            r.unexpected, r.unexpected_sample
        ));
    }
    if rules.replicated && r.minority_confirms > 0 {
        r.failures.push(format!(
            "{} publishes confirmed through a node cut off from a majority (a minority cannot commit), e.g. ids {:?}",
            r.minority_confirms,
            r.minority_sample.iter().map(|m| m.id).collect::<Vec<_>>()
        ));
    }
    if rules.gates {
        let gate = |stats: &Stats, limit: f64, what: &str, failures: &mut Vec<String>| {
            if let Some(p99) = stats.p99_ms {
                if p99 > limit {
                    failures.push(format!(
                        "publishing resumed {} after {what} at p99 (gate {limit:.0} ms; {} of {} never resumed)",
                        fmt_ms(p99),
                        stats.never,
                        stats.count
                    ));
                }
            }
        };
        gate(&r.after_kill, rules.kill_gate_ms, "a leader SIGKILL", &mut r.failures);
        gate(&r.after_pause_or_partition, rules.pause_gate_ms, "a leader pause or isolation", &mut r.failures);
    }
    r
}

pub fn fmt_ms(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.0} ms")
    } else {
        "never".to_string()
    }
}

/// Publishes confirmed through a node cut off from a majority: sent through that node's
/// connection after the cut was in place and confirmed before the heal began. With Raft such
/// a node cannot commit (it cannot reach a majority, and a publish it received after the cut
/// cannot have reached anyone else), so each is a confirm without a majority commit. A publish
/// sent before the cut may legitimately be confirmed after it (it may have committed before),
/// and one confirmed after the heal may have committed after it: neither counts.
pub fn minority_confirms(h: &History) -> Vec<MinorityConfirm> {
    let mut out = Vec::new();
    for (fi, f) in h.faults.iter().enumerate() {
        if f.cut_off.is_empty() {
            continue;
        }
        let end = f.end_us.unwrap_or(u64::MAX);
        let first = h.publishes.partition_point(|p| p.sent_us < f.start_us);
        for (id, p) in h.publishes.iter().enumerate().skip(first) {
            if p.sent_us >= end {
                break;
            }
            if p.outcome == Outcome::Acked && f.cut_off.contains(&p.node) && p.settled_us.is_some_and(|s| s < end) {
                out.push(MinorityConfirm {
                    id: id as u64,
                    node: p.node,
                    fault: fi,
                    sent_ms: p.sent_us as f64 / 1000.0,
                    confirmed_ms: p.settled_us.unwrap_or(0) as f64 / 1000.0,
                });
            }
        }
    }
    out
}

/// For each SIGKILL, pause and partition: the time from the fault to the first confirm of a
/// publish sent after it (through any node).
pub fn recoveries(h: &History) -> Vec<Recovery> {
    h.faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let first = h.publishes.partition_point(|p| p.sent_us < f.start_us);
            let ms = h.publishes[first..]
                .iter()
                .filter(|p| p.outcome == Outcome::Acked)
                .filter_map(|p| p.settled_us)
                .min()
                .map(|s| s.saturating_sub(f.start_us) as f64 / 1000.0);
            Recovery { fault: i, kind: f.kind, hit_leader: f.hit_leader(), ms, gated: f.hit_leader() != Some(false) }
        })
        .collect()
}

/// The verdict on the metadata.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetaReport {
    pub operations: usize,
    pub acknowledged: usize,
    pub unacknowledged: usize,
    /// Names whose final state no acknowledged history explains (an acknowledged declare
    /// that did not hold, a deletion undone...).
    pub violations: Vec<String>,
    /// Differences between the nodes' views of the metadata.
    pub differences: Vec<String>,
    pub failures: Vec<String>,
}

/// Checks the metadata operations against the final state (`present`: the objects the nodes
/// agree exist, by entity and name; only names some operation touched are judged).
///
/// For each object, an operation may be the last to have taken effect unless an acknowledged
/// operation on the same object began after it ended (that one took effect after it). An
/// unacknowledged operation never ended: it may have taken effect at any time. Before every
/// operation the object did not exist. The final state must be what some possible last
/// operation leaves (or the start, if no operation was acknowledged).
pub fn check_meta(ops: &[MetaOp], present: &BTreeSet<(Entity, String)>) -> MetaReport {
    let mut r = MetaReport { operations: ops.len(), ..MetaReport::default() };
    let mut by_object: BTreeMap<(Entity, &str), Vec<&MetaOp>> = BTreeMap::new();
    for op in ops {
        if op.ok_us.is_some() {
            r.acknowledged += 1;
        } else {
            r.unacknowledged += 1;
        }
        by_object.entry((op.kind.entity(), op.name.as_str())).or_default().push(op);
    }
    for ((entity, name), ops) in by_object {
        let is_present = present.contains(&(entity, name.to_string()));
        let latest_ack_invoke = ops.iter().filter(|o| o.ok_us.is_some()).map(|o| o.invoke_us).max();
        let mut possible = BTreeSet::new();
        if latest_ack_invoke.is_none() {
            possible.insert(false);
        }
        for o in &ops {
            let ended = o.ok_us.unwrap_or(u64::MAX);
            let overtaken = latest_ack_invoke.is_some_and(|later| later > ended);
            if !overtaken {
                possible.insert(o.kind.leaves_present());
            }
        }
        if !possible.contains(&is_present) {
            let last = ops.iter().filter(|o| o.ok_us.is_some()).max_by_key(|o| o.invoke_us);
            r.violations.push(format!(
                "{entity:?} {name:?} is {} at the end, but the last acknowledged operation on it was {}",
                if is_present { "present" } else { "absent" },
                last.map_or("none".to_string(), |o| format!(
                    "{:?} through node {} ({:.3} s to {:.3} s)",
                    o.kind,
                    o.node + 1,
                    o.invoke_us as f64 / 1e6,
                    o.ok_us.unwrap_or(0) as f64 / 1e6
                ))
            ));
        }
    }
    if !r.violations.is_empty() {
        r.failures.push(format!(
            "{} objects whose final state contradicts the acknowledged operations, e.g. {:?}",
            r.violations.len(),
            r.violations.iter().take(5).collect::<Vec<_>>()
        ));
    }
    r
}

/// Compares what each node lists (one set per node, `None` for a node that did not answer)
/// under `what`; the differences, in words.
pub fn compare_nodes(what: &str, views: &[Option<BTreeSet<String>>]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((first, reference)) = views.iter().enumerate().find_map(|(i, v)| v.as_ref().map(|v| (i, v))) else {
        out.push(format!("{what}: no node answered"));
        return out;
    };
    for (i, view) in views.iter().enumerate() {
        match view {
            None => out.push(format!("{what}: node {} did not answer", i + 1)),
            Some(v) if v != reference => {
                let only_here: Vec<_> = v.difference(reference).take(5).collect();
                let missing: Vec<_> = reference.difference(v).take(5).collect();
                out.push(format!(
                    "{what}: node {} differs from node {}: only on node {}: {only_here:?}; missing there: {missing:?}",
                    i + 1,
                    first + 1,
                    i + 1
                ));
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Delivery, Fault, MetaKind, Publish};

    fn publish(h: &mut History, node: usize, at: u64, outcome: Outcome, settled: u64) -> u64 {
        let id = h.begin_publish(node, at);
        h.settle(id, outcome, settled);
        id
    }

    fn deliver(h: &mut History, id: u64, node: usize, at: u64) {
        h.deliveries.push(Delivery { id: Some(id), foreign: None, node, at_us: at, redelivered: false });
    }

    fn fault(kind: FaultKind, target: usize, leader: Option<usize>, start: u64, end: u64) -> Fault {
        let cut = if kind.is_network() { vec![target] } else { vec![] };
        Fault {
            kind,
            targets: vec![target],
            cut_off: cut,
            leader,
            start_us: start,
            end_us: Some(end),
            note: String::new(),
        }
    }

    fn quiet() -> Rules {
        Rules { gates: false, ..Rules::default() }
    }

    #[test]
    fn a_clean_history_passes() {
        let mut h = History::default();
        for i in 0..10 {
            let id = publish(&mut h, i % 3, i as u64 * 10, Outcome::Acked, i as u64 * 10 + 5);
            deliver(&mut h, id, (i + 1) % 3, i as u64 * 10 + 7);
        }
        let r = check_messages(&h, &Rules::default());
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!((r.published, r.acked, r.delivered_ids, r.lost, r.unexpected), (10, 10, 10, 0, 0));
    }

    #[test]
    fn a_confirmed_message_never_delivered_is_lost() {
        let mut h = History::default();
        let a = publish(&mut h, 0, 1, Outcome::Acked, 2);
        let b = publish(&mut h, 1, 3, Outcome::Acked, 4);
        deliver(&mut h, a, 2, 5);
        let r = check_messages(&h, &quiet());
        assert_eq!(r.lost, 1);
        assert_eq!(r.lost_sample, vec![b]);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("lost"));
    }

    #[test]
    fn a_delivery_never_published_is_unexpected() {
        let mut h = History::default();
        let a = publish(&mut h, 0, 1, Outcome::Acked, 2);
        deliver(&mut h, a, 0, 3);
        deliver(&mut h, 99, 1, 4);
        h.deliveries.push(Delivery {
            id: None,
            foreign: Some("other-run:1".into()),
            node: 2,
            at_us: 5,
            redelivered: false,
        });
        let r = check_messages(&h, &quiet());
        assert_eq!(r.unexpected, 2);
        assert_eq!(r.lost, 0);
        assert!(r.failures.iter().any(|f| f.contains("unexpected")), "{:?}", r.failures);
    }

    #[test]
    fn duplicates_are_counted_and_allowed() {
        let mut h = History::default();
        let a = publish(&mut h, 0, 1, Outcome::Acked, 2);
        let b = publish(&mut h, 0, 1, Outcome::Acked, 2);
        deliver(&mut h, a, 0, 3);
        deliver(&mut h, a, 1, 4);
        deliver(&mut h, a, 2, 5);
        deliver(&mut h, b, 2, 5);
        let r = check_messages(&h, &quiet());
        assert_eq!((r.duplicated_ids, r.duplicate_deliveries, r.deliveries, r.delivered_ids), (1, 2, 4, 2));
        assert!(r.failures.is_empty(), "{:?}", r.failures);
    }

    #[test]
    fn unknown_and_nacked_publishes_are_not_lost_either_way() {
        let mut h = History::default();
        let a = publish(&mut h, 0, 1, Outcome::Unknown, 2);
        publish(&mut h, 0, 1, Outcome::Unknown, 2);
        let c = publish(&mut h, 0, 1, Outcome::Nacked, 2);
        publish(&mut h, 0, 1, Outcome::Nacked, 2);
        h.begin_publish(1, 3); // still pending at the end
        deliver(&mut h, a, 0, 3);
        deliver(&mut h, c, 0, 3);
        let r = check_messages(&h, &quiet());
        assert_eq!((r.lost, r.unknown, r.unknown_delivered, r.unknown_not_delivered), (0, 3, 1, 2));
        assert_eq!((r.nacked, r.nacked_delivered), (2, 1));
        assert!(r.failures.is_empty(), "{:?}", r.failures);
    }

    #[test]
    fn a_confirm_through_an_isolated_node_is_a_minority_confirm() {
        let mut h = History::default();
        h.faults.push(fault(FaultKind::Isolate, 0, Some(0), 100, 200));
        // Sent before the cut, confirmed during it: may have committed before. Not counted.
        let before = publish(&mut h, 0, 90, Outcome::Acked, 150);
        // Sent through the cut-off node during the cut and confirmed during it: counted.
        let bad = publish(&mut h, 0, 120, Outcome::Acked, 130);
        // Through another node: the majority side may commit.
        let other = publish(&mut h, 1, 121, Outcome::Acked, 140);
        // Through the cut-off node, confirmed after the heal: may have committed after it.
        let late = publish(&mut h, 0, 150, Outcome::Acked, 250);
        for id in [before, bad, other, late] {
            deliver(&mut h, id, 1, 300);
        }
        let r = check_messages(&h, &quiet());
        assert_eq!(r.minority_confirms, 1);
        assert_eq!(r.minority_sample[0].id, bad);
        assert!(r.failures.iter().any(|f| f.contains("cut off from a majority")), "{:?}", r.failures);

        let classic = check_messages(&h, &Rules { replicated: false, ..quiet() });
        assert_eq!(classic.minority_confirms, 1, "reported");
        assert!(classic.failures.is_empty(), "not enforced for a queue that is not replicated");
    }

    #[test]
    fn a_pause_or_kill_cuts_nobody_off() {
        let mut h = History::default();
        h.faults.push(fault(FaultKind::Pause, 0, None, 100, 200));
        h.faults.push(fault(FaultKind::Kill, 1, None, 300, 400));
        let a = publish(&mut h, 0, 120, Outcome::Acked, 130);
        deliver(&mut h, a, 0, 500);
        assert!(minority_confirms(&h).is_empty());
    }

    #[test]
    fn recovery_is_the_first_confirm_of_a_publish_sent_after_the_fault() {
        let mut h = History::default();
        h.faults.push(fault(FaultKind::Kill, 0, Some(0), 1_000_000, 2_000_000));
        h.faults.push(fault(FaultKind::Pause, 2, Some(1), 5_000_000, 6_000_000)); // not the leader
        h.faults.push(fault(FaultKind::Isolate, 1, None, 8_000_000, 9_000_000)); // leader unknown
                                                                                 // Sent before the kill, confirmed just after it: not a recovery.
        publish(&mut h, 1, 900_000, Outcome::Acked, 1_000_100);
        publish(&mut h, 1, 1_100_000, Outcome::Unknown, 3_000_000);
        publish(&mut h, 2, 1_200_000, Outcome::Acked, 2_500_000);
        publish(&mut h, 2, 1_300_000, Outcome::Acked, 2_400_000);
        publish(&mut h, 2, 5_100_000, Outcome::Acked, 5_200_000);
        let r = check_messages(&h, &quiet());
        let ms: Vec<_> = r.recoveries.iter().map(|x| x.ms).collect();
        assert_eq!(ms, vec![Some(1400.0), Some(200.0), None]);
        let gated: Vec<_> = r.recoveries.iter().map(|x| x.gated).collect();
        assert_eq!(gated, vec![true, false, true]);
        assert_eq!(r.after_kill.p99_ms, Some(1400.0));
        assert_eq!(r.after_pause_or_partition.never, 1);

        // With the gates on, the isolation that never recovered fails the run; the kill
        // (1.4 s) is within 2 s.
        for id in 0..h.publishes.len() as u64 {
            deliver(&mut h, id, 0, 9_500_000);
        }
        let r = check_messages(&h, &Rules::default());
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("pause or isolation"));
        let strict = check_messages(&h, &Rules { kill_gate_ms: 1000.0, ..Rules::default() });
        assert!(strict.failures.iter().any(|f| f.contains("SIGKILL")), "{:?}", strict.failures);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<Option<f64>> = (1..=100).map(|i| Some(i as f64)).collect();
        let s = Stats::of(&values);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (Some(50.0), Some(99.0), Some(100.0)));
        let s = Stats::of(&[Some(3.0), None]);
        assert_eq!((s.p50_ms, s.never), (Some(3.0), 1));
        assert_eq!(s.p99_ms, Some(f64::INFINITY));
        assert_eq!(Stats::of(&[]).p99_ms, None);
    }

    fn op(node: usize, kind: MetaKind, name: &str, invoke: u64, ok: Option<u64>) -> MetaOp {
        MetaOp { node, kind, name: name.into(), invoke_us: invoke, ok_us: ok }
    }

    fn present(names: &[(Entity, &str)]) -> BTreeSet<(Entity, String)> {
        names.iter().map(|(e, n)| (*e, n.to_string())).collect()
    }

    #[test]
    fn an_acknowledged_declare_must_hold() {
        let ops = [op(0, MetaKind::DeclareQueue, "q", 10, Some(20))];
        assert!(check_meta(&ops, &present(&[(Entity::Queue, "q")])).failures.is_empty());
        let r = check_meta(&ops, &present(&[]));
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        // An exchange of that name does not stand for the queue.
        assert_eq!(check_meta(&ops, &present(&[(Entity::Exchange, "q")])).violations.len(), 1);
    }

    #[test]
    fn an_acknowledged_delete_must_hold_unless_something_may_have_come_after() {
        let ops = [op(0, MetaKind::DeclareQueue, "q", 10, Some(20)), op(1, MetaKind::DeleteQueue, "q", 30, Some(40))];
        assert!(check_meta(&ops, &present(&[])).failures.is_empty());
        assert_eq!(check_meta(&ops, &present(&[(Entity::Queue, "q")])).violations.len(), 1);
        // A declare that was not acknowledged, begun before the delete ended, may have come
        // after it: either final state is possible.
        let mut more = ops.to_vec();
        more.push(op(2, MetaKind::DeclareQueue, "q", 35, None));
        assert!(check_meta(&more, &present(&[(Entity::Queue, "q")])).failures.is_empty());
        assert!(check_meta(&more, &present(&[])).failures.is_empty());
        // Concurrent acknowledged declare and delete: either order.
        let racing =
            [op(0, MetaKind::DeclareQueue, "q", 10, Some(50)), op(1, MetaKind::DeleteQueue, "q", 20, Some(30))];
        assert!(check_meta(&racing, &present(&[])).failures.is_empty());
        assert!(check_meta(&racing, &present(&[(Entity::Queue, "q")])).failures.is_empty());
    }

    #[test]
    fn unacknowledged_operations_alone_allow_either_state() {
        let ops = [op(0, MetaKind::DeclareExchange, "x", 10, None)];
        assert!(check_meta(&ops, &present(&[])).failures.is_empty());
        assert!(check_meta(&ops, &present(&[(Entity::Exchange, "x")])).failures.is_empty());
        // ... but a deletion that was never acknowledged cannot make something appear.
        let ops = [op(0, MetaKind::DeleteExchange, "x", 10, None)];
        assert_eq!(check_meta(&ops, &present(&[(Entity::Exchange, "x")])).violations.len(), 1);
    }

    #[test]
    fn nodes_that_differ_are_reported() {
        let set = |names: &[&str]| Some(names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        assert!(compare_nodes("queues", &[set(&["a", "b"]), set(&["a", "b"]), set(&["a", "b"])]).is_empty());
        let d = compare_nodes("queues", &[set(&["a", "b"]), set(&["a"]), None]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("node 2") && d[0].contains("\"b\""), "{d:?}");
        assert!(d[1].contains("node 3 did not answer"), "{d:?}");
        assert_eq!(compare_nodes("queues", &[None, None]).len(), 1);
    }

    #[test]
    fn publishes_are_ordered_by_the_time_sent() {
        // The checker's binary searches rely on it.
        let mut h = History::default();
        for t in [5, 3, 9, 9, 1] {
            h.begin_publish(0, t);
        }
        let times: Vec<u64> = h.publishes.iter().map(|p: &Publish| p.sent_us).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
}
