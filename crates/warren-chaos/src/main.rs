//! `warren-chaos`: starts a Warren cluster of real processes, runs publishers with confirms and
//! consumers on every node (and, if asked, clients changing metadata), injects a seeded
//! schedule of faults (SIGKILL biased to the queue's leader, SIGSTOP pauses, partitions:
//! halves, an isolated node, one-way), heals, drains through every node and checks the
//! outcome, in the shape of RabbitMQ's Jepsen tests. See docs/clustering.md, "The fault
//! harness".
//!
//! Exit status: 0 when every check held, 1 when one failed, 2 when the harness itself could
//! not run (a node would not start, bad arguments).

mod check;
mod faults;
mod history;
mod mgmt;
mod net;
mod nodes;
mod workload;

use check::Rules;
use clap::Parser;
use history::{Entity, FaultKind, History};
use mgmt::Api;
use nodes::Cluster;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::Ctx;

#[derive(Parser, Debug, Clone)]
#[command(name = "warren-chaos", about = "Fault-injection harness for a Warren cluster (RabbitMQ Jepsen-style)")]
struct Args {
    /// The broker binary.
    #[arg(long, default_value = "target/release/warren")]
    warren: PathBuf,
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The queue's type (`x-queue-type`): quorum or classic.
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    /// The queue's name.
    #[arg(long, default_value = "chaos")]
    queue: String,
    /// What the clients do: messages (publishers and consumers on the queue), metadata
    /// (declaring and deleting durable queues and exchanges), or both, comma-separated.
    #[arg(long, default_value = "messages")]
    workload: String,
    /// Fault kinds, comma-separated: kill, pause, halves, isolate, oneway, disk (as root); `all`
    /// for the first five the network allows, `process` for kill,pause, `partitions` for the
    /// network ones, `none`.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Seed of the fault schedule (printed; a random one when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of faults.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Inject exactly this many faults (instead of --duration).
    #[arg(long)]
    fault_count: Option<usize>,
    /// Seconds a fault is held, MIN-MAX.
    #[arg(long, default_value = "3-8")]
    hold: String,
    /// Seconds of quiet after each heal, MIN-MAX.
    #[arg(long, default_value = "2-5")]
    quiet: String,
    /// Seconds of workload before the first fault.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Seconds of workload after the last heal, before the publishers stop.
    #[arg(long, default_value_t = 5.0)]
    tail: f64,
    /// Probability of aiming a kill, pause, isolation or one-way cut at the queue's leader
    /// (when the management API names one: the queue's `leader` field).
    #[arg(long, default_value_t = 0.8)]
    leader_bias: f64,
    /// Publishes per second per publisher (0: as fast as confirms come).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Unconfirmed publishes per publisher at most.
    #[arg(long, default_value_t = 50)]
    outstanding: usize,
    /// Consumers' prefetch.
    #[arg(long, default_value_t = 50)]
    prefetch: u16,
    /// Seconds before an unconfirmed publish counts as unknown.
    #[arg(long, default_value_t = 10.0)]
    confirm_timeout: f64,
    /// Seconds the drain may take.
    #[arg(long, default_value_t = 120.0)]
    drain_timeout: f64,
    /// Metadata workload: names in the pool, and ms between two operations of a client.
    #[arg(long, default_value_t = 8)]
    meta_names: usize,
    #[arg(long, default_value_t = 100)]
    meta_interval_ms: u64,
    /// auto (namespaces when root with ip and nft, else loopback), namespaces, or loopback.
    #[arg(long, default_value = "auto")]
    network: String,
    /// Where the nodes' data directories go (default target/chaos/run-<time>-<pid>); kept when
    /// a check fails or with --keep.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[arg(long)]
    keep: bool,
    /// Also write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Report the time-to-recover figures without failing on them.
    #[arg(long)]
    no_gates: bool,
    #[arg(long, default_value_t = 2000.0)]
    kill_gate_ms: f64,
    #[arg(long, default_value_t = 5000.0)]
    pause_gate_ms: f64,
    /// Print the first N steps the seed draws (kind, hold, quiet, random target) and exit.
    #[arg(long, value_name = "N")]
    print_schedule: Option<usize>,
}

