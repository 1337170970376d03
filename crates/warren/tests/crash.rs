//! Crash consistency: the durability contract of ARCHITECTURE.md under SIGKILL.
//!
//! Each round starts `warren` on the same data directory, runs publishers
//! (confirm mode, persistent messages, several connections), a publisher of
//! transient messages, consumers acking manually, and a client declaring
//! durable queues and bindings, then kills the broker with SIGKILL after a
//! random delay (a fixed-seed generator: only the timing is random). After the
//! last round the broker is restarted once more and the queue drained. Then:
//!
//! - every confirmed message was acked by a consumer in some round or is in
//!   the final drain (none is lost);
//! - nothing appears that was never published, and transient messages never
//!   outlive the broker process that took them;
//! - a message is seen again after having been acked only if that ack could
//!   have been lost in the kill: it was sent at most one sync interval (plus
//!   slack for scheduling) before the kill (at-least-once, bounded);
//! - no message is delivered twice within one broker lifetime, messages of
//!   one publisher arrive in publication order, and their bodies and
//!   properties are intact;
//! - durable exchanges, queues and bindings whose declare-ok / bind-ok was
//!   received survive every kill and still route; non-durable and exclusive
//!   queues are gone after a restart.
//!
//! `cargo test -p warren --test crash -- --nocapture` prints one line per
//! round and a summary. `WARREN_CRASH_ROUNDS` and `WARREN_CRASH_SEED` override
//! the number of rounds and the seed (for longer soak runs).

mod common;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, ConfirmSelectArguments,
    ExchangeDeclareArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use common::amqprs_client::{bind, channel, connect, connection_args, try_channel, try_connect, Event, EventChannel};
use common::code::NOT_FOUND;
use common::{unique, within, Broker, TIMEOUT};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Kill/restart rounds (at least 20, per the durability issue).
const ROUNDS: u32 = 24;
const SEED: u64 = 0x5eed_2024_c0de_0003;
/// Publisher connections sending persistent messages in confirm mode.
const PUBLISHERS: u32 = 3;
/// The publisher index used in the ids of transient messages.
const TRANSIENT: u32 = 99;
/// The publisher index of the messages put in non-durable and exclusive queues.
const ASIDE: u32 = 98;
const CONSUMERS: u32 = 2;
/// Unconfirmed publishes one publisher may have in flight.
const CONFIRM_WINDOW: usize = 64;
const PREFETCH: u16 = 50;
/// Publishers pause while the queue holds about this many messages, so that
/// consumers always have work and the final drain stays short. It is more
/// than a queue keeps in memory, so recovery and delivery of messages held on
/// disk only are exercised too.
const BACKLOG_MAX: i64 = 10_000;
/// Durable queues (each with a binding) the definitions client declares per round.
const DEFINITIONS_PER_ROUND: u32 = 6;
/// Kill delays, counted from the moment the round's clients are started.
/// Most rounds are short (the kill often lands in the middle of connection
/// setup or a burst of confirms); every fourth round is long enough for acks
/// to be synced by the broker's periodic sync, which the ack bound checks.
const SHORT_ROUND_MS: (u64, u64) = (50, 400);
const LONG_ROUND_MS: (u64, u64) = (1200, 2000);
/// Scheduling slack on top of the broker's sync interval: an ack sent longer
/// than `SYNC_INTERVAL + ACK_SLACK` before the kill must have been synced.
const ACK_SLACK: Duration = Duration::from_millis(800);
/// Bound on the final drain (a backlog of about [`BACKLOG_MAX`] messages).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

const EXCHANGE: &str = "crash-x";
const QUEUE: &str = "crash-q";
const ROUTING_KEY: &str = "crash";
const SENTINEL: &str = "final sentinel";

