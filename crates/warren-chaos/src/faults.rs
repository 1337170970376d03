//! The fault schedule: seeded, one fault at a time (chosen, held, healed, then a quiet spell),
//! SIGKILL and pauses biased to the queue's leader.
//!
//! Every random draw of a step is made before the harness looks at the cluster (the leader),
//! so a seed replays the same kinds, timings and random targets; only where the leader was
//! (and so a leader-biased target) depends on the run.

use crate::history::{Fault, FaultKind};
use crate::mgmt::Api;
use crate::nodes::Cluster;
use crate::workload::Ctx;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    pub kinds: Vec<FaultKind>,
    pub seed: u64,
    /// How long to inject faults for (when `count` is not given).
    pub duration: Duration,
    /// Inject exactly this many faults instead.
    pub count: Option<usize>,
    /// Seconds a fault is held, and seconds of quiet after its heal (ranges).
    pub hold: (f64, f64),
    pub quiet: (f64, f64),
    /// Seconds before the first fault.
    pub warmup: f64,
    /// Probability of aiming a kill, pause, isolation or one-way cut at the leader, when known.
    pub leader_bias: f64,
    /// How long a killed node gets to answer again after its restart.
    pub restart_within: Duration,
}

/// What the schedule did, beyond the faults recorded in the history.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Time from each restart to the node answering again (ms).
    pub restarts_ms: Vec<f64>,
    /// Time from freeing a full disk to the node's write-ahead log taking writes again, in
    /// place (ms).
    pub recoveries_ms: Vec<f64>,
    /// Faults aimed at a known leader.
    pub leader_hits: usize,
    /// Faults made while the leader was known.
    pub leader_known: usize,
    /// Things that went wrong in the harness's own steps (a node that did not come back...).
    pub failures: Vec<String>,
}

/// One step's draws.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    pub kind: FaultKind,
    pub hold: f64,
    pub quiet: f64,
    pub coin: f64,
    pub random_target: usize,
    pub order: Vec<usize>,
    pub inbound: bool,
}

/// The draws of one step, from the schedule's generator.
pub fn draw(rng: &mut fastrand::Rng, opts: &Options, nodes: usize) -> Draw {
    let span = |(lo, hi): (f64, f64), r: f64| lo + (hi - lo).max(0.0) * r;
    let kind = opts.kinds[rng.usize(..opts.kinds.len())];
    let hold = span(opts.hold, rng.f64());
    let quiet = span(opts.quiet, rng.f64());
    let coin = rng.f64();
    let random_target = rng.usize(..nodes);
    let mut order: Vec<usize> = (0..nodes).collect();
    rng.shuffle(&mut order);
    let inbound = rng.bool();
    Draw { kind, hold, quiet, coin, random_target, order, inbound }
}

/// The queue's leader (by index): the node that a majority of the cluster's nodes name. A node
/// that was cut off or paused may still name itself for a while after the others elected
/// another (it has not heard of the later term yet); the first answer alone once made the
/// harness aim a "leader" kill at such a node and gate the recovery of a fault that hit no
/// leader. No majority agreeing: not known.
pub async fn leader(cluster: &mut Cluster, api: &Api, queue: &str) -> Option<usize> {
    let specs = cluster.specs();
    let mut named: Vec<String> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        if cluster.nodes[i].paused || !cluster.nodes[i].running() {
            continue;
        }
        if let Some(name) = api.leader(&spec.http(), queue).await {
            named.push(name);
        }
    }
    majority_choice(&named, specs.len()).and_then(|name| specs.iter().position(|s| s.name == name))
}

/// The name more than half of `nodes` gave among `named`, if one was.
fn majority_choice(named: &[String], nodes: usize) -> Option<&str> {
    named.iter().find(|candidate| named.iter().filter(|n| n == candidate).count() * 2 > nodes).map(String::as_str)
}

fn log(ctx: &Ctx, line: &str) {
    eprintln!("[{:>7.1}s] {line}", ctx.t0.elapsed().as_secs_f64());
}

