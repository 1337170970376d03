//! A consumer: one connection, one channel, one basic.consume.
//!
//! Each read is parsed to the last whole frame. A delivery is three or more frames (deliver,
//! header, bodies); only the first [`STAMP_LEN`] body bytes are kept, to read the stamp. The
//! clock is read once per read: every message in it arrived at that moment. Acks of a read go
//! out in one write, one per message or one `multiple` ack every N.
//!
//! Invariant: at most one delivery is being assembled at a time (the broker sends a delivery's
//! frames contiguously on a channel), and `unacked` counts the deliveries after the last ack.

use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use warren_amqp::frame::write_method;
use warren_amqp::{Frame, Method};

use crate::client::{ensure_read_room, finish, on_async_method, Async, Connection, Error};
use crate::histogram::Histogram;
use crate::producer::CHANNEL;
use crate::report::Shared;
use crate::stamp::{now_ns, Stamp, STAMP_LEN};
use crate::tracker::Mark;

#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub index: u32,
    /// Index of the queue in the run's topology (for loss accounting).
    pub queue_index: usize,
    pub queue: String,
    pub prefetch: u16,
    pub auto_ack: bool,
    /// Ack every this many deliveries with multiple=true; 1 acks each one singly.
    pub ack_every: u64,
    /// Deliveries to take, then stop; `None` is until stopped.
    pub count: Option<u64>,
}