/// A published message: round, publisher and sequence number within both.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Id {
    round: u32,
    publisher: u32,
    seq: u32,
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}-p{}-s{}", self.round, self.publisher, self.seq)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Id {
    fn persistent(&self) -> bool {
        self.publisher != TRANSIENT
    }

    /// The body: the id, then filler of a length derived from the id (up to
    /// 2 KiB, so records of many sizes end up in the segment files) whose
    /// content is derived from it too, so that a damaged body is noticed.
    fn body(&self) -> Vec<u8> {
        let mut body = format!("{self}|").into_bytes();
        let mut state = u64::from(self.round) << 40 ^ u64::from(self.publisher) << 32 ^ u64::from(self.seq);
        let len = (splitmix64(&mut state) % 2048) as usize;
        body.extend((0..len).map(|_| b'a' + (splitmix64(&mut state) % 26) as u8));
        body
    }

    fn parse(text: &str) -> Option<Id> {
        let rest = text.strip_prefix('r')?;
        let (round, rest) = rest.split_once("-p")?;
        let (publisher, seq) = rest.split_once("-s")?;
        Some(Id { round: round.parse().ok()?, publisher: publisher.parse().ok()?, seq: seq.parse().ok()? })
    }

    fn properties(&self) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(if self.persistent() { 2 } else { 1 })
            .with_message_id(&self.to_string())
            .finish()
    }
}

/// Checks a delivered message against what its id says was published.
fn identify(body: &[u8], properties: &BasicProperties) -> Result<Id, String> {
    let head = body.split(|b| *b == b'|').next().unwrap_or_default();
    let text = String::from_utf8_lossy(head);
    let id = Id::parse(&text).ok_or_else(|| format!("unknown message {:?}", String::from_utf8_lossy(body)))?;
    if body != id.body().as_slice() {
        return Err(format!("{id}: body damaged ({} bytes, expected {})", body.len(), id.body().len()));
    }
    if properties.message_id().map(String::as_str) != Some(text.as_ref()) {
        return Err(format!("{id}: message_id is {:?}", properties.message_id()));
    }
    let mode = properties.delivery_mode().unwrap_or(1);
    if mode != if id.persistent() { 2 } else { 1 } {
        return Err(format!("{id}: delivery_mode is {mode}"));
    }
    Ok(id)
}

/// The splitmix64 step: a small seeded generator for the kill delays.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn between(state: &mut u64, (low, high): (u64, u64)) -> u64 {
    low + splitmix64(state) % (high - low + 1)
}

/// A consumer saw a message; `acked_at` is taken just before its basic.ack
/// is sent (so the ack may or may not have left when the broker was killed).
struct Sighting {
    id: Id,
    /// The round (broker lifetime) it was delivered in; `rounds` for the final drain.
    round: u32,
    /// The consumer that got it (`CONSUMERS` for the final drain).
    consumer: u32,
    acked_at: Option<Instant>,
    /// The delivery's tag and redelivered flag, to tell in an order violation
    /// whether the broker assigned the tags (under its lock) in order.
    delivery_tag: u64,
    redelivered: bool,
}

/// What the clients did and saw, shared by the round's tasks.
#[derive(Default)]
struct Journal {
    published: HashSet<Id>,
    /// When each confirm arrived.
    confirmed: HashMap<Id, Instant>,
    nacked: HashSet<Id>,
    /// In the order they were recorded (chronological across rounds).
    sightings: Vec<Sighting>,
    /// Durable queues whose declare-ok and bind-ok (to `EXCHANGE`, with the
    /// queue name as routing key) arrived.
    definitions: Vec<String>,
    /// The queue's message count when the round's clients started, and what
    /// was published to and delivered from it since: a backlog estimate.
    backlog_at_start: i64,
    published_in_round: i64,
    delivered_in_round: i64,
    /// Violations, noticed as they happen or by [`analyse`].
    problems: Vec<(Kind, String)>,
}