/// Runs the schedule; the faults go into the history as they are made.
pub async fn run(cluster: &mut Cluster, ctx: &Ctx, api: &Api, opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let n = cluster.nodes.len();
    if opts.kinds.is_empty() {
        tokio::time::sleep(opts.duration).await;
        return out;
    }
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup)).await;
    let mut done = 0usize;
    loop {
        let more = match opts.count {
            Some(count) => done < count,
            None => started.elapsed() < opts.duration,
        };
        if !more {
            break;
        }
        let d = draw(&mut rng, opts, n);
        let leader = leader(cluster, api, &ctx.opts.queue).await;
        let aimed = match leader {
            Some(l) if d.coin < opts.leader_bias => l,
            _ => d.random_target,
        };
        if leader.is_some() {
            out.leader_known += 1;
        }
        let (targets, cut_off, note) = match apply(cluster, &d, aimed) {
            Ok(x) => x,
            Err(e) => {
                out.failures.push(format!("fault {done} ({}): {e}", d.kind.name()));
                log(ctx, &format!("fault {done}: {} failed: {e}", d.kind.name()));
                heal(cluster, ctx, &mut out, opts.restart_within).await;
                done += 1;
                continue;
            }
        };
        if leader.is_some_and(|l| targets.contains(&l)) {
            out.leader_hits += 1;
        }
        if d.kind == FaultKind::Replace {
            match forget(cluster, api, aimed).await {
                Ok(through) => {
                    log(ctx, &format!("fault {done}: node {} forgotten through node {}", aimed + 1, through + 1))
                }
                Err(e) => out.failures.push(format!("fault {done} (replace): {e}")),
            }
        }
        let index = {
            let mut h = ctx.history();
            h.faults.push(Fault {
                kind: d.kind,
                targets: targets.clone(),
                cut_off,
                leader,
                start_us: ctx.now_us(),
                end_us: None,
                note: note.clone(),
            });
            h.faults.len() - 1
        };
        log(
            ctx,
            &format!(
                "fault {done}: {note}{} for {:.1} s",
                match leader {
                    Some(l) if targets.contains(&l) => " (the leader)",
                    Some(_) => " (not the leader)",
                    None => "",
                },
                d.hold
            ),
        );
        tokio::time::sleep(Duration::from_secs_f64(d.hold)).await;
        let end = ctx.now_us();
        ctx.history().faults[index].end_us = Some(end);
        heal(cluster, ctx, &mut out, opts.restart_within).await;
        tokio::time::sleep(Duration::from_secs_f64(d.quiet)).await;
        done += 1;
    }
    out
}

/// Puts the fault of draw `d` in place; its targets, the nodes it cuts off from a majority,
/// and a description.
fn apply(cluster: &mut Cluster, d: &Draw, aimed: usize) -> Result<(Vec<usize>, Vec<usize>, String), String> {
    let n = cluster.nodes.len();
    let name = |i: usize| format!("node {}", i + 1);
    match d.kind {
        FaultKind::Kill => {
            cluster.kill(aimed);
            Ok((vec![aimed], vec![], format!("SIGKILL {}", name(aimed))))
        }
        FaultKind::Pause => {
            cluster.pause(aimed)?;
            Ok((vec![aimed], vec![], format!("SIGSTOP {}", name(aimed))))
        }
        FaultKind::Replace => {
            cluster.kill(aimed);
            cluster.nodes[aimed].replaced = true;
            Ok((vec![aimed], vec![], format!("SIGKILL {} to replace it", name(aimed))))
        }
        FaultKind::Disk => {
            cluster.fill_disk(aimed)?;
            Ok((vec![aimed], vec![], format!("disk full on {}", name(aimed))))
        }
        FaultKind::Isolate | FaultKind::Halves | FaultKind::OneWay => {
            let ns = cluster.namespaces().ok_or("partitions need the network namespaces")?;
            match d.kind {
                FaultKind::Isolate => {
                    for o in (0..n).filter(|&o| o != aimed) {
                        ns.cut(o, aimed)?;
                        ns.cut(aimed, o)?;
                    }
                    Ok((vec![aimed], alone_and_rest(aimed, n), format!("isolate {}", name(aimed))))
                }
                FaultKind::Halves => {
                    let (a, b) = d.order.split_at(n / 2);
                    for &x in a {
                        for &y in b {
                            ns.cut(x, y)?;
                            ns.cut(y, x)?;
                        }
                    }
                    let mut cut: Vec<usize> = Vec::new();
                    for side in [a, b] {
                        if side.len() * 2 <= n {
                            cut.extend_from_slice(side);
                        }
                    }
                    let show = |s: &[usize]| s.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(",");
                    Ok((a.to_vec(), cut, format!("partition [{}] | [{}]", show(a), show(b))))
                }
                _ => {
                    for o in (0..n).filter(|&o| o != aimed) {
                        if d.inbound {
                            ns.cut(o, aimed)?;
                        } else {
                            ns.cut(aimed, o)?;
                        }
                    }
                    let note = if d.inbound {
                        format!("one-way: {} hears nobody", name(aimed))
                    } else {
                        format!("one-way: nobody hears {}", name(aimed))
                    };
                    Ok((vec![aimed], alone_and_rest(aimed, n), note))
                }
            }
        }
    }
}

