//! One client connection after the handshake: read, hand frames to the broker, write.
//!
//! Each wake-up reads whatever the socket has (up to the buffer), parses every whole frame in
//! it and hands them to the broker under one lock; everything pending for this connection is
//! then written with one write. Frames for other connections go to their outboxes.

use crate::handshake::{self, Failed};
use crate::{encode, Shared, Transport, CLOSE_OK_TIMEOUT, READ_BUFFER_BYTES};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::{Instant, MissedTickBehavior};
use warren_amqp::frame::write_heartbeat;
use warren_amqp::{assemble_ahead, Frame, FrameParser, Input, Method, ProtocolError, ReplyCode, ShortStr};
use warren_core::{ConnId, Out};

/// The longest a flow-blocked publisher waits before reading again, should no consumer catch
/// up (one batch then goes through, and it may block again).
const FLOW_WAIT_MAX: Duration = Duration::from_millis(50);

/// A connection's read buffer to start with.
const READ_BUFFER_MIN_BYTES: usize = 1024;

/// Batches up to this many frames do not keep their buffers.
const SMALL_BATCH_FRAMES: usize = 16;

/// Frames handed to the broker under one lock at most.
const FRAMES_PER_BATCH: usize = 512;

/// How long one wake-up of a connection hands frames to the broker before it lets other tasks
/// run (and other connections take the lock): a publish that fans out to thousands of queues
/// is costly, and a connection with a full read buffer of them would otherwise keep a worker
/// thread and the lock for seconds, starving handshakes, the HTTP API and every other client.
const WORK_SLICE: Duration = Duration::from_millis(1);

/// Frames handed over between two looks at the clock.
const FRAMES_PER_CLOCK_CHECK: usize = 4;

/// Shared work between two looks at the clock: queues reached by publishes and messages
/// settled (a publish that fans out is looked after at once).
const WORK_PER_LOOK: u64 = 32;

/// What may go to the broker while it is shared, when the broker agrees: a whole publish, an
/// ack, or a reject or nack that does not requeue.
fn shareable(i: &Input) -> bool {
    match i {
        Input::Content { .. } => true,
        Input::Frame(Frame::Method { method, .. }) => matches!(
            method,
            Method::BasicAck { .. }
                | Method::BasicNack { requeue: false, .. }
                | Method::BasicReject { requeue: false, .. }
        ),
        Input::Frame(_) => false,
    }
}

/// The channel of a frame handed over as it is (0 for a whole command, never held back).
fn m_channel(i: &Input) -> u16 {
    match i {
        Input::Frame(f) => f.channel(),
        Input::Content { channel, .. } => *channel,
    }
}

fn close_method(e: &ProtocolError) -> Method {
    Method::ConnectionClose {
        reply_code: e.code.code(),
        reply_text: ShortStr::from(e.reply_text()),
        class_id: e.class_id,
        method_id: e.method_id,
    }
}

