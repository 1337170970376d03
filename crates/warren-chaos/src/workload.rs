//! The clients: on every node a publisher with confirms and a consumer with manual acks on the
//! run's queue, and (for the metadata workload) a client declaring and deleting queues and
//! exchanges. Each reconnects to its own node after any failure and records what it saw.

use crate::history::{self, Delivery, History, MetaKind, MetaOp, Outcome};
use crate::nodes::Spec;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};

/// Pause between a failed connection and the next try.
const RETRY: Duration = Duration::from_millis(250);
/// Bound on one protocol step (connect, open, declare, ack).
const STEP: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Options {
    pub queue: String,
    pub queue_type: String,
    /// Publishes awaiting their confirm, per publisher.
    pub outstanding: usize,
    /// Publishes per second per publisher (0: as fast as confirms allow).
    pub rate: f64,
    pub prefetch: u16,
    /// A confirm not back within this long counts as unknown (and the connection is redone).
    pub confirm_timeout: Duration,
    /// Metadata operations: the pool of names, and the pause between two operations of a client.
    pub meta_names: usize,
    pub meta_interval: Duration,
    pub seed: u64,
}

/// What every client shares.
pub struct Ctx {
    pub run: String,
    pub t0: Instant,
    pub nodes: Vec<Spec>,
    pub opts: Options,
    history: Mutex<History>,
    pub stop_publishing: AtomicBool,
    pub stop_consuming: AtomicBool,
    pub stop_meta: AtomicBool,
    /// When the last delivery came (µs since t0).
    pub last_delivery_us: AtomicU64,
}

impl Ctx {
    pub fn new(run: String, t0: Instant, nodes: Vec<Spec>, opts: Options) -> Ctx {
        Ctx {
            run,
            t0,
            nodes,
            opts,
            history: Mutex::new(History::default()),
            stop_publishing: AtomicBool::new(false),
            stop_consuming: AtomicBool::new(false),
            stop_meta: AtomicBool::new(false),
            last_delivery_us: AtomicU64::new(0),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_delivery(&self, node: usize, body: &[u8], redelivered: bool) {
        let id = history::parse_body(&self.run, body);
        let foreign = id.is_none().then(|| String::from_utf8_lossy(&body[..body.len().min(64)]).into_owned());
        let at_us = self.now_us();
        self.last_delivery_us.store(at_us, Ordering::Relaxed);
        self.history().deliveries.push(Delivery { id, foreign, node, at_us, redelivered });
    }

    /// The queue's arguments: `x-queue-type`.
    pub fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(self.opts.queue_type.clone().into()));
        args
    }
}

/// A connection and a channel to node `node`, within [`STEP`] each.
async fn open(ctx: &Ctx, node: usize) -> Result<(Connection, Channel), String> {
    let url = ctx.nodes[node].amqp_url();
    let conn = timeout(STEP, Connection::connect(&url, ConnectionProperties::default()))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match timeout(STEP, conn.create_channel()).await {
        Ok(Ok(ch)) => Ok((conn, ch)),
        Ok(Err(e)) => {
            close(conn).await;
            Err(e.to_string())
        }
        Err(_) => {
            close(conn).await;
            Err("channel.open timed out".into())
        }
    }
}

/// Closes a connection, giving up after a second (the node may be stopped).
async fn close(conn: Connection) {
    let _ = timeout(Duration::from_secs(1), conn.close(200, "warren-chaos")).await;
}

/// Declares the run's queue (durable, with `x-queue-type`).
async fn declare(ctx: &Ctx, ch: &Channel) -> Result<(), String> {
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    match timeout(STEP, ch.queue_declare(&ctx.opts.queue, options, ctx.queue_args())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("queue.declare timed out".into()),
    }
}

/// Declares the run's queue through node `node` once.
pub async fn declare_queue(ctx: &Ctx, node: usize) -> Result<(), String> {
    let (conn, ch) = open(ctx, node).await?;
    let result = declare(ctx, &ch).await;
    close(conn).await;
    result
}