impl ConsumerSpec {
    /// Acks go at least every `prefetch` deliveries, or the broker would stop sending before
    /// `ack_every` is reached.
    pub fn ack_threshold(&self) -> u64 {
        if self.prefetch > 0 {
            self.ack_every.min(self.prefetch as u64)
        } else {
            self.ack_every
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ConsumerOutcome {
    pub consumed: u64,
    pub duplicated: u64,
    pub foreign: u64,
    pub redelivered: u64,
    /// Deliveries whose tag was not above the previous one's: the broker wrote them out of
    /// order, which breaks `multiple` acks (an ack for N settles tags not yet received).
    pub reordered: u64,
    pub last_delivery: Option<Instant>,
}

/// Where the consumer is in the frames of a delivery.
#[derive(Debug)]
enum Rx {
    Idle,
    Header { delivery_tag: u64, redelivered: bool },
    Body { delivery_tag: u64, redelivered: bool, remaining: u64, stamp: [u8; STAMP_LEN], have: usize },
}

/// Opens the channel, sets the prefetch and starts consuming on a fresh connection.
pub async fn prepare(conn: &mut Connection, spec: &ConsumerSpec) -> Result<(), Error> {
    conn.channel_open(CHANNEL).await?;
    if spec.prefetch > 0 {
        conn.basic_qos(CHANNEL, spec.prefetch).await?;
    }
    conn.basic_consume(CHANNEL, &spec.queue, spec.auto_ack).await?;
    Ok(())
}

/// The per-read bookkeeping of one consumer.
struct State<'a> {
    spec: &'a ConsumerSpec,
    shared: &'a Shared,
    out: ConsumerOutcome,
    rx: Rx,
    unacked: u64,
    last_tag: u64,
    /// The highest delivery tag received.
    highest_tag: u64,
    threshold: u64,
    limit: u64,
}

impl<'a> State<'a> {
    fn new(spec: &'a ConsumerSpec, shared: &'a Shared) -> Self {
        State {
            spec,
            shared,
            out: ConsumerOutcome::default(),
            rx: Rx::Idle,
            unacked: 0,
            last_tag: 0,
            highest_tag: 0,
            threshold: spec.ack_threshold(),
            limit: spec.count.unwrap_or(u64::MAX),
        }
    }

    fn done(&self) -> bool {
        self.out.consumed >= self.limit
    }

    /// A whole delivery arrived at `now_ns`.
    fn complete(
        &mut self,
        wbuf: &mut BytesMut,
        latency: &mut Histogram,
        now_ns: u64,
        delivery_tag: u64,
        redelivered: bool,
        stamp: &[u8],
    ) -> u64 {
        if self.done() {
            // Past -D: left unacked, the broker requeues it when we close.
            return 0;
        }
        self.out.consumed += 1;
        if redelivered {
            self.out.redelivered += 1;
        }
        let mut first = 0;
        match Stamp::read(stamp) {
            Some(s) => {
                latency.record(now_ns.saturating_sub(s.sent_ns));
                if let Some(t) = &self.shared.tracker {
                    match t.mark(self.spec.queue_index, s.producer, s.seq) {
                        Mark::First => first = 1,
                        Mark::Duplicate => self.out.duplicated += 1,
                        Mark::Foreign => self.out.foreign += 1,
                    }
                }
            }
            None => self.out.foreign += 1,
        }
        if !self.spec.auto_ack {
            self.last_tag = delivery_tag;
            self.unacked += 1;
            if self.unacked >= self.threshold || self.done() {
                self.ack(wbuf);
            }
        }
        first
    }

    fn ack(&mut self, wbuf: &mut BytesMut) {
        if self.unacked == 0 {
            return;
        }
        let multiple = self.unacked > 1 || self.spec.ack_every > 1;
        write_method(wbuf, CHANNEL, &Method::BasicAck { delivery_tag: self.last_tag, multiple });
        self.unacked = 0;
    }

    /// Handles every whole frame in `rbuf`; returns how many deliveries were new to the tracker.
    fn on_read(
        &mut self,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        parser: &warren_amqp::FrameParser,
    ) -> Result<u64, Error> {
        let now = now_ns();
        let mut first = 0;
        let mut latency = match self.shared.latency[self.spec.index as usize].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        loop {
            let frame = match parser.parse(rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(Error::Protocol(e.to_string())),
            };
            match (std::mem::replace(&mut self.rx, Rx::Idle), frame) {
                (Rx::Idle, Frame::Method { method: Method::BasicDeliver { delivery_tag, redelivered, .. }, .. }) => {
                    if delivery_tag <= self.highest_tag {
                        if self.out.reordered == 0 {
                            eprintln!(
                                "warren-perf: consumer {}: the broker delivered tag {delivery_tag} after tag {}",
                                self.spec.index, self.highest_tag
                            );
                        }
                        self.out.reordered += 1;
                    }
                    self.highest_tag = self.highest_tag.max(delivery_tag);
                    self.rx = Rx::Header { delivery_tag, redelivered };
                }
                (Rx::Header { delivery_tag, redelivered }, Frame::Header { body_size, .. }) => {
                    if body_size == 0 {
                        first += self.complete(wbuf, &mut latency, now, delivery_tag, redelivered, &[]);
                    } else {
                        self.rx = Rx::Body {
                            delivery_tag,
                            redelivered,
                            remaining: body_size,
                            stamp: [0; STAMP_LEN],
                            have: 0,
                        };
                    }
                }
                (
                    Rx::Body { delivery_tag, redelivered, remaining, mut stamp, mut have },
                    Frame::Body { payload, .. },
                ) => {
                    let take = (STAMP_LEN - have).min(payload.len());
                    stamp[have..have + take].copy_from_slice(&payload[..take]);
                    have += take;
                    let remaining = remaining.saturating_sub(payload.len() as u64);
                    if remaining == 0 {
                        first += self.complete(wbuf, &mut latency, now, delivery_tag, redelivered, &stamp[..have]);
                    } else {
                        self.rx = Rx::Body { delivery_tag, redelivered, remaining, stamp, have };
                    }
                }
                (Rx::Idle, Frame::Method { channel, method }) => match method {
                    Method::BasicCancel { consumer_tag, .. } => {
                        return Err(Error::Protocol(format!(
                            "the broker cancelled consumer {consumer_tag} (was queue {} deleted?)",
                            self.spec.queue
                        )))
                    }
                    other => {
                        if let Async::Blocked(reason) = on_async_method(wbuf, channel, &other)? {
                            eprintln!("warren-perf: consumer {} blocked by the broker: {reason}", self.spec.index);
                        }
                    }
                },
                (Rx::Idle, Frame::Heartbeat) => {}
                // The broker may close the connection between the frames of a delivery.
                (state, Frame::Method { channel: 0, method }) => {
                    self.rx = state;
                    on_async_method(wbuf, 0, &method)?;
                }
                (state, frame) => {
                    return Err(Error::Protocol(format!(
                        "unexpected frame of type {} in the middle of a delivery ({state:?})",
                        match frame {
                            Frame::Method { .. } => "method",
                            Frame::Header { .. } => "header",
                            Frame::Body { .. } => "body",
                            Frame::Heartbeat => "heartbeat",
                        }
                    )))
                }
            }
        }
        Ok(first)
    }
}

/// Consumes until `-D` is reached or `stop` says so, then acks what it holds and closes.
/// The outcome counts what happened even when the run ends in an error.
pub async fn run(
    mut conn: Connection,
    spec: ConsumerSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (ConsumerOutcome, Option<Error>) {
    let mut st = State::new(&spec, &shared);
    let result: Result<(), Error> = async {
        let io = conn.io();
        let (mut rd, mut wr) = io.stream.split();
        loop {
            if *stop.borrow_and_update() || (st.done() && io.wbuf.is_empty()) {
                return Ok(());
            }
            ensure_read_room(io.rbuf);
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                r = wr.write_buf(io.wbuf), if !io.wbuf.is_empty() => {
                    r.map_err(|e| Error::Io { context: "cannot write to the broker".into(), source: e })?;
                }
                r = rd.read_buf(io.rbuf), if !st.done() => {
                    let n = r.map_err(|e| Error::Io { context: "cannot read from the broker".into(), source: e })?;
                    if n == 0 {
                        return Err(Error::Eof("while consuming".into()));
                    }
                    let before = st.out.consumed;
                    let first = st.on_read(io.rbuf, io.wbuf, io.parser)?;
                    let got = st.out.consumed - before;
                    if got > 0 {
                        st.out.last_delivery = Some(Instant::now());
                        shared.consumed.fetch_add(got, Ordering::Relaxed);
                        shared.unique.fetch_add(first, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    .await;

    let out = std::mem::take(&mut st.out);
    if result.is_ok() {
        // Settle what we took before saying goodbye, so the broker does not requeue it.
        st.ack(conn.io().wbuf);
    }
    (out, finish(conn, result).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Tracker;
    use warren_amqp::frame::write_content;
    use warren_amqp::{FrameParser, ShortStr};

    fn spec(auto_ack: bool, ack_every: u64, prefetch: u16, count: Option<u64>) -> ConsumerSpec {
        ConsumerSpec { index: 0, queue_index: 0, queue: "q".into(), prefetch, auto_ack, ack_every, count }
    }

    fn deliver(buf: &mut BytesMut, tag: u64, body: &[u8], frame_max: u32) {
        write_method(
            buf,
            CHANNEL,
            &Method::BasicDeliver {
                consumer_tag: ShortStr::from("ctag"),
                delivery_tag: tag,
                redelivered: false,
                exchange: ShortStr::default(),
                routing_key: ShortStr::from("q"),
            },
        );
        write_content(buf, CHANNEL, &[0, 0], body, frame_max);
    }

    fn acks(wbuf: &mut BytesMut) -> Vec<(u64, bool)> {
        let p = FrameParser::new(131072);
        let mut v = Vec::new();
        while let Some(f) = p.parse(wbuf).expect("valid") {
            if let Frame::Method { method: Method::BasicAck { delivery_tag, multiple }, .. } = f {
                v.push((delivery_tag, multiple));
            }
        }
        v
    }

    fn body(producer: u32, seq: u32, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        Stamp { sent_ns: now_ns(), producer, seq }.write(&mut b);
        b
    }

    #[test]
    fn deliveries_split_over_reads_and_body_frames_are_counted_once() {
        let shared = Shared::new(1, Tracker::new(1, &[vec![0]], &[true], 10));
        let spec = spec(false, 1, 0, None);
        let mut st = State::new(&spec, &shared);
        let mut stream = BytesMut::new();
        // A body split into frames of 4096 - 8 bytes, the first holding only part of the stamp
        // would be impossible (frames are larger), so split the read instead.
        deliver(&mut stream, 1, &body(0, 0, 10_000), 4096);
        deliver(&mut stream, 2, &body(0, 1, 16), 4096);
        deliver(&mut stream, 3, &body(0, 1, 16), 4096);
        let parser = FrameParser::new(4096);
        let mut wbuf = BytesMut::new();
        let mut rbuf = BytesMut::new();
        let mut first = 0;
        for chunk in stream.chunks(7) {
            rbuf.extend_from_slice(chunk);
            first += st.on_read(&mut rbuf, &mut wbuf, &parser).expect("valid");
        }
        assert_eq!(st.out.consumed, 3);
        assert_eq!(first, 2);
        assert_eq!(st.out.duplicated, 1);
        assert_eq!(acks(&mut wbuf), vec![(1, false), (2, false), (3, false)]);
        assert_eq!(shared.latency[0].lock().expect("not poisoned").count(), 3);
    }

    #[test]
    fn multi_ack_every_n_and_at_the_limit() {
        let shared = Shared::new(1, None);
        let spec = spec(false, 3, 0, Some(7));
        let mut st = State::new(&spec, &shared);
        let mut rbuf = BytesMut::new();
        for tag in 1..=9 {
            deliver(&mut rbuf, tag, &body(0, tag as u32, 16), 131072);
        }
        let mut wbuf = BytesMut::new();
        st.on_read(&mut rbuf, &mut wbuf, &FrameParser::new(131072)).expect("valid");
        assert_eq!(st.out.consumed, 7, "stops counting at -D");
        assert_eq!(acks(&mut wbuf), vec![(3, true), (6, true), (7, true)]);
        assert_eq!(st.out.foreign, 0, "no tracker, nothing is foreign");
    }

    #[test]
    fn auto_ack_sends_nothing_and_short_bodies_are_foreign() {
        let shared = Shared::new(1, None);
        let spec = spec(true, 1, 0, None);
        let mut st = State::new(&spec, &shared);
        let mut rbuf = BytesMut::new();
        deliver(&mut rbuf, 1, b"short", 131072);
        deliver(&mut rbuf, 2, b"", 131072);
        let mut wbuf = BytesMut::new();
        st.on_read(&mut rbuf, &mut wbuf, &FrameParser::new(131072)).expect("valid");
        assert_eq!((st.out.consumed, st.out.foreign), (2, 2));
        assert!(wbuf.is_empty());
    }

    #[test]
    fn deliveries_out_of_tag_order_are_counted() {
        let shared = Shared::new(1, None);
        let spec = spec(true, 1, 0, None);
        let mut st = State::new(&spec, &shared);
        let mut rbuf = BytesMut::new();
        for tag in [1, 2, 5, 6, 3, 4, 7] {
            deliver(&mut rbuf, tag, &body(0, tag as u32, 16), 131072);
        }
        st.on_read(&mut rbuf, &mut BytesMut::new(), &FrameParser::new(131072)).expect("valid");
        assert_eq!((st.out.consumed, st.out.reordered), (7, 2));
    }

    #[test]
    fn prefetch_below_the_multi_ack_bounds_it() {
        assert_eq!(spec(false, 100, 10, None).ack_threshold(), 10);
        assert_eq!(spec(false, 5, 10, None).ack_threshold(), 5);
        assert_eq!(spec(false, 5, 0, None).ack_threshold(), 5);
    }
}