/// Serves one connection from the handshake to its end. `client_cert` is the certificate a TLS
/// client presented and the CA verified (DER), for the EXTERNAL mechanism.
pub(crate) async fn run<S: Transport>(
    shared: Arc<Shared>,
    id: ConnId,
    mut socket: S,
    peer: SocketAddr,
    local: String,
    client_cert: Option<Vec<u8>>,
) {
    let name = format!("{peer} -> {local}");
    tracing::info!("accepting AMQP connection {name}");
    // Small to start with (an idle connection keeps little); it grows while reads fill it.
    let mut rbuf = BytesMut::with_capacity(READ_BUFFER_MIN_BYTES);
    let handshake_timeout = Duration::from_millis(shared.broker().config().handshake_timeout_ms);

    let negotiated = match tokio::time::timeout(
        handshake_timeout,
        handshake::handshake(&shared, &mut socket, &mut rbuf, peer, client_cert.as_deref(), S::TLS),
    )
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(failed)) => {
            match &failed {
                Failed::Io(e) => tracing::info!("connection {name}: closed during the handshake: {e}"),
                Failed::BadHeader => {
                    tracing::info!("connection {name}: not AMQP 0-9-1, sent our protocol header and closed")
                }
                Failed::Refused(e) => tracing::warn!("connection {name}: handshake refused: {}", e.text),
            }
            handshake::report(&mut socket, &failed).await;
            return;
        }
        Err(_) => {
            tracing::warn!(
                "closing AMQP connection {name}: handshake timeout after {} ms",
                handshake_timeout.as_millis()
            );
            return;
        }
    };

    let (tx, rx) = mpsc::unbounded_channel();
    let vhost = negotiated.info.vhost.clone();
    let user = negotiated.info.user.clone();
    let (opened, flow, send_timeout, max_body) = {
        let mut core = shared.broker();
        let opened = core.open_connection(id, negotiated.info);
        if opened.is_ok() {
            core.register(id, tx, negotiated.frame_max);
        }
        let config = core.config();
        let (send_timeout, max_body) = (Duration::from_millis(config.send_timeout_ms), config.max_message_size);
        (opened.map(|()| core.outbound(id).unwrap_or_default()), core.flow_watch(), send_timeout, max_body)
    };
    let outbound = match opened {
        Ok(outbound) => outbound,
        Err(e) => {
            tracing::warn!("connection {name}: refused access to vhost '{vhost}': {}", e.text);
            handshake::refuse_open(&mut socket, &e.on((10, 40))).await;
            return;
        }
    };
    tracing::info!("connection {name}: user '{user}' authenticated and granted access to vhost '{vhost}'");

    let mut conn = Connection {
        shared: shared.clone(),
        id,
        parser: FrameParser::new(negotiated.frame_max),
        frame_max: negotiated.frame_max,
        heartbeat: Duration::from_secs(u64::from(negotiated.heartbeat_s)),
        send_timeout,
        rbuf,
        wbuf: crate::outbuf::OutBuf::default(),
        closing_since: None,
        closing: false,
        done: false,
        out: Vec::new(),
        mine: Vec::new(),
        frames: Vec::new(),
        partial: Vec::new(),
        max_body,
        read_size: READ_BUFFER_MIN_BYTES,
        flow,
        flow_blocked: false,
        alarm_blocked: false,
        backlog: false,
        turn: None,
        defs_sync: None,
        replication: None,
        delivered_encoded: 0,
        outbound,
    };
    let mut wbuf = BytesMut::new();
    write_open_ok(&mut wbuf);
    let reason = match socket.write_all(&wbuf).await {
        Ok(()) => conn.serve(socket, rx).await,
        Err(e) => format!("write failed: {e}"),
    };

    let mut out = Vec::new();
    {
        let mut core = shared.broker();
        core.connection_closed(id, shared.now_ms(), &mut out);
        core.unregister(id);
        shared.submit_replica_work(&mut core);
        core.deliver(&mut out);
    }
    tracing::info!("closing AMQP connection {name} (vhost '{vhost}', user '{user}'): {reason}");
}

fn write_open_ok(buf: &mut BytesMut) {
    warren_amqp::frame::write_method(buf, 0, &Method::ConnectionOpenOk);
}

fn is_close(o: &Out) -> bool {
    matches!(o, Out::Method { channel: 0, method: Method::ConnectionClose { .. } })
}