/// Kinds of violation, most serious first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    /// A confirmed message is gone.
    Lost,
    /// A durable exchange, queue or binding is gone, or a non-durable or
    /// exclusive queue came back.
    Definitions,
    /// A message came back although its ack was older than the sync bound.
    AckBound,
    /// A message delivered twice within one broker lifetime.
    Duplicate,
    /// Something delivered that was never published, a transient message
    /// that survived a restart, or a damaged body or properties.
    Spurious,
    /// Messages of one publisher delivered to one consumer out of order.
    Order,
    /// Other unexpected broker behaviour (a return, a channel closed, an
    /// unknown confirm tag, a wrong message count).
    Protocol,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Lost => "confirmed messages lost",
            Kind::Definitions => "durable definitions lost or transient ones kept",
            Kind::AckBound => "acked messages back beyond the ack sync bound",
            Kind::Duplicate => "messages delivered twice without a crash",
            Kind::Spurious => "unpublished, damaged or resurrected transient messages",
            Kind::Order => "per-publisher order broken at a consumer (no requeue happened)",
            Kind::Protocol => "other unexpected broker behaviour",
        }
    }
}

type Shared = Arc<Mutex<Journal>>;

fn lock(journal: &Shared) -> MutexGuard<'_, Journal> {
    journal.lock().expect("journal lock (a task panicked holding it)")
}

fn problem(journal: &Shared, kind: Kind, text: String) {
    lock(journal).problems.push((kind, text));
}

fn text<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Publishes persistent messages in confirm mode until the broker dies,
/// keeping at most [`CONFIRM_WINDOW`] unconfirmed, and records each message
/// before it is sent and each confirm when it arrives.
async fn publisher(args: OpenConnectionArguments, journal: Shared, round: u32, publisher: u32) -> Result<(), String> {
    let conn = try_connect(&args).await?;
    let mut ch = try_channel(&conn).await?;
    ch.confirm_select(ConfirmSelectArguments::default()).await.map_err(text("confirm.select"))?;
    let mut unconfirmed: BTreeMap<u64, Id> = BTreeMap::new();
    let mut next_tag = 1;
    let mut seq = 0;
    loop {
        while let Ok(event) = ch.events.try_recv() {
            confirmed(&journal, &mut unconfirmed, event)?;
        }
        if unconfirmed.len() >= CONFIRM_WINDOW {
            match ch.events.recv().await {
                Some(event) => confirmed(&journal, &mut unconfirmed, event)?,
                None => return Ok(()),
            }
            continue;
        }
        if backlog_full(&journal) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let id = Id { round, publisher, seq };
        seq += 1;
        note_published(&journal, id);
        unconfirmed.insert(next_tag, id);
        next_tag += 1;
        let mut publish = BasicPublishArguments::new(EXCHANGE, ROUTING_KEY);
        publish.mandatory = true;
        ch.basic_publish(id.properties(), id.body(), publish).await.map_err(text("basic.publish"))?;
    }
}

/// Whether the queue holds about [`BACKLOG_MAX`] messages or more.
fn backlog_full(journal: &Shared) -> bool {
    let j = lock(journal);
    j.backlog_at_start + j.published_in_round - j.delivered_in_round > BACKLOG_MAX
}

/// Records a message about to be published.
fn note_published(journal: &Shared, id: Id) {
    let mut j = lock(journal);
    j.published.insert(id);
    j.published_in_round += 1;
}

fn confirmed(journal: &Shared, unconfirmed: &mut BTreeMap<u64, Id>, event: Event) -> Result<(), String> {
    let (tag, multiple, ack) = match event {
        Event::Ack { delivery_tag, multiple } => (delivery_tag, multiple, true),
        Event::Nack { delivery_tag, multiple } => (delivery_tag, multiple, false),
        Event::Returned(returned) => {
            // Mandatory: the durable binding did not route the message.
            problem(
                journal,
                Kind::Definitions,
                format!("message returned ({} {}): binding lost?", returned.code, returned.text),
            );
            return Ok(());
        }
        Event::Closed { code, text } => {
            problem(journal, Kind::Protocol, format!("publisher channel closed by the broker: {code} {text}"));
            return Err("channel closed".to_string());
        }
        Event::Cancelled { .. } => return Ok(()),
    };
    let settled: Vec<Id> = if multiple {
        let rest = unconfirmed.split_off(&(tag + 1));
        std::mem::replace(unconfirmed, rest).into_values().collect()
    } else {
        unconfirmed.remove(&tag).into_iter().collect()
    };
    let mut journal = lock(journal);
    if settled.is_empty() {
        journal.problems.push((Kind::Protocol, format!("confirm of unknown or already confirmed delivery tag {tag}")));
    }
    for id in settled {
        if ack {
            journal.confirmed.insert(id, Instant::now());
        } else {
            journal.nacked.insert(id);
        }
    }
    Ok(())
}

