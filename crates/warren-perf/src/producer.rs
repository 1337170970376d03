//! A producer: one connection, one channel, publishing stamped messages in batches.
//!
//! Each turn of the loop builds as many publishes as it may into the write buffer (up to
//! [`BATCH_BYTES`], the confirm window, the rate and `-C`), then waits on whichever comes first:
//! the socket taking the batch (one write), the broker's confirms (every frame of a read is
//! handled), the rate's next tick, or the stop signal. Reading and writing in one `select!`
//! means a broker that writes confirms while we write publishes can never deadlock us.
//!
//! Invariant: delivery tag `n` (from 1, after confirm.select) is sequence number `n - 1`; the
//! [`Confirms`] window holds every tag not yet settled, in order.

use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use warren_amqp::frame::{write_content, write_method};
use warren_amqp::{BasicProperties, Frame, Method, ShortStr};

use crate::client::{ensure_read_room, finish, on_async_method, Async, Connection, Error};
use crate::report::Shared;
use crate::stamp::{now_ns, Stamp};

/// How many bytes of frames one write carries at most: enough to amortise the syscall over
/// hundreds of small messages, small enough to stay in cache.
pub const BATCH_BYTES: usize = 64 * 1024;
/// The channel every producer and consumer uses.
pub const CHANNEL: u16 = 1;

#[derive(Debug, Clone)]
pub struct ProducerSpec {
    pub index: u32,
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub size: usize,
    /// Most confirms outstanding; `None` without confirm mode.
    pub confirm: Option<u32>,
    /// Messages per second; 0 is unlimited.
    pub rate: u32,
    /// Messages to publish; `None` is until stopped.
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct ProducerOutcome {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    /// Sequence numbers nacked or never confirmed (confirm mode only): not due to consumers.
    pub unconfirmed: Vec<u64>,
    /// When the last batch was written out.
    pub last_publish: Option<Instant>,
    pub last_confirm: Option<Instant>,
}

const PENDING: u8 = 0;
const ACKED: u8 = 1;
const NACKED: u8 = 2;

/// The confirm window: the state of every delivery tag from the oldest unsettled one on.
#[derive(Debug)]
pub struct Confirms {
    /// Delivery tag of `window[0]`.
    base: u64,
    window: VecDeque<u8>,
    pub outstanding: u64,
    pub nacked_seqs: Vec<u64>,
}

impl Default for Confirms {
    fn default() -> Self {
        Confirms { base: 1, window: VecDeque::new(), outstanding: 0, nacked_seqs: Vec::new() }
    }
}

impl Confirms {
    /// Notes one more publish (the next delivery tag).
    pub fn published(&mut self) {
        self.window.push_back(PENDING);
        self.outstanding += 1;
    }

    /// Applies basic.ack (`ack`) or basic.nack; returns how many tags it settled.
    pub fn settle(&mut self, delivery_tag: u64, multiple: bool, ack: bool) -> Result<u64, Error> {
        let next = self.base + self.window.len() as u64;
        if delivery_tag >= next || (delivery_tag == 0 && !multiple) {
            return Err(Error::Protocol(format!(
                "the broker settled delivery tag {delivery_tag}, but only tags below {next} were published"
            )));
        }
        if delivery_tag < self.base {
            // Already settled (a repeated multiple ack covers nothing new).
            return Ok(0);
        }
        let hi = (delivery_tag - self.base) as usize;
        let lo = if multiple { 0 } else { hi };
        let mut settled = 0;
        for i in lo..=hi {
            if self.window[i] == PENDING {
                self.window[i] = if ack { ACKED } else { NACKED };
                if !ack {
                    self.nacked_seqs.push(self.base + i as u64 - 1);
                }
                settled += 1;
            }
        }
        while self.window.front().is_some_and(|&s| s != PENDING) {
            self.window.pop_front();
            self.base += 1;
        }
        self.outstanding -= settled;
        Ok(settled)
    }