fn range(s: &str, what: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: f64 = a.trim().parse().map_err(|_| format!("--{what}: {s:?} is not MIN-MAX seconds"))?;
    let b: f64 = b.trim().parse().map_err(|_| format!("--{what}: {s:?} is not MIN-MAX seconds"))?;
    if a < 0.0 || b < a {
        return Err(format!("--{what}: {s:?} is not MIN-MAX seconds"));
    }
    Ok((a, b))
}

fn fault_kinds(s: &str) -> Result<Vec<FaultKind>, String> {
    let mut kinds = BTreeSet::new();
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => kinds.extend(FaultKind::ALL),
            "process" => kinds.extend([FaultKind::Kill, FaultKind::Pause]),
            "partitions" => kinds.extend(FaultKind::ALL.into_iter().filter(|k| k.is_network())),
            "none" => {}
            w => {
                kinds.insert(FaultKind::parse(w).ok_or_else(|| format!("--faults: unknown kind {w:?}"))?);
            }
        }
    }
    Ok(kinds.into_iter().collect())
}

struct Plan {
    messages: bool,
    metadata: bool,
    kinds: Vec<FaultKind>,
    seed: u64,
    hold: (f64, f64),
    quiet: (f64, f64),
}

fn plan(args: &Args) -> Result<Plan, String> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err("--nodes: 1 to 9".into());
    }
    if !matches!(args.queue_type.as_str(), "quorum" | "classic") {
        return Err(format!("--queue-type: quorum or classic, not {:?}", args.queue_type));
    }
    let mut messages = false;
    let mut metadata = false;
    for w in args.workload.split(',').map(str::trim) {
        match w {
            "messages" => messages = true,
            "metadata" => metadata = true,
            "both" => (messages, metadata) = (true, true),
            other => return Err(format!("--workload: unknown {other:?}")),
        }
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..1 << 48));
    Ok(Plan {
        messages,
        metadata,
        kinds: fault_kinds(&args.faults)?,
        seed,
        hold: range(&args.hold, "hold")?,
        quiet: range(&args.quiet, "quiet")?,
    })
}

fn choose_net(args: &Args, nodes: usize) -> Result<net::Net, String> {
    let want = args.network.as_str();
    if !matches!(want, "auto" | "namespaces" | "loopback") {
        return Err(format!("--network: auto, namespaces or loopback, not {want:?}"));
    }
    if want == "loopback" {
        return Ok(net::Net::Loopback);
    }
    net::remove_leftovers();
    match net::probe().and_then(|()| net::Namespaces::create(nodes)) {
        Ok(ns) => Ok(net::Net::Namespaces(ns)),
        Err(e) if want == "auto" => {
            eprintln!("warren-chaos: network namespaces unavailable ({e}); running on loopback");
            Ok(net::Net::Loopback)
        }
        Err(e) => Err(format!("network namespaces unavailable: {e}")),
    }
}