struct Connection {
    shared: Arc<Shared>,
    id: ConnId,
    parser: FrameParser,
    frame_max: u32,
    heartbeat: Duration,
    /// A write blocked this long gives the connection up (`tcp_listen_options.send_timeout`).
    send_timeout: Duration,
    rbuf: BytesMut,
    wbuf: crate::outbuf::OutBuf,
    /// Set when we wrote connection.close; we then wait for close-ok, a bounded time.
    closing_since: Option<Instant>,
    /// We decided to close (the broker or we produced connection.close): from then on only
    /// close-ok matters.
    closing: bool,
    done: bool,
    /// What the broker produced in this batch, for any connection.
    out: Vec<(ConnId, Out)>,
    /// What this connection will write next, in order.
    mine: Vec<Out>,
    /// Frames parsed from one read, whole publishes assembled ahead (kept to reuse its
    /// allocation; frames left over from a work slice wait here).
    frames: Vec<Input>,
    /// The frames of a publish whose content had not all arrived when the read ended (its
    /// method, and its header when that came): they wait for the rest, so that the publish is
    /// handed over whole (and can go with the broker shared) rather than frame by frame.
    partial: Vec<Frame>,
    /// The largest message body the broker takes (`max_message_size`): a publish declaring
    /// more is left to the broker to refuse.
    max_body: u64,
    /// How much room the next read gets: doubled while reads fill it, up to
    /// `READ_BUFFER_BYTES`.
    read_size: usize,
    /// Changes when flow-blocked publishers may go on.
    flow: watch::Receiver<u64>,
    /// The broker asked us to stop reading for a while (flow control).
    flow_blocked: bool,
    /// Blocked by a resource alarm: not read until the alarms clear.
    alarm_blocked: bool,
    /// A work slice ended with frames still to hand over: the rest goes on our next turn
    /// (`Shared::backlog_turn`), before anything more is read.
    backlog: bool,
    /// Waiting for that turn (kept across wake-ups so the place in line is kept).
    turn: Option<InLine>,
    /// Our commands changed durable definitions: the journal is synced (outside the lock)
    /// before anything more is written to the client.
    defs_sync: Option<Arc<dyn warren_store::SyncHandle>>,
    /// Topology changes the last batch made, to be committed by the cluster's metadata group
    /// before anything more is written to the client.
    replication: Option<Vec<warren_core::definitions::DefOp>>,
    /// Bytes of deliveries encoded into `wbuf` and not yet reported written to `outbound`.
    delivered_encoded: usize,
    /// Bytes of deliveries the broker handed us and we have not written yet (shared with it).
    outbound: Arc<warren_core::credit::Outbound>,
}

/// A place in line for a turn (`Shared::backlog_turn`), counted in the core's inbox depth
/// while it lasts.
struct InLine {
    wait: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>,
    >,
    shared: Arc<Shared>,
}