    /// Sequence numbers still waiting for a confirm.
    pub fn pending_seqs(&self) -> Vec<u64> {
        self.window.iter().enumerate().filter(|(_, &s)| s == PENDING).map(|(i, _)| self.base + i as u64 - 1).collect()
    }
}

/// A fixed rate: message `n` (from 0) is due `n / rate` seconds after the start.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    rate: u32,
    start: Instant,
}

impl Pace {
    pub fn new(rate: u32, start: Instant) -> Pace {
        Pace { rate, start }
    }

    pub fn limited(&self) -> bool {
        self.rate > 0
    }

    /// How many more messages may go at `now` when `sent` went already.
    pub fn allowance(&self, sent: u64, now: Instant) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        let due = (now.saturating_duration_since(self.start).as_secs_f64() * self.rate as f64) as u64 + 1;
        due.saturating_sub(sent)
    }

    /// When message number `sent` is due.
    pub fn next_due(&self, sent: u64) -> Instant {
        if self.rate == 0 {
            return self.start;
        }
        self.start + Duration::from_secs_f64(sent as f64 / self.rate as f64)
    }
}

/// Opens the channel (and confirm mode) on a fresh connection.
pub async fn prepare(conn: &mut Connection, spec: &ProducerSpec) -> Result<(), Error> {
    conn.channel_open(CHANNEL).await?;
    if spec.confirm.is_some() {
        conn.confirm_select(CHANNEL).await?;
    }
    Ok(())
}

