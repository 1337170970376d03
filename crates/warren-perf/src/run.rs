//! A throughput run, from declare to summary.
//!
//! 1. A setup connection declares the exchange, the queues (server-named ones unless `--queue`,
//!    with `--queue-args`) and the bindings, unless `--no-declare`; through the first of `--uris`
//!    when several are given, and producers and consumers connect to them in turn.
//! 2. Every consumer connects and subscribes, then every producer connects (all concurrently);
//!    only when all are ready does the clock start, so no message is published before its
//!    consumers exist.
//! 3. The coordinator wakes every [`TICK`] to collect finished tasks, print the progress line
//!    each second, and decide the end: `-z` elapsed, Ctrl-C, a task failed, everyone done,
//!    every consumer done (`-D`), producers done and consumers drained (all due messages seen,
//!    or no delivery for `--drain-timeout`), or a stall (producers still at work but nothing
//!    published, confirmed or consumed for `--drain-timeout`, which fails the run).
//! 4. Everyone is told to stop and closes its connection; server-named queues are deleted.
//!
//! Server-named queues are not exclusive: an exclusive queue belongs to the connection that
//! declared it, and here consumers are other connections. They are deleted at the end instead.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use warren_amqp::properties::DELIVERY_MODE_PERSISTENT;
use warren_amqp::BasicProperties;

use crate::args::PerfArgs;
use crate::client::{Connection, Error, CLOSE_TIMEOUT};
use crate::consumer::{self, ConsumerOutcome, ConsumerSpec};
use crate::procstat;
use crate::producer::{self, ProducerOutcome, ProducerSpec, CHANNEL};
use crate::report::{Progress, Shared, Summary};
use crate::topology::{queue_name, Topology};
use crate::tracker::Tracker;

/// How often the coordinator looks at the run.
pub const TICK: Duration = Duration::from_millis(100);
/// How often the progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long a task has to stop and close its connection once told to.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(CLOSE_TIMEOUT.as_secs() + 2);

/// The setup connection and what it must undo.
struct Setup {
    conn: Option<Connection>,
    server_named: Vec<String>,
}

impl Setup {
    /// Declares the run's exchange, queues and bindings; returns the queue names.
    async fn declare(&mut self, args: &PerfArgs) -> Result<Vec<String>, Error> {
        let mut conn = Connection::open(args.setup_uri(), "warren-perf setup").await?;
        conn.channel_open(CHANNEL).await?;
        let conn = self.conn.insert(conn);
        if !args.exchange.is_empty() {
            // amq.* exchanges exist already and may not be declared actively.
            let passive = args.exchange.starts_with("amq.");
            conn.exchange_declare(CHANNEL, &args.exchange, args.kind.as_str(), true, passive).await?;
        }
        let mut names = Vec::with_capacity(args.queues as usize);
        for i in 0..args.queues as usize {
            let wanted = queue_name(args, i);
            let name = conn
                .queue_declare_with(CHANNEL, &wanted, args.persistent, false, false, args.queue_arguments())
                .await?;
            if wanted.is_empty() {
                self.server_named.push(name.clone());
            }
            names.push(name);
        }
        let topo = Topology::new(args, names.clone());
        for (q, name) in names.iter().enumerate() {
            for b in topo.bindings(q) {
                conn.queue_bind(CHANNEL, name, &args.exchange, &b.routing_key, b.arguments).await?;
            }
        }
        Ok(names)
    }