/// Publishes transient messages (no confirms) at a modest pace.
async fn transient_publisher(args: OpenConnectionArguments, journal: Shared, round: u32) -> Result<(), String> {
    let conn = try_connect(&args).await?;
    let ch = try_channel(&conn).await?;
    for seq in 0.. {
        let id = Id { round, publisher: TRANSIENT, seq };
        note_published(&journal, id);
        let publish = BasicPublishArguments::new(EXCHANGE, ROUTING_KEY);
        ch.basic_publish(id.properties(), id.body(), publish).await.map_err(text("basic.publish"))?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Consumes with manual acks, acking each message, until the broker dies.
async fn consumer(args: OpenConnectionArguments, journal: Shared, round: u32, consumer: u32) -> Result<(), String> {
    let conn = try_connect(&args).await?;
    let ch = try_channel(&conn).await?;
    ch.basic_qos(BasicQosArguments::new(0, PREFETCH, false)).await.map_err(text("basic.qos"))?;
    let consume = BasicConsumeArguments::new(QUEUE, "").manual_ack(true).finish();
    let (_tag, mut deliveries) = ch.basic_consume_rx(consume).await.map_err(text("basic.consume"))?;
    while let Some(message) = deliveries.recv().await {
        let Some(deliver) = message.deliver else { continue };
        let properties = message.basic_properties.unwrap_or_default();
        match identify(&message.content.unwrap_or_default(), &properties) {
            Ok(id) => {
                let mut j = lock(&journal);
                let (delivery_tag, redelivered) = (deliver.delivery_tag(), deliver.redelivered());
                let acked_at = Some(Instant::now());
                j.sightings.push(Sighting { id, round, consumer, acked_at, delivery_tag, redelivered });
                j.delivered_in_round += 1;
            }
            Err(why) => problem(&journal, Kind::Spurious, format!("round {round}, consumer {consumer}: {why}")),
        }
        ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false)).await.map_err(text("basic.ack"))?;
    }
    Ok(())
}