/// Publishes until `-C` is reached (and confirmed) or `stop` says so, then closes the connection.
/// The outcome counts what happened even when the run ends in an error.
pub async fn run(
    mut conn: Connection,
    spec: ProducerSpec,
    shared: Arc<Shared>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> (ProducerOutcome, Option<Error>) {
    let frame_max = conn.frame_max;
    let mut publish = BytesMut::new();
    write_method(
        &mut publish,
        CHANNEL,
        &Method::BasicPublish {
            exchange: ShortStr::from(spec.exchange.as_str()),
            routing_key: ShortStr::from(spec.routing_key.as_str()),
            mandatory: false,
            immediate: false,
        },
    );
    let properties = spec.properties.to_bytes();
    let mut body = vec![0u8; spec.size];
    let limit = spec.count.unwrap_or(u64::MAX);
    let window = spec.confirm.map_or(u64::MAX, u64::from);
    let pace = Pace::new(spec.rate, start);
    let mut confirms = Confirms::default();
    let mut out = ProducerOutcome::default();
    let mut published: u64 = 0;
    let mut blocked = false;

    let result: Result<(), Error> = async {
        let io = conn.io();
        let (mut rd, mut wr) = io.stream.split();
        loop {
            if *stop.borrow_and_update() {
                return Ok(());
            }
            if io.wbuf.is_empty() {
                if published >= limit && confirms.outstanding == 0 {
                    return Ok(());
                }
                let now = Instant::now();
                let n = if blocked {
                    0
                } else {
                    (limit - published).min(window - confirms.outstanding).min(pace.allowance(published, now))
                };
                if n > 0 {
                    let sent_ns = now_ns();
                    let mut batch = 0;
                    while batch < n && io.wbuf.len() < BATCH_BYTES {
                        // Sequence numbers are 32-bit; -C is bounded by that, an endless run wraps.
                        Stamp { sent_ns, producer: spec.index, seq: published as u32 }.write(&mut body);
                        io.wbuf.extend_from_slice(&publish);
                        write_content(io.wbuf, CHANNEL, &properties, &body, frame_max);
                        if spec.confirm.is_some() {
                            confirms.published();
                        }
                        published += 1;
                        batch += 1;
                    }
                    shared.published.fetch_add(batch, Ordering::Relaxed);
                }
            }
            let wait_for_pace =
                io.wbuf.is_empty() && pace.limited() && !blocked && published < limit && confirms.outstanding < window;
            let due = pace.next_due(published);
            ensure_read_room(io.rbuf);
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                r = rd.read_buf(io.rbuf) => {
                    let n = r.map_err(|e| Error::Io { context: "cannot read from the broker".into(), source: e })?;
                    if n == 0 {
                        return Err(Error::Eof("while publishing".into()));
                    }
                    let (mut acked, mut nacked) = (0, 0);
                    loop {
                        let frame = match io.parser.parse(io.rbuf) {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(e) => return Err(Error::Protocol(e.to_string())),
                        };
                        let Frame::Method { channel, method } = frame else { continue };
                        match method {
                            Method::BasicAck { delivery_tag, multiple } => {
                                acked += confirms.settle(delivery_tag, multiple, true)?;
                            }
                            Method::BasicNack { delivery_tag, multiple, .. } => {
                                nacked += confirms.settle(delivery_tag, multiple, false)?;
                            }
                            other => match on_async_method(io.wbuf, channel, &other)? {
                                Async::Blocked(reason) => {
                                    eprintln!("warren-perf: producer {} blocked by the broker: {reason}", spec.index);
                                    blocked = true;
                                }
                                Async::Unblocked => blocked = false,
                                Async::Ignore => {}
                            },
                        }
                    }
                    if acked + nacked > 0 {
                        out.confirmed += acked;
                        out.nacked += nacked;
                        out.last_confirm = Some(Instant::now());
                        shared.confirmed.fetch_add(acked, Ordering::Relaxed);
                        shared.nacked.fetch_add(nacked, Ordering::Relaxed);
                    }
                }
                r = wr.write_buf(io.wbuf), if !io.wbuf.is_empty() => {
                    r.map_err(|e| Error::Io { context: "cannot write to the broker".into(), source: e })?;
                    if io.wbuf.is_empty() {
                        out.last_publish = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(due.into()), if wait_for_pace => {}
            }
        }
    }
    .await;

    out.published = published;
    if spec.confirm.is_some() {
        out.unconfirmed = confirms.pending_seqs();
        out.unconfirmed.extend_from_slice(&confirms.nacked_seqs);
    }
    (out, finish(conn, result).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multiple_acks_settle_in_order() {
        let mut c = Confirms::default();
        for _ in 0..10 {
            c.published();
        }
        assert_eq!(c.settle(3, true, true).expect("ok"), 3);
        assert_eq!(c.outstanding, 7);
        assert_eq!(c.settle(5, false, true).expect("ok"), 1, "out of order single ack");
        assert_eq!(c.outstanding, 6);
        assert_eq!(c.pending_seqs(), vec![3, 5, 6, 7, 8, 9]);
        assert_eq!(c.settle(5, false, true).expect("ok"), 0, "repeated ack settles nothing");
        assert_eq!(c.settle(7, true, true).expect("ok"), 3);
        assert_eq!(c.settle(2, true, true).expect("ok"), 0, "below the window");
        assert_eq!(c.pending_seqs(), vec![7, 8, 9]);
    }

    #[test]
    fn nacks_are_remembered_by_sequence_number() {
        let mut c = Confirms::default();
        for _ in 0..4 {
            c.published();
        }
        assert_eq!(c.settle(2, false, false).expect("ok"), 1);
        assert_eq!(c.settle(4, true, true).expect("ok"), 3);
        assert_eq!(c.outstanding, 0);
        assert_eq!(c.nacked_seqs, vec![1]);
        assert!(c.pending_seqs().is_empty());
    }

    #[test]
    fn confirming_an_unpublished_tag_is_an_error() {
        let mut c = Confirms::default();
        c.published();
        assert!(c.settle(2, false, true).is_err());
        assert!(c.settle(0, false, true).is_err());
        assert_eq!(c.settle(1, false, true).expect("ok"), 1);
    }

    #[test]
    fn pace_spreads_messages_over_time() {
        let start = Instant::now();
        let p = Pace::new(1000, start);
        assert_eq!(p.allowance(0, start), 1, "the first message goes at once");
        assert_eq!(p.allowance(1, start), 0);
        assert_eq!(p.allowance(1, start + Duration::from_millis(10)), 10);
        assert_eq!(p.next_due(10), start + Duration::from_millis(10));
        let unlimited = Pace::new(0, start);
        assert!(!unlimited.limited());
        assert_eq!(unlimited.allowance(u64::MAX - 1, start), u64::MAX);
    }
}