    /// Deletes the server-named queues and closes the setup connection.
    async fn cleanup(self) -> Result<(), Error> {
        let Some(mut conn) = self.conn else { return Ok(()) };
        for q in &self.server_named {
            conn.queue_delete(CHANNEL, q).await?;
        }
        match crate::client::finish(conn, Ok(())).await {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs a throughput test. `Err` is a failure before the clock started (nothing measured);
/// a failure during the run is the summary's `error`.
pub async fn run(args: &PerfArgs) -> Result<Summary, String> {
    let mut setup = Setup { conn: None, server_named: Vec::new() };
    let names = if args.no_declare {
        Ok((0..args.queues as usize).map(|i| queue_name(args, i)).collect())
    } else {
        setup.declare(args).await
    };
    let result = match names {
        Ok(names) => measure(args, Topology::new(args, names)).await,
        Err(e) => Err(format!("declaring on {}: {e}", args.setup_uri())),
    };
    if let Err(e) = setup.cleanup().await {
        eprintln!("warren-perf: cleaning up the server-named queues: {e}");
    }
    result
}

fn producer_specs(args: &PerfArgs, topo: &Topology) -> Vec<ProducerSpec> {
    (0..args.producers as usize)
        .map(|p| ProducerSpec {
            index: p as u32,
            exchange: args.exchange.clone(),
            routing_key: topo.publish_key(p),
            properties: BasicProperties {
                delivery_mode: args.persistent.then_some(DELIVERY_MODE_PERSISTENT),
                headers: topo.publish_headers(p),
                ..Default::default()
            },
            size: args.size as usize,
            confirm: args.confirm,
            rate: args.rate,
            count: args.pmessages,
        })
        .collect()
}

fn consumer_specs(args: &PerfArgs, topo: &Topology) -> Vec<ConsumerSpec> {
    (0..args.consumers as usize)
        .map(|c| {
            let q = topo.queue_of_consumer(c);
            ConsumerSpec {
                index: c as u32,
                queue_index: q,
                queue: topo.queues[q].clone(),
                prefetch: args.prefetch,
                auto_ack: args.auto_ack,
                ack_every: args.multi_ack_every.map_or(1, u64::from),
                count: args.cmessages,
            }
        })
        .collect()
}

/// Opens and prepares one connection per spec, all at once; returns them in spec order.
async fn connect_all<S, F, Fut>(
    args: &PerfArgs,
    role: &'static str,
    specs: Vec<S>,
    prepare: F,
) -> Result<Vec<(S, Connection)>, String>
where
    S: Send + 'static,
    F: Fn(Connection, S) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(S, Connection), Error>> + Send + 'static,
{
    let mut set = JoinSet::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let uri = args.uri_for(i).clone();
        let prepare = prepare.clone();
        set.spawn(async move {
            let c = Connection::open(&uri, &format!("warren-perf {role} {i}")).await.map_err(|e| (i, e))?;
            prepare(c, spec).await.map(|pair| (i, pair)).map_err(|e| (i, e))
        });
    }
    let mut ready = Vec::with_capacity(set.len());
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(pair)) => ready.push(pair),
            Ok(Err((i, e))) => return Err(format!("{role} {i}: {e}")),
            Err(e) => return Err(format!("{role}: task failed: {e}")),
        }
    }
    ready.sort_by_key(|(i, _)| *i);
    Ok(ready.into_iter().map(|(_, pair)| pair).collect())
}

/// A producer or consumer task: its outcome, and the error that ended it if one did.
type Task<T> = JoinHandle<(T, Option<Error>)>;

/// Collects the outcome of every finished task; failures go to `errors`.
async fn reap<T: Default>(
    role: &str,
    handles: &mut [Option<Task<T>>],
    outcomes: &mut [Option<T>],
    errors: &mut Vec<String>,
    wait: bool,
) {
    for (i, slot) in handles.iter_mut().enumerate() {
        let Some(h) = slot else { continue };
        if !wait && !h.is_finished() {
            continue;
        }
        let Some(mut h) = slot.take() else { continue };
        let joined = match tokio::time::timeout(STOP_TIMEOUT, &mut h).await {
            Ok(j) => j,
            Err(_) => {
                h.abort();
                errors.push(format!("{role} {i} did not stop within {} s", STOP_TIMEOUT.as_secs()));
                outcomes[i] = Some(T::default());
                continue;
            }
        };
        outcomes[i] = Some(match joined {
            Ok((o, None)) => o,
            Ok((o, Some(e))) => {
                errors.push(format!("{role} {i}: {e}"));
                o
            }
            Err(e) => {
                errors.push(format!("{role} {i}: task failed: {e}"));
                T::default()
            }
        });
    }
}