/// The nodes without a majority when node `alone` is cut off from the `n - 1` others.
fn alone_and_rest(alone: usize, n: usize) -> Vec<usize> {
    let mut cut = Vec::new();
    if 2 <= n {
        cut.push(alone);
    }
    if 2 * (n - 1) <= n {
        cut.extend((0..n).filter(|&o| o != alone));
    }
    cut
}

/// Takes killed node `gone` out of the cluster through another running node, as an operator
/// would (`DELETE /api/nodes/{name}`, `warrenctl forget_cluster_node`); the node it went
/// through. Asked again until it is done (the others may not have seen the node go yet).
async fn forget(cluster: &mut Cluster, api: &Api, gone: usize) -> Result<usize, String> {
    let specs = cluster.specs();
    let path = format!("/api/nodes/{}", crate::mgmt::encode(&specs[gone].name));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no node answered");
    while Instant::now() < deadline {
        for (i, spec) in specs.iter().enumerate() {
            if i == gone || cluster.nodes[i].paused || !cluster.nodes[i].running() {
                continue;
            }
            match api.send(reqwest::Method::DELETE, &spec.http(), &path, None).await {
                Some(204) => return Ok(i),
                Some(status) => last = format!("node {} answered {status}", i + 1),
                None => last = format!("node {} did not answer", i + 1),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("node {} was not forgotten within 20 s: {last}", gone + 1))
}

/// Grows every quorum queue back onto node `i`, which joined again, through another running
/// node, whose metadata holds every queue (`POST /api/queues/quorum/replicas/on/{name}/grow`,
/// `warrenctl grow`). Asked again until it is done (node `i` is refused as not in the cluster
/// until that node applied its joining); then waits until `queue` shows its member on node
/// `i` online.
async fn grow(cluster: &mut Cluster, api: &Api, i: usize, queue: &str) -> Result<String, String> {
    let specs = cluster.specs();
    let path = format!("/api/queues/quorum/replicas/on/{}/grow", crate::mgmt::encode(&specs[i].name));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no node answered");
    while Instant::now() < deadline {
        for (j, spec) in specs.iter().enumerate() {
            if j == i || cluster.nodes[j].paused || !cluster.nodes[j].running() {
                continue;
            }
            let body = Some(serde_json::json!({"strategy": "all"}));
            match api.send_for(reqwest::Method::POST, &spec.http(), &path, body).await {
                Some((200, rows)) => {
                    // As an operator would before touching another node (RabbitMQ's
                    // await_online_quorum_plus_one): the queue has its member there, online.
                    let name = serde_json::Value::String(specs[i].name.clone());
                    while Instant::now() < deadline {
                        let q = api.queue(&spec.http(), queue).await;
                        let has = |k: &str| {
                            q.as_ref()
                                .and_then(|q| q.get(k))
                                .and_then(|v| v.as_array())
                                .is_some_and(|a| a.contains(&name))
                        };
                        if has("members") && has("online") {
                            return Ok(format!("through node {}: {rows}", j + 1));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    return Err(format!("quorum queue {queue}: no member on node {} online within 20 s", i + 1));
                }
                Some((status, why)) => last = format!("node {} answered {status} {why}", j + 1),
                None => last = format!("node {} did not answer", j + 1),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("growing the quorum queues onto node {}: {last}", i + 1))
}

/// Undoes every fault: the network healed, paused nodes continued, killed ones restarted on
/// their data directories (replaced ones on emptied ones, and grown back).
pub async fn heal(cluster: &mut Cluster, ctx: &Ctx, out: &mut Outcome, restart_within: Duration) {
    if let Some(ns) = cluster.namespaces() {
        if let Err(e) = ns.heal() {
            out.failures.push(format!("heal: {e}"));
        }
    }
    for i in 0..cluster.nodes.len() {
        if cluster.nodes[i].disk_full {
            // Freed: the node recovers its write-ahead log in place (no restart) and its
            // members start again from it.
            if let Err(e) = cluster.free_disk(i) {
                out.failures.push(format!("freeing node {}'s disk: {e}", i + 1));
            }
            match cluster.wait_wal_recovered(i, restart_within).await {
                Ok(took) => {
                    out.recoveries_ms.push(took.as_secs_f64() * 1000.0);
                    log(
                        ctx,
                        &format!(
                            "node {} recovered its WAL in place after {:.0} ms",
                            i + 1,
                            took.as_secs_f64() * 1000.0
                        ),
                    );
                }
                Err(e) => {
                    log(ctx, &format!("node {} did not recover: {e}", i + 1));
                    out.failures.push(format!("a node whose disk was freed did not recover: {e}"));
                }
            }
        }
        if cluster.nodes[i].paused {
            if let Err(e) = cluster.resume(i) {
                out.failures.push(format!("SIGCONT node {}: {e}", i + 1));
            }
        }
        let replaced = cluster.nodes[i].replaced;
        if replaced && !cluster.nodes[i].running() {
            cluster.nodes[i].replaced = false;
            if let Err(e) = cluster.wipe(i) {
                out.failures.push(format!("emptying node {}'s data directory: {e}", i + 1));
            }
        }
        if !cluster.nodes[i].running() {
            if let Err(e) = cluster.start(i) {
                out.failures.push(e);
                continue;
            }
            match cluster.wait_ready(i, restart_within).await {
                Ok(took) => {
                    out.restarts_ms.push(took.as_secs_f64() * 1000.0);
                    let how = if replaced { "emptied and started, joined again" } else { "restarted" };
                    log(ctx, &format!("node {} {how}, answering after {:.0} ms", i + 1, took.as_secs_f64() * 1000.0));
                    if replaced {
                        let api = Api::new();
                        match grow(cluster, &api, i, &ctx.opts.queue).await {
                            Ok(done) => log(ctx, &format!("quorum queues grown onto node {} {done}", i + 1)),
                            Err(e) => out.failures.push(e),
                        }
                    }
                }
                Err(e) => {
                    log(ctx, &format!("node {} did not come back: {e}", i + 1));
                    out.failures.push(format!("a killed node did not rejoin: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_the_one_a_majority_of_the_nodes_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A node just healed still names itself; the two others name the new leader.
        assert_eq!(majority_choice(&names(&["w1", "w3", "w3"]), 3), Some("w3"));
        assert_eq!(majority_choice(&names(&["w1", "w3"]), 3), None);
        assert_eq!(majority_choice(&names(&["w2", "w2"]), 3), Some("w2"));
        assert_eq!(majority_choice(&names(&[]), 3), None);
        assert_eq!(majority_choice(&names(&["w1"]), 1), Some("w1"));
    }

    fn opts() -> Options {
        Options {
            kinds: FaultKind::ALL.to_vec(),
            seed: 7,
            duration: Duration::from_secs(1),
            count: None,
            hold: (1.0, 3.0),
            quiet: (2.0, 2.0),
            warmup: 0.0,
            leader_bias: 0.8,
            restart_within: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_seed_replays_the_same_draws() {
        let o = opts();
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..50).map(|_| draw(&mut rng, &o, 3)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        for d in run(7) {
            assert!((1.0..=3.0).contains(&d.hold) && d.quiet == 2.0 && d.random_target < 3, "{d:?}");
            let mut order = d.order.clone();
            order.sort_unstable();
            assert_eq!(order, vec![0, 1, 2]);
        }
        let kinds: std::collections::BTreeSet<_> = run(7).into_iter().map(|d| d.kind).collect();
        assert_eq!(kinds.len(), 5, "every kind is drawn in 50 steps");
    }
}