/// Declares durable queues bound to the durable exchange, one after another,
/// recording those whose bind-ok arrived.
async fn definer(args: OpenConnectionArguments, journal: Shared, round: u32) -> Result<(), String> {
    let conn = try_connect(&args).await?;
    let ch = try_channel(&conn).await?;
    for i in 0..DEFINITIONS_PER_ROUND {
        let queue = format!("crash-dq-r{round}-{i}");
        ch.queue_declare(QueueDeclareArguments::durable_client_named(&queue)).await.map_err(text("queue.declare"))?;
        let bind_args = amqprs::channel::QueueBindArguments::new(&queue, EXCHANGE, &queue);
        ch.queue_bind(bind_args).await.map_err(text("queue.bind"))?;
        lock(&journal).definitions.push(queue);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn exchange_exists(ch: &mut EventChannel, name: &str) -> bool {
    let args = ExchangeDeclareArguments::new(name, "direct").passive(true).finish();
    match within("passive exchange.declare", ch.exchange_declare(args)).await {
        Ok(()) => true,
        Err(_) => {
            assert_eq!(ch.closed_code().await, NOT_FOUND, "passive declare of exchange {name}");
            false
        }
    }
}

/// The ready-message count of `queue`, or `None` if it does not exist.
async fn queue_messages(ch: &mut EventChannel, name: &str) -> Option<u32> {
    let args = QueueDeclareArguments::new(name).passive(true).finish();
    match within("passive queue.declare", ch.queue_declare(args)).await {
        Ok(ok) => Some(ok.expect("declare-ok (no-wait was not requested)").1),
        Err(_) => {
            assert_eq!(ch.closed_code().await, NOT_FOUND, "passive declare of queue {name}");
            None
        }
    }
}

/// Checks that the durable definitions made so far exist and that the
/// non-durable and exclusive queues of earlier rounds do not.
/// Returns the message count of the durable queue.
async fn check_definitions(broker: &Broker, journal: &Shared, after_round: u32) -> u32 {
    let conn = connect(broker).await;
    let mut ch = channel(&conn).await;
    assert!(exchange_exists(&mut ch, EXCHANGE).await, "durable exchange {EXCHANGE} lost after round {after_round}");
    let messages = queue_messages(&mut ch, QUEUE).await;
    let messages = messages.unwrap_or_else(|| panic!("durable queue {QUEUE} lost after round {after_round}"));
    let declared = lock(journal).definitions.clone();
    for queue in &declared {
        if queue_messages(&mut ch, queue).await.is_none() {
            problem(
                journal,
                Kind::Definitions,
                format!("durable queue {queue} (declare-ok received) lost after round {after_round}"),
            );
            ch = channel(&conn).await;
        }
    }
    for round in 0..=after_round {
        for queue in [format!("crash-nd-{round}"), format!("crash-ex-{round}")] {
            let mut ch = channel(&conn).await;
            if queue_messages(&mut ch, &queue).await.is_some() {
                problem(
                    journal,
                    Kind::Definitions,
                    format!("queue {queue} (non-durable or exclusive) exists after round {after_round}"),
                );
            }
        }
    }
    close(conn).await;
    messages
}

/// Closes a connection of the main task. amqprs sometimes reports a failure
/// ("channel closed") when a channel of it was just dropped; that is the
/// client's business, not something the broker did, so it is ignored.
async fn close(conn: Connection) {
    let _ = within("connection.close", conn.close()).await;
}

/// Declares the round's definitions: the durable exchange, queue and binding
/// (re-declared: idempotent), a non-durable and an exclusive queue holding a
/// few persistent messages. Returns the connection owning the exclusive queue.
async fn set_up_round(broker: &Broker, round: u32) -> Connection {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    let exchange = ExchangeDeclareArguments::new(EXCHANGE, "direct").durable(true).finish();
    within("exchange.declare-ok", ch.exchange_declare(exchange)).await.expect("declare the durable exchange");
    within("queue.declare-ok", ch.queue_declare(QueueDeclareArguments::durable_client_named(QUEUE)))
        .await
        .expect("declare the durable queue");
    bind(&ch, QUEUE, EXCHANGE, ROUTING_KEY).await;
    let non_durable = format!("crash-nd-{round}");
    let exclusive = format!("crash-ex-{round}");
    within("queue.declare-ok", ch.queue_declare(QueueDeclareArguments::new(&non_durable)))
        .await
        .expect("declare a non-durable queue");
    let exclusive_args = QueueDeclareArguments::new(&exclusive).durable(true).exclusive(true).finish();
    within("queue.declare-ok", ch.queue_declare(exclusive_args)).await.expect("declare an exclusive queue");
    for queue in [&non_durable, &exclusive] {
        for seq in 0..3 {
            let id = Id { round, publisher: ASIDE, seq };
            let publish = BasicPublishArguments::new("", queue);
            within("basic.publish", ch.basic_publish(id.properties(), id.body(), publish)).await.expect("publish");
        }
    }
    conn
}

/// Stops a round's client tasks once the broker is dead. They end on their
/// own with connection errors; abort covers any that would wait forever.
async fn stop(tasks: Vec<(String, JoinHandle<Result<(), String>>)>, round: u32, errors: &mut HashMap<String, u32>) {
    for (_, task) in &tasks {
        task.abort();
    }
    for (name, task) in tasks {
        match within("an aborted client task", task).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => *errors.entry(why.split(':').next().unwrap_or_default().to_string()).or_default() += 1,
            Err(e) if e.is_cancelled() => {}
            Err(e) => panic!("round {round}: client task {name} panicked: {e}"),
        }
    }
}

struct Figures {
    redelivered_after_crash: usize,
    oldest_lost_ack: Duration,
}

/// Checks the journal against the contract; returns the figures for the summary.
fn analyse(journal: &mut Journal, kills: &[Instant], rounds: u32) -> Figures {
    let ack_window = warren_server::SYNC_INTERVAL + ACK_SLACK;
    let mut problems = Vec::new();
    let mut by_id: HashMap<Id, Vec<&Sighting>> = HashMap::new();
    for sighting in &journal.sightings {
        by_id.entry(sighting.id).or_default().push(sighting);
    }
    let mut figures = Figures { redelivered_after_crash: 0, oldest_lost_ack: Duration::ZERO };
    let mut ids: Vec<&Id> = by_id.keys().collect();
    ids.sort();
    for id in ids {
        let seen = &by_id[id];
        if !journal.published.contains(id) {
            problems.push((Kind::Spurious, format!("{id} delivered but never published")));
        }
        if let Some(late) = seen.iter().find(|s| s.round > id.round && !id.persistent()) {
            let when = if late.round == rounds {
                "in the final drain".to_string()
            } else {
                format!("in round {}", late.round)
            };
            problems.push((Kind::Spurious, format!("transient message {id} survived a restart: delivered {when}")));
        }
        for pair in seen.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if earlier.round == later.round {
                let text = format!("{id} delivered twice in round {} with no crash in between", earlier.round);
                problems.push((Kind::Duplicate, text));
                continue;
            }
            let Some(acked_at) = earlier.acked_at else { continue };
            // Its ack was sent in a round that ended with a kill: it may have
            // been lost, but only if it was sent within the sync interval.
            figures.redelivered_after_crash += 1;
            let kill = kills[earlier.round as usize];
            let age = kill.saturating_duration_since(acked_at);
            figures.oldest_lost_ack = figures.oldest_lost_ack.max(age);
            if age > ack_window {
                let text = format!(
                    "{id} acked in round {} {} ms before the kill came back (round {}): acks must be synced within {} ms",
                    earlier.round,
                    age.as_millis(),
                    later.round,
                    ack_window.as_millis()
                );
                problems.push((Kind::AckBound, text));
            }
        }
    }
    let mut lost: Vec<(&Id, &Instant)> = journal.confirmed.iter().filter(|(id, _)| !by_id.contains_key(id)).collect();
    lost.sort();
    for (id, confirmed_at) in lost {
        let before_kill = kills[id.round as usize].saturating_duration_since(*confirmed_at);
        let text = format!(
            "{id}: confirmed {} ms before the kill that ended round {}, then neither acked by a consumer nor found in \
             the final drain",
            before_kill.as_millis(),
            id.round
        );
        problems.push((Kind::Lost, text));
    }
    // Order: what one consumer got in one broker lifetime, per publisher.
    let mut last: HashMap<(u32, u32, u32, u32), &Sighting> = HashMap::new();
    for s in &journal.sightings {
        let key = (s.round, s.consumer, s.id.round, s.id.publisher);
        if let Some(previous) = last.insert(key, s) {
            if previous.id.seq >= s.id.seq {
                let text = format!(
                    "round {}, consumer {}: {} (delivery tag {}{}) came after {} (delivery tag {}{})",
                    s.round,
                    s.consumer,
                    s.id,
                    s.delivery_tag,
                    if s.redelivered { ", redelivered" } else { "" },
                    previous.id,
                    previous.delivery_tag,
                    if previous.redelivered { ", redelivered" } else { "" },
                );
                problems.push((Kind::Order, text));
            }
        }
    }
    journal.problems.extend(problems);
    figures
}