impl InLine {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.health.turn_waiters.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InLine { wait: Box::pin(shared.backlog_turn.clone().acquire_owned()), shared: shared.clone() }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.shared.health.turn_waiters.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits for the turn `line` stands in line for (pending forever if none).
async fn next_turn(line: &mut Option<InLine>) -> Option<OwnedSemaphorePermit> {
    match line {
        Some(l) => l.wait.as_mut().await.ok(),
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn serve<S: Transport>(&mut self, socket: S, mut rx: mpsc::UnboundedReceiver<crate::Outgoing>) -> String {
        let (mut rd, mut wr) = socket.split_halves();
        let mut shutdown = self.shared.shutdown.clone();
        // Send heartbeats at half the interval, as RabbitMQ does; a peer silent for two
        // intervals is dead.
        let hb_on = !self.heartbeat.is_zero();
        let mut hb = tokio::time::interval(if hb_on { self.heartbeat / 2 } else { Duration::from_secs(3600) });
        hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        loop {
            let close_deadline = self.closing_since.map(|t| t + CLOSE_OK_TIMEOUT);
            let room = self.rbuf.capacity() - self.rbuf.len();
            if room < self.read_size / 2 {
                self.rbuf.reserve(self.read_size);
            }
            let room = self.rbuf.capacity() - self.rbuf.len();
            if self.backlog && self.turn.is_none() {
                self.turn = Some(InLine::new(&self.shared));
            }
            tokio::select! {
                permit = next_turn(&mut self.turn), if self.backlog && !self.flow_blocked && !self.alarm_blocked => {
                    self.turn = None;
                    self.backlog = false;
                    // The client is not silent: we have not read what it sent yet (a long
                    // backlog must not look like missed heartbeats).
                    last_read = Instant::now();
                    self.on_read();
                    drop(permit);
                }
                read = rd.read_buf(&mut self.rbuf), if !self.backlog && !self.flow_blocked && !self.alarm_blocked => match read {
                    Ok(0) => return "client closed the TCP connection".into(),
                    Ok(n) => {
                        if n == room {
                            self.read_size = (self.read_size * 2).min(READ_BUFFER_BYTES);
                        }
                        last_read = Instant::now();
                        self.on_read();
                        // Let the worker thread run other connections before this one reads
                        // again: a publisher whose socket is never empty would otherwise keep it
                        // for tokio's whole cooperative budget (128 reads, each with a work
                        // slice), and consumers waiting to ack and write starved.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => return format!("read failed: {e}"),
                },
                Some(outgoing) = rx.recv() => self.take_outgoing(outgoing),
                _ = self.flow.changed(), if self.flow_blocked || self.alarm_blocked => {
                    self.flow_blocked = false;
                    if self.alarm_blocked {
                        self.alarm_blocked = self.shared.broker().is_alarm_blocked(self.id);
                        // Heartbeats were not read while blocked (RabbitMQ pauses monitoring).
                        last_read = Instant::now();
                    }
                    if !self.alarm_blocked {
                        self.on_read();
                    }
                }
                _ = tokio::time::sleep(FLOW_WAIT_MAX), if self.flow_blocked && !self.alarm_blocked => {
                    self.flow_blocked = false;
                    self.on_read();
                }
                _ = hb.tick(), if hb_on => {
                    if !self.alarm_blocked && last_read.elapsed() > self.heartbeat * 2 {
                        return format!("missed heartbeats from client, timeout: {}s", self.heartbeat.as_secs());
                    }
                    if last_write.elapsed() >= self.heartbeat / 2 {
                        write_heartbeat(self.wbuf.small());
                    }
                }
                _ = tokio::time::sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                    return "no connection.close-ok from client in time".into();
                }
                _ = shutdown.changed(), if !self.closing => {
                    let e = ProtocolError::new(ReplyCode::ConnectionForced, "broker forced connection closure with reason 'shutdown'");
                    self.closing = true;
                    self.mine.push(Out::Method { channel: 0, method: close_method(&e) });
                }
            }
            if let Some(handle) = self.defs_sync.take() {
                // A declare, bind or delete of something durable is answered once the
                // definitions journal is on disk; the sync runs outside the broker lock.
                let synced = tokio::task::spawn_blocking(move || handle.sync())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                if let Err(e) = synced {
                    self.shared.broker().definitions_sync_failed(&e);
                    tracing::error!("connection {}: cannot sync the definitions journal: {e}", self.id);
                    // What it was about to be told may not be durable: it is not told.
                    self.mine.clear();
                    let e = ProtocolError::new(
                        ReplyCode::InternalError,
                        format_args!("cannot make the definitions durable: {e}"),
                    );
                    self.closing = true;
                    self.mine.push(Out::Method { channel: 0, method: close_method(&e) });
                }
            }
            if let Some(ops) = self.replication.take() {
                // In a cluster, a durable declare, bind or delete is answered once the
                // metadata group committed it (and it is undone here if it did not).
                if let Some(replicator) = self.shared.replicator().cloned() {
                    if let Err(why) = replicator.replicate(ops).await {
                        tracing::warn!("connection {}: a topology change was not committed: {why}", self.id);
                        self.mine.clear();
                        let e = ProtocolError::new(
                            ReplyCode::InternalError,
                            format_args!("the cluster did not commit the change: {why}"),
                        );
                        self.closing = true;
                        self.mine.push(Out::Method { channel: 0, method: close_method(&e) });
                    }
                }
            }
            // Everything queued for us so far (in the broker's order) goes out in one write.
            while let Ok(more) = rx.try_recv() {
                self.take_outgoing(more);
            }
            let delivered = self.flush_mine() + std::mem::take(&mut self.delivered_encoded);
            if !self.wbuf.is_empty() {
                // One vectored write: small frames from one buffer, large bodies from their own.
                self.wbuf.prepare();
                // A client that stops reading fills its socket: give up after the send timeout,
                // as RabbitMQ does, so its messages are requeued and it can reconnect. A forced
                // close of such a connection completes this way too.
                match tokio::time::timeout(self.send_timeout, wr.write_all_buf(&mut self.wbuf)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return format!("write failed: {e}"),
                    Err(_) => {
                        return format!(
                            "write timed out after {} ms: the client is not reading (tcp_listen_options.send_timeout)",
                            self.send_timeout.as_millis()
                        )
                    }
                }
                last_write = Instant::now();
            }
            if delivered > 0 && self.outbound.written(delivered) {
                // Deliveries the broker held back for a full socket may resume: they arrive
                // through the outbox like everything else. (Any other write needs no lock.)
                if self.shared.publish_shared {
                    let core = self.shared.broker_shared();
                    let stager = crate::Stager::new(&core);
                    let mut tally = warren_core::Tally::default();
                    core.on_writable_shared(self.id, self.shared.now_ms(), &mut self.out, &mut tally, &stager);
                    core.finish_shared(tally, &stager, &mut self.out);
                } else {
                    let mut core = self.shared.broker();
                    core.on_writable(self.id, self.shared.now_ms(), &mut self.out);
                    core.deliver(&mut self.out);
                }
            }
            if self.done {
                // Let the client close the TCP connection once it has read close-ok (or our
                // close-ok crossing its close): closing first makes some clients see an abort.
                // On the heap: an array here would be part of every connection's task.
                let mut sink = vec![0u8; 4096];
                let deadline = Instant::now() + CLOSE_OK_TIMEOUT;
                while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, rd.read(&mut sink)).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
                return "client closed the connection".into();
            }
        }
    }

    /// Takes output handed to this connection: to encode with its own, or already encoded
    /// (which goes after what waits to be encoded, to keep the order).
    fn take_outgoing(&mut self, outgoing: crate::Outgoing) {
        match outgoing {
            crate::Outgoing::Outs(outs) => self.mine.extend(outs),
            crate::Outgoing::Encoded(buf, delivered) => {
                self.delivered_encoded += self.flush_mine() + delivered;
                self.wbuf.append(buf);
            }
        }
    }

    /// Encodes pending output; notes when we start closing. Returns delivered bytes.
    fn flush_mine(&mut self) -> usize {
        if self.mine.is_empty() {
            return 0;
        }
        if self.closing_since.is_none() && self.mine.iter().any(is_close) {
            self.closing = true;
            self.closing_since = Some(Instant::now());
        }
        for o in &self.mine {
            // The broker closing a channel or the connection is worth an operator's look, as
            // RabbitMQ logs its channel and connection exceptions.
            if let Out::Method { channel, method: Method::ChannelClose { reply_code, reply_text, .. } } = o {
                tracing::warn!("connection {}: closing channel {channel}: {reply_code} {reply_text}", self.id);
            }
            if let Out::Method { method: Method::ConnectionClose { reply_code, reply_text, .. }, .. } = o {
                tracing::warn!("connection {}: closing the connection: {reply_code} {reply_text}", self.id);
            }
        }
        let delivered = encode(&mut self.wbuf, &self.mine, self.frame_max);
        self.mine.clear();
        if self.mine.capacity() <= SMALL_BATCH_FRAMES {
            self.mine = Vec::new();
        }
        delivered
    }

    /// Parses the whole frames read so far and hands them to the broker, a bounded batch under
    /// the lock at a time (so the lock is never held for long, and the batch buffer stays
    /// small), until it has held the lock for one [`WORK_SLICE`]; what is left waits for the
    /// next turn (`backlog`).
    fn on_read(&mut self) {
        let mut held = Duration::ZERO;
        while !self.done && !self.flow_blocked && !self.alarm_blocked && self.on_read_batch(&mut held) {
            if held >= WORK_SLICE {
                self.backlog = true;
                return;
            }
        }
    }

    /// Parses up to [`FRAMES_PER_BATCH`] frames (after those left from the last batch) and
    /// hands them over while the time this turn has held the lock (`held`, which it adds to) is
    /// under the slice; false when there was nothing more to hand over (or a framing error ended
    /// reading). The slice counts time holding the lock, not time waiting for it: a connection
    /// is held back for the work it does, not for the contention it meets.
    fn on_read_batch(&mut self, held: &mut Duration) -> bool {
        let mut frames = std::mem::take(&mut self.frames);
        let mut error = None;
        let had = frames.len();
        let room = FRAMES_PER_BATCH.saturating_sub(had);
        let mut parsed = 0;
        // Frames are parsed straight into the assembler: whole publishes are assembled here,
        // before the lock is taken.
        let (parser, rbuf) = (&mut self.parser, &mut self.rbuf);
        let reads = std::iter::from_fn(|| {
            if parsed == room || error.is_some() {
                return None;
            }
            match parser.parse(rbuf) {
                Ok(Some(f)) => {
                    parsed += 1;
                    Some(f)
                }
                Ok(None) => None,
                Err(e) => {
                    error = Some(e);
                    None
                }
            }
        });
        assemble_ahead(std::mem::take(&mut self.partial).into_iter().chain(reads), self.max_body, &mut frames);
        if error.is_none() && !self.closing {
            self.hold_partial_publish(&mut frames);
        }
        if frames.is_empty() && error.is_none() {
            self.frames = frames;
            return false;
        }
        let full = parsed == room;
        let now = self.shared.now_ms();
        // Whole publishes at the head of the batch go with the broker shared, in parallel with
        // other connections' (`Broker::publish_shared`); from the first that cannot on, the
        // batch goes with the broker held.
        if self.shared.publish_shared && error.is_none() && !self.closing && frames.first().is_some_and(shareable) {
            self.hand_over_shared(&mut frames, held, now);
            if frames.is_empty() {
                let more = full || !self.frames.is_empty();
                // A large batch's buffer is reused, as below.
                if frames.capacity() > SMALL_BATCH_FRAMES && self.frames.is_empty() {
                    self.frames = frames;
                }
                return more;
            }
        }
        let shared = self.shared.clone();
        let mut core = shared.broker();
        let locked_at = std::time::Instant::now();
        // Frames handed over since the clock was last looked at.
        let mut unclocked = 0;
        let mut left = false;
        for input in frames.drain(..) {
            if self.done {
                break;
            }
            if left {
                self.frames.push(input);
                continue;
            }
            // A publish (costly when it fans out) is worth a look at the clock after each.
            unclocked += if matches!(input, Input::Content { .. }) { FRAMES_PER_CLOCK_CHECK } else { 1 };
            if unclocked >= FRAMES_PER_CLOCK_CHECK {
                unclocked = 0;
                // The rest of the batch waits for the next slice, in order.
                left = error.is_none() && *held + locked_at.elapsed() >= WORK_SLICE;
            }
            let f = match input {
                Input::Frame(f) => f,
                Input::Content { channel, content } => {
                    // Never on channel 0, so never the connection's own; dropped once closing.
                    if !self.closing {
                        core.handle_content(self.id, channel, content, now, &mut self.out);
                    }
                    continue;
                }
            };
            // The broker ignores the frames of a connection it is closing; only channel 0 is
            // ours to handle, so that is where its decision is looked up.
            if f.channel() == 0 && !self.closing && core.is_closing(self.id) {
                self.closing = true;
            }
            if self.closing {
                // After our connection.close only close-ok (or a crossing close) matters.
                if let Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk | Method::ConnectionClose { .. },
                } = f
                {
                    self.done = true;
                }
                continue;
            }
            if f.channel() == 0 {
                if let Frame::Method { method: Method::ConnectionClose { .. }, .. } = f {
                    // Requeue unacked messages and delete exclusive queues before close-ok, so
                    // that a client seeing close-ok sees the broker already cleaned up (as
                    // RabbitMQ does). Doing it again when the socket goes is a no-op.
                    core.connection_closed(self.id, now, &mut self.out);
                }
                self.connection_frame(f);
            } else {
                core.handle_frame(self.id, f, now, &mut self.out);
            }
        }
        frames.clear();
        // A small batch's buffer is not worth keeping (idle connections stay small); a large
        // one is reused (unless frames left over are in a buffer of their own).
        if frames.capacity() > SMALL_BATCH_FRAMES && self.frames.is_empty() {
            self.frames = frames;
        }
        if !self.closing && core.is_closing(self.id) {
            self.closing = true;
        }
        self.note_blocked(core.take_flow_blocked(self.id), core.is_alarm_blocked(self.id));
        let more = (full || !self.frames.is_empty()) && error.is_none();
        if let Some(e) = error {
            if !self.closing && !self.done {
                tracing::warn!("connection {}: protocol error: {}", self.id, e.text);
                self.closing = true;
                self.out.push((self.id, Out::Method { channel: 0, method: close_method(&e) }));
            }
            // Nothing after a framing error can be trusted.
            self.rbuf.clear();
        }
        core.end_batch(self.id, &mut self.out);
        if let Some(handle) = core.take_definitions_sync(self.id) {
            self.defs_sync = Some(handle);
        }
        if core.is_replicating() {
            if let Some(ops) = core.take_replication(Some(self.id)) {
                self.replication.get_or_insert_with(Vec::new).extend(ops);
            }
            self.shared.submit_replica_work(&mut core);
        }
        let sync_wanted = core.sync_wanted();
        core.log_errors();
        core.deliver(&mut self.out);
        *held += locked_at.elapsed();
        drop(core);
        if self.out.capacity() <= SMALL_BATCH_FRAMES {
            self.out = Vec::new();
        }
        if sync_wanted {
            self.shared.sync_wanted.notify_one();
        }
        more
    }