/// The publisher on node `node`: persistent messages with unique bodies, confirms, at most
/// `outstanding` unconfirmed; every publish recorded with its outcome.
pub async fn publisher(ctx: Arc<Ctx>, node: usize) {
    let outstanding = ctx.opts.outstanding.max(1);
    let permits = Arc::new(Semaphore::new(outstanding));
    let mut pace = (ctx.opts.rate > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / ctx.opts.rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    while !ctx.stop_publishing.load(Ordering::Relaxed) {
        let (conn, ch) = match open(&ctx, node).await {
            Ok(c) => c,
            Err(_) => {
                sleep(RETRY).await;
                continue;
            }
        };
        let ready = match timeout(STEP, ch.confirm_select(ConfirmSelectOptions::default())).await {
            Ok(Ok(())) => declare(&ctx, &ch).await.is_ok(),
            _ => false,
        };
        if !ready {
            close(conn).await;
            sleep(RETRY).await;
            continue;
        }
        let broken = Arc::new(AtomicBool::new(false));
        while !ctx.stop_publishing.load(Ordering::Relaxed) && !broken.load(Ordering::Relaxed) {
            if let Some(pace) = pace.as_mut() {
                pace.tick().await;
            }
            let Ok(Ok(permit)) = timeout(Duration::from_millis(250), permits.clone().acquire_owned()).await else {
                continue;
            };
            let id = ctx.history().begin_publish(node, ctx.now_us());
            let body = history::body(&ctx.run, id);
            let props = BasicProperties::default().with_delivery_mode(2).with_message_id(id.to_string().into());
            let sent = timeout(
                STEP,
                ch.basic_publish("", &ctx.opts.queue, BasicPublishOptions::default(), body.as_bytes(), props),
            )
            .await;
            match sent {
                Ok(Ok(confirm)) => {
                    let ctx = ctx.clone();
                    let broken = broken.clone();
                    tokio::spawn(async move {
                        let outcome = match timeout(ctx.opts.confirm_timeout, confirm).await {
                            Ok(Ok(Confirmation::Ack(_))) => Outcome::Acked,
                            Ok(Ok(Confirmation::Nack(_))) => Outcome::Nacked,
                            Ok(Ok(Confirmation::NotRequested)) | Ok(Err(_)) | Err(_) => {
                                broken.store(true, Ordering::Relaxed);
                                Outcome::Unknown
                            }
                        };
                        ctx.history().settle(id, outcome, ctx.now_us());
                        drop(permit);
                    });
                }
                _ => {
                    ctx.history().settle(id, Outcome::Unknown, ctx.now_us());
                    broken.store(true, Ordering::Relaxed);
                    drop(permit);
                }
            }
        }
        if !broken.load(Ordering::Relaxed) {
            // Stopping: let the confirms still awaited come (or time out) before closing,
            // which would make them unknown.
            if let Ok(Ok(all)) =
                timeout(ctx.opts.confirm_timeout + STEP, permits.clone().acquire_many_owned(outstanding as u32)).await
            {
                drop(all);
            }
        }
        // Closing fails the confirms still awaited on this connection (unknown).
        close(conn).await;
        if !ctx.stop_publishing.load(Ordering::Relaxed) {
            sleep(RETRY).await;
        }
    }
    // Wait for the last confirms (or their timeouts).
    let _ = timeout(ctx.opts.confirm_timeout + STEP, permits.acquire_many(outstanding as u32)).await;
}

/// The consumer on node `node`: manual acks, prefetch; every delivery recorded before its ack.
pub async fn consumer(ctx: Arc<Ctx>, node: usize) {
    let tag = format!("chaos-consumer-{}", node + 1);
    while !ctx.stop_consuming.load(Ordering::Relaxed) {
        let (conn, ch) = match open(&ctx, node).await {
            Ok(c) => c,
            Err(_) => {
                sleep(RETRY).await;
                continue;
            }
        };
        let setup = async {
            ch.basic_qos(ctx.opts.prefetch, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
            declare(&ctx, &ch).await?;
            ch.basic_consume(&ctx.opts.queue, &tag, BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| e.to_string())
        };
        let mut stream = match timeout(STEP, setup).await {
            Ok(Ok(s)) => s,
            _ => {
                close(conn).await;
                sleep(RETRY).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(d)) => {
                        ctx.record_delivery(node, &d.data, d.redelivered);
                        if !matches!(timeout(STEP, d.acker.ack(BasicAckOptions::default())).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                    _ => break,
                },
                () = sleep(Duration::from_millis(250)) => {
                    if ctx.stop_consuming.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }
        close(conn).await;
        if !ctx.stop_consuming.load(Ordering::Relaxed) {
            sleep(RETRY).await;
        }
    }
}

/// Takes every message left in the queue through node `node` with basic.get (recorded as
/// deliveries); how many there were.
pub async fn sweep(ctx: &Ctx, node: usize) -> Result<usize, String> {
    let (conn, ch) = open(ctx, node).await?;
    let mut n = 0;
    let result = loop {
        match timeout(STEP, ch.basic_get(&ctx.opts.queue, BasicGetOptions::default())).await {
            Ok(Ok(Some(m))) => {
                ctx.record_delivery(node, &m.delivery.data, m.delivery.redelivered);
                n += 1;
                if !matches!(timeout(STEP, m.delivery.acker.ack(BasicAckOptions::default())).await, Ok(Ok(()))) {
                    break Err("basic.ack failed".to_string());
                }
            }
            Ok(Ok(None)) => break Ok(n),
            Ok(Err(e)) => break Err(e.to_string()),
            Err(_) => break Err("basic.get timed out".into()),
        }
    };
    close(conn).await;
    result
}

/// The name of metadata object `k` of the pool.
pub fn meta_name(kind: MetaKind, k: usize) -> String {
    match kind.entity() {
        crate::history::Entity::Queue => format!("chaos-meta-q{k}"),
        crate::history::Entity::Exchange => format!("chaos-meta-x{k}"),
    }
}

async fn meta_op(ch: &Channel, kind: MetaKind, name: &str) -> Result<(), String> {
    let r = match kind {
        MetaKind::DeclareQueue => {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
            let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
            ch.queue_declare(name, options, args).await.map(|_| ())
        }
        MetaKind::DeleteQueue => ch.queue_delete(name, QueueDeleteOptions::default()).await.map(|_| ()),
        MetaKind::DeclareExchange => {
            let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
            ch.exchange_declare(name, ExchangeKind::Direct, options, FieldTable::default()).await
        }
        MetaKind::DeleteExchange => ch.exchange_delete(name, ExchangeDeleteOptions::default()).await,
    };
    r.map_err(|e| e.to_string())
}

/// The metadata client on node `node`: declares and deletes durable queues and exchanges from
/// a small pool of names (so that clients on different nodes race on the same objects).
pub async fn meta_client(ctx: Arc<Ctx>, node: usize) {
    let mut rng = fastrand::Rng::with_seed(ctx.opts.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(node as u64 + 1)));
    const KINDS: [MetaKind; 4] =
        [MetaKind::DeclareQueue, MetaKind::DeleteQueue, MetaKind::DeclareExchange, MetaKind::DeleteExchange];
    while !ctx.stop_meta.load(Ordering::Relaxed) {
        let (conn, ch) = match open(&ctx, node).await {
            Ok(c) => c,
            Err(_) => {
                sleep(RETRY).await;
                continue;
            }
        };
        while !ctx.stop_meta.load(Ordering::Relaxed) {
            sleep(ctx.opts.meta_interval).await;
            let kind = KINDS[rng.usize(..KINDS.len())];
            let name = meta_name(kind, rng.usize(..ctx.opts.meta_names.max(1)));
            let index = {
                let mut h = ctx.history();
                h.meta_ops.push(MetaOp { node, kind, name: name.clone(), invoke_us: ctx.now_us(), ok_us: None });
                h.meta_ops.len() - 1
            };
            // A change the cluster does not commit is refused within 5 s: give it 10.
            match timeout(Duration::from_secs(10), meta_op(&ch, kind, &name)).await {
                Ok(Ok(())) => {
                    let now = ctx.now_us();
                    ctx.history().meta_ops[index].ok_us = Some(now);
                }
                // The channel (or connection) is gone after an error: start again.
                _ => break,
            }
        }
        close(conn).await;
    }
}

/// Every publish still pending becomes unknown.
pub fn finish(ctx: &Ctx) {
    let now = ctx.now_us();
    ctx.history().settle_pending(now);
}

/// Counts, for progress lines.
pub fn progress(ctx: &Ctx) -> String {
    let h = ctx.history();
    let acked = h.publishes.iter().filter(|p| p.outcome == Outcome::Acked).count();
    let meta_ok = h.meta_ops.iter().filter(|o| o.ok_us.is_some()).count();
    let mut s = format!("published {} (acked {acked}), delivered {}", h.publishes.len(), h.deliveries.len());
    if !h.meta_ops.is_empty() {
        s.push_str(&format!(", metadata ops {} (ok {meta_ok})", h.meta_ops.len()));
    }
    s
}

/// Takes the history out (at the end of the run).
pub fn take_history(ctx: &Ctx) -> History {
    std::mem::take(&mut *ctx.history())
}