async fn measure(args: &PerfArgs, topo: Topology) -> Result<Summary, String> {
    let queues = topo.queues.len();
    let (x, y) = (args.producers as usize, args.consumers as usize);
    let tracker = match args.pmessages {
        Some(per_producer) if x > 0 && y > 0 => {
            let routes: Vec<Vec<usize>> = (0..x).map(|p| topo.routes(p)).collect();
            let consumed: Vec<bool> = (0..queues).map(|q| q < y).collect();
            let t = Tracker::new(queues, &routes, &consumed, per_producer);
            if t.is_none() {
                eprintln!("warren-perf: too many messages to track; loss and duplicates are not counted");
            }
            t
        }
        _ => None,
    };
    let shared = Arc::new(Shared::new(y, tracker));

    let consumers = connect_all(args, "consumer", consumer_specs(args, &topo), |mut c, spec| async move {
        consumer::prepare(&mut c, &spec).await?;
        Ok((spec, c))
    })
    .await?;
    let producers = connect_all(args, "producer", producer_specs(args, &topo), |mut c, spec| async move {
        producer::prepare(&mut c, &spec).await?;
        Ok((spec, c))
    })
    .await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let broker_cpu_before = args.broker_pid.and_then(|p| procstat::cpu_seconds(Some(p)));
    let tool_cpu_before = procstat::cpu_seconds(None);
    let mut broker_rss_max = args.broker_pid.and_then(|p| procstat::rss_kib(Some(p)));
    let start = Instant::now();
    let mut consumer_handles: Vec<_> = consumers
        .into_iter()
        .map(|(spec, c)| Some(tokio::spawn(consumer::run(c, spec, shared.clone(), stop_rx.clone()))))
        .collect();
    let mut producer_handles: Vec<_> = producers
        .into_iter()
        .map(|(spec, c)| Some(tokio::spawn(producer::run(c, spec, shared.clone(), start, stop_rx.clone()))))
        .collect();
    let mut producer_out: Vec<Option<ProducerOutcome>> = vec![None; x];
    let mut consumer_out: Vec<Option<ConsumerOutcome>> = vec![None; y];
    let mut errors = Vec::new();

    let mut progress = Progress::new(start, x > 0, args.confirm.is_some(), y > 0);
    let mut next_progress = start + PROGRESS_EVERY;
    let deadline = args.duration.map(|d| start + Duration::from_secs_f64(d));
    let drain_timeout = Duration::from_secs_f64(args.drain_timeout);
    let mut producers_done_at: Option<Instant> = None;
    let mut last_consumed = (0, start);
    // The last time any counter moved, to stop a run the broker no longer serves.
    let mut last_progress = ([0u64; 3], start);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Whether the run was cut short (deadline, Ctrl-C, an error) rather than running out of work.
    let mut cut_short = true;

    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => {
                eprintln!("warren-perf: interrupted, stopping");
                break;
            }
        }
        let now = Instant::now();
        reap("producer", &mut producer_handles, &mut producer_out, &mut errors, false).await;
        reap("consumer", &mut consumer_handles, &mut consumer_out, &mut errors, false).await;
        if now >= next_progress {
            let line = progress.tick(&shared, now);
            if !args.quiet {
                eprintln!("{line}");
            }
            if let Some(rss) = args.broker_pid.and_then(|p| procstat::rss_kib(Some(p))) {
                broker_rss_max = Some(broker_rss_max.unwrap_or(0).max(rss));
            }
            next_progress += PROGRESS_EVERY;
        }
        let producers_done = producer_out.iter().all(Option::is_some);
        let consumers_done = consumer_out.iter().all(Option::is_some);
        if !errors.is_empty() {
            break;
        }
        // Everyone is done, or every consumer reached -D and producers without -C have nobody
        // left to feed (producers with -C finish on their own, confirms included).
        if consumers_done && (producers_done || (y > 0 && args.pmessages.is_none())) {
            cut_short = false;
            break;
        }
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let consumed = shared.consumed.load(Ordering::Relaxed);
        if consumed != last_consumed.0 {
            last_consumed = (consumed, now);
        }
        let counters = [shared.published.load(Ordering::Relaxed), shared.confirmed.load(Ordering::Relaxed), consumed];
        if counters != last_progress.0 {
            last_progress = (counters, now);
        } else if !producers_done && now.saturating_duration_since(last_progress.1) >= drain_timeout {
            errors.push(format!(
                "stalled: nothing was published, confirmed or consumed for {:.1} s",
                drain_timeout.as_secs_f64()
            ));
            break;
        }
        if producers_done {
            let done_at = *producers_done_at.get_or_insert(now);
            if let Some(t) = &shared.tracker {
                let published: Vec<u64> = producer_out.iter().map(|o| o.as_ref().map_or(0, |o| o.published)).collect();
                if shared.unique.load(Ordering::Relaxed) >= t.due(&published) {
                    cut_short = false;
                    break;
                }
            }
            if now.saturating_duration_since(last_consumed.1.max(done_at)) >= drain_timeout {
                if !args.quiet {
                    eprintln!(
                        "warren-perf: no delivery for {:.1} s, stopping the consumers",
                        drain_timeout.as_secs_f64()
                    );
                }
                break;
            }
        }
    }
    let end = Instant::now();
    // Measured before the connections close: closing (requeueing, flushing) is not the run.
    let tool_cpu_s = procstat::cpu_seconds(None).zip(tool_cpu_before).map(|(after, before)| after - before);
    let broker_cpu_s = args
        .broker_pid
        .and_then(|p| procstat::cpu_seconds(Some(p)))
        .zip(broker_cpu_before)
        .map(|(after, before)| after - before);
    let _ = stop_tx.send(true);
    reap("producer", &mut producer_handles, &mut producer_out, &mut errors, true).await;
    reap("consumer", &mut consumer_handles, &mut consumer_out, &mut errors, true).await;
    progress.finish(&shared);

    let producer_out: Vec<ProducerOutcome> = producer_out.into_iter().map(Option::unwrap_or_default).collect();
    let consumer_out: Vec<ConsumerOutcome> = consumer_out.into_iter().map(Option::unwrap_or_default).collect();
    let mut s = Summary {
        producers: args.producers,
        consumers: args.consumers,
        size_bytes: args.size,
        queues: args.queues,
        persistent: args.persistent,
        confirm: args.confirm,
        auto_ack: args.auto_ack,
        prefetch: args.prefetch,
        duration_s: end.saturating_duration_since(start).as_secs_f64(),
        ..Default::default()
    };
    s.published = producer_out.iter().map(|o| o.published).sum();
    s.confirmed = producer_out.iter().map(|o| o.confirmed).sum();
    s.nacked = producer_out.iter().map(|o| o.nacked).sum();
    s.consumed = consumer_out.iter().map(|o| o.consumed).sum();
    s.foreign = consumer_out.iter().map(|o| o.foreign).sum();
    s.redelivered = consumer_out.iter().map(|o| o.redelivered).sum();
    s.reordered = consumer_out.iter().map(|o| o.reordered).sum();
    // A run cut short was busy until its end; one that ran out of work was busy until the last
    // publish, confirm or delivery.
    let window = |last: Option<Instant>| {
        let last = if cut_short { last.map(|_| end) } else { last };
        last.map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64())
    };
    let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let mb = |msgs_per_s: f64| msgs_per_s * args.size as f64 / 1e6;
    s.publish_msgs_per_s = rate(s.published, window(producer_out.iter().filter_map(|o| o.last_publish).max()));
    s.publish_mb_per_s = mb(s.publish_msgs_per_s);
    s.confirm_msgs_per_s = rate(s.confirmed, window(producer_out.iter().filter_map(|o| o.last_confirm).max()));
    s.consume_msgs_per_s = rate(s.consumed, window(consumer_out.iter().filter_map(|o| o.last_delivery).max()));
    s.consume_mb_per_s = mb(s.consume_msgs_per_s);
    s.set_latency(&progress.total);
    if let Some(t) = &shared.tracker {
        let published: Vec<u64> = producer_out.iter().map(|o| o.published).collect();
        let excluded: Vec<Vec<u64>> = producer_out.iter().map(|o| o.unconfirmed.clone()).collect();
        s.lost = Some(t.lost(&published, &excluded));
        s.duplicated = Some(consumer_out.iter().map(|o| o.duplicated).sum());
    }
    s.tool_cpu_s = tool_cpu_s;
    if let Some(pid) = args.broker_pid {
        s.broker_cpu_s = broker_cpu_s;
        let per = if y > 0 { s.consumed } else { s.published };
        s.broker_cpu_us_per_msg = s.broker_cpu_s.filter(|_| per > 0).map(|cpu| cpu * 1e6 / per as f64);
        if let Some(rss) = procstat::rss_kib(Some(pid)) {
            broker_rss_max = Some(broker_rss_max.unwrap_or(0).max(rss));
        }
        s.broker_rss_max_kib = broker_rss_max;
    }
    if !errors.is_empty() {
        s.error = Some(errors.join("; "));
    }
    Ok(s)
}