    /// Notes that the broker asked this connection to pause reading (a publish paged behind a
    /// slow consumer, or a resource alarm). Called under the lock, so a release that comes
    /// after this is seen as a change; one made at the same moment by a consumer catching up
    /// while the broker is shared may be missed, and then the wait ends after
    /// [`FLOW_WAIT_MAX`] as when no consumer catches up.
    fn note_blocked(&mut self, flow_blocked: bool, alarm_blocked: bool) {
        if flow_blocked || alarm_blocked {
            self.flow_blocked = flow_blocked;
            self.alarm_blocked = alarm_blocked;
            self.flow.borrow_and_update();
        }
    }

    /// Keeps back a publish at the end of `frames` whose content is still to come (only its
    /// method, or its method and header with a body to follow): the next read completes it,
    /// and it is assembled then ([`assemble_ahead`]). A body in several frames is never
    /// assembled ahead, so one of those goes on as it is.
    fn hold_partial_publish(&mut self, frames: &mut Vec<Input>) {
        let n = frames.len();
        let is_content_method = |i: &Input| matches!(i, Input::Frame(Frame::Method { channel, method }) if *channel != 0 && method.has_content());
        let hold = match frames.as_slice() {
            [.., last] if is_content_method(last) => 1,
            [.., m, Input::Frame(Frame::Header { channel, body_size, .. })]
                if *body_size > 0
                    && *body_size <= self.max_body
                    && is_content_method(m)
                    && m_channel(m) == *channel =>
            {
                2
            }
            _ => 0,
        };
        self.partial.extend(frames.drain(n - hold..).map(|i| match i {
            Input::Frame(f) => f,
            Input::Content { .. } => unreachable!("only frames are held"),
        }));
    }