async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warren-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(steps) = args.print_schedule {
        let opts = faults::Options {
            kinds: plan.kinds.clone(),
            seed: plan.seed,
            duration: Duration::ZERO,
            count: None,
            hold: plan.hold,
            quiet: plan.quiet,
            warmup: 0.0,
            leader_bias: args.leader_bias,
            restart_within: Duration::ZERO,
        };
        if opts.kinds.is_empty() {
            println!("no faults");
            return ExitCode::SUCCESS;
        }
        let mut rng = fastrand::Rng::with_seed(plan.seed);
        let mut at = args.warmup;
        for i in 0..steps {
            let d = faults::draw(&mut rng, &opts, args.nodes);
            println!(
                "{i:>4} at ~{at:>6.1} s: {:<8} hold {:>4.1} s, quiet {:>4.1} s, random target node {}{}",
                d.kind.name(),
                d.hold,
                d.quiet,
                d.random_target + 1,
                if d.kind == FaultKind::Halves {
                    format!(", halves {:?}", d.order.iter().map(|i| i + 1).collect::<Vec<_>>())
                } else {
                    String::new()
                }
            );
            at += d.hold + d.quiet;
        }
        return ExitCode::SUCCESS;
    }
    if !args.warren.is_file() {
        eprintln!("warren-chaos: no broker binary at {} (cargo build --release -p warren)", args.warren.display());
        return ExitCode::from(2);
    }
    let net = match choose_net(&args, args.nodes) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warren-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if !net.partitions() {
        let dropped: Vec<&str> = plan.kinds.iter().filter(|k| k.is_network()).map(|k| k.name()).collect();
        if !dropped.is_empty() {
            eprintln!("warren-chaos: no partitions on loopback: leaving out {}", dropped.join(","));
        }
        plan.kinds.retain(|k| !k.is_network());
    }
    if args.nodes < 2 {
        plan.kinds.retain(|k| !k.is_network());
    }
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from(format!("target/chaos/run-{secs}-{}", std::process::id()))
    });
    if let Err(e) = std::fs::create_dir_all(&run_dir) {
        eprintln!("warren-chaos: {}: {e}", run_dir.display());
        return ExitCode::from(2);
    }
    let mode = net.describe();
    println!("warren-chaos: seed {} (replay with --seed {})", plan.seed, plan.seed);
    println!("warren-chaos: mode {mode}");
    println!(
        "warren-chaos: {} nodes, {} queue {:?}, workload {}, faults [{}], {}, run dir {}",
        args.nodes,
        args.queue_type,
        args.queue,
        args.workload,
        plan.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        match args.fault_count {
            Some(n) => format!("{n} faults"),
            None => format!("{:.0} s of faults", args.duration),
        },
        run_dir.display()
    );
    let mut cluster = match Cluster::new(&args.warren, args.nodes, &run_dir, net) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if plan.kinds.contains(&FaultKind::Disk) {
        if let Err(e) = cluster.own_disks() {
            eprintln!("warren-chaos: disk faults: {e}");
            return ExitCode::from(2);
        }
    }
    let result = tokio::select! {
        r = scenario(&args, &plan, &mode, &mut cluster, &run_dir) => Some(r),
        () = signals() => None,
    };
    cluster.teardown();
    let code = match result {
        None => {
            eprintln!(
                "warren-chaos: interrupted; nodes stopped and namespaces removed (run dir {})",
                run_dir.display()
            );
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            eprintln!("warren-chaos: {e}\nwarren-chaos: run dir kept: {}", run_dir.display());
            ExitCode::from(2)
        }
        Some(Ok(passed)) => {
            if passed && !args.keep {
                let _ = std::fs::remove_dir_all(&run_dir);
            } else {
                println!("warren-chaos: run dir kept: {}", run_dir.display());
            }
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    };
    code
}