/// Consumes the durable queue up to the sentinel, acking each message (a
/// manual-ack consumer, as an application would drain it), and records what
/// came as sightings of the final drain. Returns how many came before the
/// sentinel. A stall is reported as a violation rather than waited out.
async fn drain(conn: &Connection, journal: &Shared, rounds: u32) -> u32 {
    let ch = channel(conn).await;
    within("basic.qos-ok", ch.basic_qos(BasicQosArguments::new(0, 500, false))).await.expect("basic.qos");
    let consume = BasicConsumeArguments::new(QUEUE, "").manual_ack(true).finish();
    let (_tag, mut deliveries) = within("basic.consume-ok", ch.basic_consume_rx(consume)).await.expect("consume");
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut drained = 0;
    loop {
        let message =
            match tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + TIMEOUT), deliveries.recv()).await
            {
                Ok(Some(message)) => message,
                Ok(None) => panic!("the drain consumer ended after {drained} messages"),
                Err(_) => {
                    let text =
                        format!("the final drain stalled: nothing delivered for {TIMEOUT:?} after {drained} messages");
                    problem(journal, Kind::Protocol, text);
                    return drained;
                }
            };
        let deliver = message.deliver.expect("basic.deliver");
        let content = message.content.unwrap_or_default();
        within("basic.ack", ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false)))
            .await
            .expect("basic.ack");
        if content == SENTINEL.as_bytes() {
            return drained;
        }
        drained += 1;
        match identify(&content, &message.basic_properties.unwrap_or_default()) {
            Ok(id) => lock(journal).sightings.push(Sighting {
                id,
                round: rounds,
                consumer: CONSUMERS,
                acked_at: None,
                delivery_tag: deliver.delivery_tag(),
                redelivered: deliver.redelivered(),
            }),
            Err(why) => problem(journal, Kind::Spurious, format!("final drain: {why}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_confirmed_message_and_no_durable_definition() {
    if Broker::is_external() {
        eprintln!("note: skipped, the crash test kills and restarts the broker it spawns");
        return;
    }
    let started = Instant::now();
    let rounds = std::env::var("WARREN_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let seed = std::env::var("WARREN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let mut rng = seed;
    let dir = std::env::temp_dir().join(unique("warren-crash"));
    println!("crash test: {rounds} rounds, seed {seed}, data in {}", dir.display());

    let journal: Shared = Arc::default();
    let mut kills = Vec::new();
    let mut client_errors: HashMap<String, u32> = HashMap::new();
    for round in 0..rounds {
        let broker = Broker::start_in(&dir);
        let backlog = if round > 0 { check_definitions(&broker, &journal, round - 1).await } else { 0 };
        {
            let mut j = lock(&journal);
            j.backlog_at_start = i64::from(backlog);
            j.published_in_round = 0;
            j.delivered_in_round = 0;
        }
        let owner = set_up_round(&broker, round).await;
        let args = connection_args(&broker);
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            tasks.push((format!("publisher {p}"), tokio::spawn(publisher(args.clone(), journal.clone(), round, p))));
        }
        tasks.push((
            "transient publisher".into(),
            tokio::spawn(transient_publisher(args.clone(), journal.clone(), round)),
        ));
        for c in 0..CONSUMERS {
            tasks.push((format!("consumer {c}"), tokio::spawn(consumer(args.clone(), journal.clone(), round, c))));
        }
        tasks.push(("definer".into(), tokio::spawn(definer(args.clone(), journal.clone(), round))));

        let delay = between(&mut rng, if round % 4 == 3 { LONG_ROUND_MS } else { SHORT_ROUND_MS });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        kills.push(Instant::now());
        broker.kill9();
        stop(tasks, round, &mut client_errors).await;
        drop(owner);

        let j = lock(&journal);
        let of_round =
            |ids: &mut dyn Iterator<Item = &Id>| ids.filter(|id| id.round == round && id.persistent()).count();
        let acked = j.sightings.iter().filter(|s| s.round == round).count();
        println!(
            "round {round:2}: killed after {delay:4} ms; published {:5}, confirmed {:5}, acked {acked:5}",
            of_round(&mut j.published.iter()),
            of_round(&mut j.confirmed.keys())
        );
    }

    // The final restart: definitions, a last message through the durable
    // exchange and binding, then the whole queue drained.
    let broker = Broker::start_in(&dir);
    let _ = check_definitions(&broker, &journal, rounds - 1).await;
    let conn = connect(&broker).await;
    let mut ch = channel(&conn).await;
    let backlog = queue_messages(&mut ch, QUEUE).await.expect("the durable queue exists");
    within("confirm.select-ok", ch.confirm_select(ConfirmSelectArguments::default())).await.expect("confirm.select");
    let definitions = lock(&journal).definitions.clone();
    for routing_key in definitions.iter().map(String::as_str).chain([ROUTING_KEY]) {
        let body = if routing_key == ROUTING_KEY { SENTINEL } else { routing_key };
        let mut publish = BasicPublishArguments::new(EXCHANGE, routing_key);
        publish.mandatory = true;
        let properties = BasicProperties::default().with_delivery_mode(2).finish();
        within("basic.publish", ch.basic_publish(properties, body.as_bytes().to_vec(), publish))
            .await
            .expect("publish through the durable exchange");
        match ch.next_event().await {
            Event::Ack { .. } => {}
            Event::Returned(_) => {
                problem(
                    &journal,
                    Kind::Definitions,
                    format!("binding {EXCHANGE} -> {routing_key} lost: the message was returned"),
                );
                let _ = ch.next_event().await;
            }
            other => panic!("expected the confirm of a publish through {EXCHANGE}, got {other:?}"),
        }
    }
    let drained = drain(&conn, &journal, rounds).await;
    if drained != backlog {
        let text = format!("the queue reported {backlog} messages after the restart but {drained} were drained");
        problem(&journal, Kind::Protocol, text);
    }
    close(conn).await;

    let mut j = lock(&journal);
    let figures = analyse(&mut j, &kills, rounds);
    j.problems.sort_by_key(|(kind, _)| *kind);
    let persistent = j.published.iter().filter(|id| id.persistent()).count();
    let consumed: HashSet<Id> = j.sightings.iter().filter(|s| s.round < rounds).map(|s| s.id).collect();
    let count = |kind: Kind| j.problems.iter().filter(|(k, _)| *k == kind).count();
    let (lost, out_of_order) = (count(Kind::Lost), count(Kind::Order));
    println!(
        "crash summary: rounds {rounds}, published {persistent} persistent + {} transient, confirmed {}, nacked {}, \
         consumed {} distinct, drained {drained}, lost {lost}, redelivered after crash {} (oldest lost ack {} ms \
         before the kill), durable queues declared mid-round {}, out of order {out_of_order}, took {:.1} s",
        j.published.len() - persistent,
        j.confirmed.len(),
        j.nacked.len(),
        consumed.len(),
        figures.redelivered_after_crash,
        figures.oldest_lost_ack.as_millis(),
        definitions.len(),
        started.elapsed().as_secs_f64()
    );
    println!("client errors after kills (expected): {client_errors:?}");
    if !j.problems.is_empty() {
        let mut kinds: Vec<Kind> = j.problems.iter().map(|(kind, _)| *kind).collect();
        kinds.dedup();
        let mut report = String::new();
        for kind in kinds {
            report += &format!("{} {}:\n", count(kind), kind.describe());
            for (_, text) in j.problems.iter().filter(|(k, _)| *k == kind).take(15) {
                report += &format!("  {text}\n");
            }
        }
        panic!(
            "{} violations (seed {seed}; data kept in {}, broker log in broker.stderr there):\n{report}",
            j.problems.len(),
            dir.display()
        );
    }
    drop(j);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