    /// Hands whole publishes and acks from the head of `frames` to the broker while it is
    /// shared, until one needs it held (that one and the rest stay in `frames`) or the work
    /// slice is used up (the rest wait in `self.frames` for the next turn). Deliveries are
    /// staged and handed to their connections, and this connection's answers sent, before the
    /// broker is let go.
    fn hand_over_shared(&mut self, frames: &mut Vec<Input>, held: &mut Duration, now: u64) {
        let shared = self.shared.clone();
        let core = shared.broker_shared();
        let locked_at = std::time::Instant::now();
        let stager = crate::Stager::new(&core);
        let mut tally = warren_core::Tally::default();
        let mut handed_back = None;
        let mut out_of_time = false;
        let mut next_look = 0;
        let mut inputs = frames.drain(..);
        for input in inputs.by_ref() {
            match input {
                Input::Content { channel, content } => {
                    if let Some(content) =
                        core.publish_shared(self.id, channel, content, now, &mut self.out, &mut tally, &stager)
                    {
                        handed_back = Some(Input::Content { channel, content });
                        break;
                    }
                }
                Input::Frame(Frame::Method { channel, method })
                    if core.settle_shared(self.id, channel, &method, now, &mut self.out, &mut tally, &stager) => {}
                other => {
                    handed_back = Some(other);
                    break;
                }
            }
            // A look at the clock after a publish that fanned out, and otherwise every few
            // publishes and acks (a look costs more than a publish to one queue).
            if tally.work >= next_look {
                next_look = tally.work + WORK_PER_LOOK;
                if *held + locked_at.elapsed() >= WORK_SLICE {
                    out_of_time = true;
                    break;
                }
            }
        }
        // What is left of the batch; usually nothing, and then `frames` keeps its room.
        let rest: Vec<Input> = if handed_back.is_some() || out_of_time {
            handed_back.into_iter().chain(inputs).collect()
        } else {
            drop(inputs);
            Vec::new()
        };
        core.end_batch_shared(self.id, &mut self.out, &mut tally);
        self.note_blocked(core.take_flow_blocked_shared(self.id), core.is_alarm_blocked(self.id));
        let sync_wanted = core.finish_shared(tally, &stager, &mut self.out);
        *held += locked_at.elapsed();
        drop(stager);
        drop(core);
        if out_of_time {
            self.frames.extend(rest);
        } else if !rest.is_empty() {
            *frames = rest;
        }
        if self.out.capacity() <= SMALL_BATCH_FRAMES {
            self.out = Vec::new();
        }
        if sync_wanted {
            self.shared.sync_wanted.notify_one();
        }
    }

    /// Methods of channel 0 after the handshake; answers go out in order with the broker's.
    fn connection_frame(&mut self, f: Frame) {
        let reply = match f {
            Frame::Heartbeat => None,
            Frame::Method { method: Method::ConnectionClose { .. }, .. } => {
                self.done = true;
                Some(Method::ConnectionCloseOk)
            }
            Frame::Method { method: Method::ConnectionUpdateSecret { .. }, .. } => {
                Some(Method::ConnectionUpdateSecretOk)
            }
            Frame::Method { method: Method::ConnectionBlocked { .. } | Method::ConnectionUnblocked, .. } => None,
            Frame::Method { method, .. } => {
                self.closing = true;
                let e =
                    ProtocolError::new(ReplyCode::CommandInvalid, "unexpected method on channel 0").on(method.ids());
                Some(close_method(&e))
            }
            _ => {
                self.closing = true;
                Some(close_method(&ProtocolError::new(ReplyCode::UnexpectedFrame, "content frame on channel 0")))
            }
        };
        if let Some(method) = reply {
            self.out.push((self.id, Out::Method { channel: 0, method }));
        }
    }
}