/// Runs everything; whether every check held.
async fn scenario(
    args: &Args,
    plan: &Plan,
    mode: &str,
    cluster: &mut Cluster,
    run_dir: &std::path::Path,
) -> Result<bool, String> {
    let api = Api::new();
    let n = args.nodes;
    for i in 0..n {
        cluster.start(i)?;
    }
    for i in 0..n {
        cluster.wait_ready(i, Duration::from_secs(60)).await?;
    }
    if n > 1 {
        cluster.wait_converged(Duration::from_secs(60)).await?;
    }
    let t0 = Instant::now();
    let run_id = format!("chaos{:012x}", fastrand::u64(..1 << 48));
    let opts = workload::Options {
        queue: args.queue.clone(),
        queue_type: args.queue_type.clone(),
        outstanding: args.outstanding,
        rate: args.rate,
        prefetch: args.prefetch,
        confirm_timeout: Duration::from_secs_f64(args.confirm_timeout),
        meta_names: args.meta_names,
        meta_interval: Duration::from_millis(args.meta_interval_ms),
        seed: plan.seed,
    };
    let ctx = Arc::new(Ctx::new(run_id, t0, cluster.specs(), opts));
    if plan.messages {
        // Declared once through node 1, then seen by every node before the clients start.
        let mut declared = Err(String::new());
        for _ in 0..50 {
            declared = workload::declare_queue(&ctx, 0).await;
            if declared.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        declared.map_err(|e| format!("cannot declare the queue: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for spec in cluster.specs() {
            while api.queue(&spec.http(), &args.queue).await.is_none() {
                if Instant::now() > deadline {
                    return Err(format!("{} does not list queue {:?}", spec.name, args.queue));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut publishers = Vec::new();
    let mut consumers = Vec::new();
    let mut meta_clients = Vec::new();
    for i in 0..n {
        if plan.messages {
            publishers.push(tokio::spawn(workload::publisher(ctx.clone(), i)));
            consumers.push(tokio::spawn(workload::consumer(ctx.clone(), i)));
        }
        if plan.metadata {
            meta_clients.push(tokio::spawn(workload::meta_client(ctx.clone(), i)));
        }
    }
    let progress = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!("[{:>7.1}s] {}", ctx.t0.elapsed().as_secs_f64(), workload::progress(&ctx));
            }
        })
    };

    let fault_opts = faults::Options {
        kinds: plan.kinds.clone(),
        seed: plan.seed,
        duration: Duration::from_secs_f64(args.duration),
        count: args.fault_count,
        hold: plan.hold,
        quiet: plan.quiet,
        warmup: args.warmup,
        leader_bias: args.leader_bias,
        restart_within: Duration::from_secs(60),
    };
    let mut outcome = faults::run(cluster, &ctx, &api, &fault_opts).await;
    // Heal whatever is left (nothing, normally) and let the cluster see itself whole again.
    faults::heal(cluster, &ctx, &mut outcome, Duration::from_secs(60)).await;
    let mut failures: Vec<String> = outcome.failures.clone();
    if n > 1 {
        if let Err(e) = cluster.wait_converged(Duration::from_secs(60)).await {
            failures.push(format!("after healing: {e}"));
        }
    }
    eprintln!("[{:>7.1}s] healed; {} s more of workload", t0.elapsed().as_secs_f64(), args.tail);
    tokio::time::sleep(Duration::from_secs_f64(args.tail)).await;

    ctx.stop_publishing.store(true, Ordering::Relaxed);
    ctx.stop_meta.store(true, Ordering::Relaxed);
    for task in publishers.into_iter().chain(meta_clients) {
        let _ = task.await;
    }
    workload::finish(&ctx);

    // Drain through every node's consumer: until every node's queue is empty and no delivery
    // came for 3 s.
    let mut queues_at_end: Vec<Option<u64>> = vec![None; n];
    if plan.messages {
        eprintln!("[{:>7.1}s] draining", t0.elapsed().as_secs_f64());
        let deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
        loop {
            for (i, spec) in cluster.specs().iter().enumerate() {
                queues_at_end[i] =
                    api.queue(&spec.http(), &args.queue).await.and_then(|q| q.get("messages").and_then(|m| m.as_u64()));
            }
            let quiet_us = ctx.now_us().saturating_sub(ctx.last_delivery_us.load(Ordering::Relaxed));
            if queues_at_end.iter().all(|c| *c == Some(0)) && quiet_us > 3_000_000 {
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for (i, c) in queues_at_end.iter().enumerate() {
            match c {
                Some(0) => {}
                Some(m) => failures.push(format!("node {}'s queue still held {m} messages after the drain", i + 1)),
                None => failures.push(format!("node {} did not report the queue after the drain", i + 1)),
            }
        }
    }
    ctx.stop_consuming.store(true, Ordering::Relaxed);
    for task in consumers {
        let _ = task.await;
    }
    progress.abort();
    // Whatever is still there (messages a consumer held when it stopped, or that the drain
    // did not reach) is taken through every node, so the lost count is exact.
    let mut swept = Vec::new();
    if plan.messages {
        for i in 0..n {
            match workload::sweep(&ctx, i).await {
                Ok(k) => swept.push(json!(k)),
                Err(e) => {
                    failures.push(format!("basic.get through node {}: {e}", i + 1));
                    swept.push(json!(null));
                }
            }
        }
    }

    // Every node must hold the same metadata (a restarted node may still be catching up: give
    // it time).
    let mut differences = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let final_topology = loop {
        let mut views = Vec::new();
        for spec in cluster.specs() {
            views.push(api.topology(&spec.http()).await);
        }
        differences.clear();
        let pick = |f: fn(&mgmt::Topology) -> &BTreeSet<String>| -> Vec<Option<BTreeSet<String>>> {
            views.iter().map(|v| v.as_ref().map(|t| f(t).clone())).collect()
        };
        differences.extend(check::compare_nodes("queues", &pick(|t| &t.queues)));
        differences.extend(check::compare_nodes("exchanges", &pick(|t| &t.exchanges)));
        differences.extend(check::compare_nodes("bindings", &pick(|t| &t.bindings)));
        if differences.is_empty() || Instant::now() > deadline {
            break views.into_iter().flatten().next();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for d in &differences {
        failures.push(format!("metadata differs between nodes: {d}"));
    }

    let elapsed = t0.elapsed().as_secs_f64();
    let history: History = workload::take_history(&ctx);
    let rules = Rules {
        replicated: args.queue_type == "quorum",
        // The time-to-recover gates are a replicated queue's: a classic queue lives on one
        // node and takes publishes only while that node runs (as in RabbitMQ), so for it the
        // times are reported, not gated.
        gates: plan.messages && !args.no_gates && n >= 3 && args.queue_type == "quorum",
        kill_gate_ms: args.kill_gate_ms,
        pause_gate_ms: args.pause_gate_ms,
    };
    let messages = plan.messages.then(|| check::check_messages(&history, &rules));
    if let Some(m) = messages.as_ref().filter(|m| m.lost > 0) {
        // What the lost messages went through, for whoever looks into it: one line each.
        let lines: String = m
            .lost_sample
            .iter()
            .filter_map(|&id| history.publishes.get(id as usize).map(|p| (id, p)))
            .map(|(id, p)| {
                format!(
                    "id {id} node {} sent {} us settled {:?} us {:?}\n",
                    p.node + 1,
                    p.sent_us,
                    p.settled_us,
                    p.outcome
                )
            })
            .collect();
        let _ = std::fs::write(run_dir.join("lost.txt"), lines);
    }
    let meta = plan.metadata.then(|| {
        let present: BTreeSet<(Entity, String)> = final_topology
            .as_ref()
            .map(|t| {
                let names = |lines: &BTreeSet<String>, e: Entity| -> Vec<(Entity, String)> {
                    lines
                        .iter()
                        .filter_map(|l| l.strip_prefix("//"))
                        .filter_map(|l| l.split(' ').next())
                        .map(|name| (e, name.to_string()))
                        .collect()
                };
                let mut all = names(&t.queues, Entity::Queue);
                all.extend(names(&t.exchanges, Entity::Exchange));
                all.into_iter().collect()
            })
            .unwrap_or_default();
        let mut r = check::check_meta(&history.meta_ops, &present);
        r.differences = differences.clone();
        r
    });
    if let Some(m) = &messages {
        failures.extend(m.failures.iter().cloned());
    }
    if let Some(m) = &meta {
        failures.extend(m.failures.iter().cloned());
    }
    let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &history.faults {
        *per_kind.entry(f.kind.name()).or_default() += 1;
    }
    let passed = failures.is_empty();
    // What each node says of the queue's group, and the warnings its log ends with: in a CI
    // log, all there may be to go on.
    let diagnosis = if passed { Vec::new() } else { diagnose(cluster, &api, &args.queue).await };
    let summary = json!({
        "passed": passed,
        "seed": plan.seed,
        "mode": mode,
        "nodes": n,
        "queue_type": args.queue_type,
        "workload": args.workload,
        "fault_kinds": plan.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "seconds": elapsed,
        "faults": per_kind,
        "faults_at_known_leader": outcome.leader_hits,
        "faults_with_leader_known": outcome.leader_known,
        "restarts_ms": outcome.restarts_ms,
        "wal_recoveries_ms": outcome.recoveries_ms,
        "fault_log": history.faults,
        "queue_messages_after_drain": queues_at_end,
        "swept_after_drain": swept,
        "messages": messages,
        "metadata": meta,
        "failures": failures,
        "diagnosis": diagnosis,
    });
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    let _ = std::fs::write(run_dir.join("summary.json"), &text);
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, &text) {
            eprintln!("warren-chaos: {}: {e}", path.display());
        }
    }
    print_human(args, plan, &summary, messages.as_ref(), meta.as_ref(), &outcome, &history);
    Ok(passed)
}

/// A line with how many `times_ms` there are, their median and their maximum (none: no line).
fn print_times(what: &str, until: &str, times_ms: &[f64]) {
    if times_ms.is_empty() {
        return;
    }
    let mut t = times_ms.to_vec();
    t.sort_by(f64::total_cmp);
    println!("{what}: {}, {until} after {:.0} ms median, {:.0} ms max", t.len(), t[t.len() / 2], t[t.len() - 1]);
}

fn print_human(
    args: &Args,
    plan: &Plan,
    summary: &serde_json::Value,
    messages: Option<&check::MessageReport>,
    meta: Option<&check::MetaReport>,
    outcome: &faults::Outcome,
    history: &History,
) {
    println!("== warren-chaos summary (seed {})", plan.seed);
    println!("mode: {}", summary["mode"].as_str().unwrap_or(""));
    println!(
        "nodes {}, {} queue, {:.0} s, faults: {} ({} aimed at a known leader, leader known for {})",
        args.nodes,
        args.queue_type,
        summary["seconds"].as_f64().unwrap_or(0.0),
        if history.faults.is_empty() { "none".to_string() } else { summary["faults"].to_string() },
        outcome.leader_hits,
        outcome.leader_known
    );
    print_times("restarts", "answering again", &outcome.restarts_ms);
    print_times(
        "write-ahead logs recovered in place (disk freed, no restart)",
        "taking writes",
        &outcome.recoveries_ms,
    );
    if let Some(m) = messages {
        println!(
            "messages: published {}, acked {}, nacked {}, unknown {} ({} of them delivered)",
            m.published, m.acked, m.nacked, m.unknown, m.unknown_delivered
        );
        println!(
            "delivered: {} deliveries of {} ids; lost {} (must be 0); unexpected {} (must be 0); duplicates {} extra deliveries of {} ids",
            m.deliveries, m.delivered_ids, m.lost, m.unexpected, m.duplicate_deliveries, m.duplicated_ids
        );
        println!(
            "confirms through a node cut off from a majority: {} ({})",
            m.minority_confirms,
            if m.minority_enforced { "must be 0" } else { "reported only: a classic queue is not replicated" }
        );
        let show = |s: &check::Stats| match (s.p50_ms, s.p99_ms, s.max_ms) {
            (Some(a), Some(b), Some(c)) => format!(
                "p50 {} p99 {} max {} over {} faults{}",
                check::fmt_ms(a),
                check::fmt_ms(b),
                check::fmt_ms(c),
                s.count,
                if s.never > 0 { format!(" ({} never)", s.never) } else { String::new() }
            ),
            _ => "no faults".to_string(),
        };
        let gated = args.queue_type == "quorum" && !args.no_gates;
        let gate = |ms: f64| if gated { format!("gate {ms:.0} ms") } else { "not gated".to_string() };
        println!("publishing resumed after a leader SIGKILL: {} ({})", show(&m.after_kill), gate(args.kill_gate_ms));
        println!(
            "publishing resumed after a leader pause or partition: {} ({})",
            show(&m.after_pause_or_partition),
            gate(args.pause_gate_ms)
        );
    }
    if let Some(m) = meta {
        println!(
            "metadata: {} operations, {} acknowledged, {} not; {} contradictions",
            m.operations,
            m.acknowledged,
            m.unacknowledged,
            m.violations.len()
        );
    }
    println!("queues after the drain: {}", summary["queue_messages_after_drain"]);
    let failures = summary["failures"].as_array().cloned().unwrap_or_default();
    if failures.is_empty() {
        println!("warren-chaos: PASSED");
    } else {
        for f in &failures {
            println!("FAILED: {}", f.as_str().unwrap_or(""));
        }
        println!("warren-chaos: FAILED ({} checks)", failures.len());
        for line in summary["diagnosis"].as_array().into_iter().flatten() {
            println!("diagnosis: {}", line.as_str().unwrap_or(""));
        }
    }
}

/// For a failed run: per node, the queue as its management API shows it (leader, members,
/// counts, consumers), its group's Raft figures from /metrics/per-object, and the last warnings and errors
/// of its log.
async fn diagnose(cluster: &nodes::Cluster, api: &mgmt::Api, queue: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, spec) in cluster.specs().iter().enumerate() {
        let node = i + 1;
        match api.queue(&spec.http(), queue).await {
            Some(q) => {
                let pick = |k: &str| q.get(k).map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                lines.push(format!(
                    "node {node}: queue leader {} members {} online {} ready {} unacked {} consumers {}",
                    pick("leader"),
                    pick("members"),
                    pick("online"),
                    pick("messages_ready"),
                    pick("messages_unacknowledged"),
                    pick("consumers")
                ));
            }
            None => lines.push(format!("node {node}: the queue is not reported")),
        }
        let raft = match api.text(&spec.http(), "/metrics/per-object").await {
            Some(text) => {
                let label = format!("queue=\"{queue}\"");
                text.lines()
                    .filter(|l| l.starts_with("rabbitmq_raft_") && l.contains(&label))
                    .filter_map(|l| {
                        let (name, value) = l.split_once('{')?;
                        Some(format!("{}={}", name.trim_start_matches("rabbitmq_raft_"), value.rsplit(' ').next()?))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            None => "no answer".into(),
        };
        lines.push(format!("node {node}: raft {raft}"));
        let log = std::fs::read_to_string(spec.dir.join("node.log")).unwrap_or_default();
        let plain = |l: &str| {
            let mut out = String::with_capacity(l.len());
            let mut chars = l.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    // An ANSI colour sequence: up to its final letter.
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        let warnings: Vec<String> = log
            .lines()
            .map(plain)
            .filter(|l| {
                // Warren's own warnings and errors (openraft's, about RPCs that timed out during
                // the faults, are many and say little), and panics.
                ((l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains(" openraft::"))
                    || l.contains("panicked")
            })
            .collect();
        for l in &warnings[warnings.len().saturating_sub(12)..] {
            lines.push(format!("node {node} log: {}", l.chars().take(300).collect::<String>()));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_and_replace_faults_are_asked_for_by_name_only() {
        let all = fault_kinds("all").expect("all");
        assert_eq!(all, FaultKind::ALL.to_vec(), "`all` keeps the schedules seeds replay");
        assert!(!all.contains(&FaultKind::Disk));
        assert_eq!(fault_kinds("disk,kill").expect("kinds"), vec![FaultKind::Kill, FaultKind::Disk]);
        assert!(fault_kinds("disks").is_err());
        assert!(!all.contains(&FaultKind::Replace));
        assert_eq!(fault_kinds("replace,kill").expect("kinds"), vec![FaultKind::Kill, FaultKind::Replace]);
    }
}
