//! One authenticated connection to a peer node: the requests this node has in flight on it, and
//! the two tasks that read and write its frames.
//!
//! The writer task owns the socket's write half and drains the connection's outbox (requests
//! from every group, answers to the peer's requests, pings when quiet). The reader task owns the
//! read half: it hands each answer to the request waiting for it, and each request from the peer
//! to a task of its own that runs the group's handler and queues the answer.
//!
//! Invariants: once closed, a connection stays closed, every request pending on it has been
//! failed, and no request can be added to it; `pending` is the only lock here and is never held
//! across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::frame::{self, status, Header, ReadError};
use super::handshake::Identity;
use super::transport::{Answer, Refusal};
use super::{Node, ReadHalf, WriteHalf};
use crate::RpcError;

/// Frames queued for the writer, per connection. Senders wait when it is full, so a slow peer
/// holds back this node's requests to it rather than growing memory.
const OUTBOX_FRAMES: usize = 1024;

/// The writer's buffer: frames queued together go out in one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The answer to one of our requests: its status and the whole response frame.
pub(super) struct Response {
    pub(super) status: u8,
    pub(super) frame: Vec<u8>,
}

type Waiter = oneshot::Sender<Result<Response, RpcError>>;

/// Why a connection ended.
#[derive(Clone, Debug)]
pub(super) enum CloseReason {
    /// The socket failed, the peer closed it, broke the protocol or went quiet.
    Broken(String),
    /// A newer or preferred connection to the same peer took its place.
    Replaced,
    /// This endpoint stopped.
    Stopped,
}

/// One authenticated connection; shared by the registry, its tasks and the requests on it.
pub(super) struct Conn {
    /// Unique on this endpoint.
    pub(super) id: u64,
    /// The peer, as its handshake said.
    pub(super) peer: Identity,
    /// The node that dialed: decides which connection stays when two nodes dial each other.
    pub(super) dialed_by: u64,
    outbox: mpsc::Sender<Vec<u8>>,
    /// Our requests waiting for an answer, by request id; `None` once closed.
    pending: Mutex<Option<HashMap<u64, Waiter>>>,
    next_request: AtomicU64,
    closed: watch::Sender<bool>,
}

impl Conn {
    /// A new open connection and the receiving end of its outbox, for the writer task.
    pub(super) fn new(id: u64, peer: Identity, dialed_by: u64) -> (Arc<Conn>, mpsc::Receiver<Vec<u8>>) {
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_FRAMES);
        let conn = Conn {
            id,
            peer,
            dialed_by,
            outbox,
            pending: Mutex::new(Some(HashMap::new())),
            next_request: AtomicU64::new(1),
            closed: watch::Sender::new(false),
        };
        (Arc::new(conn), outbox_rx)
    }

    pub(super) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the connection is closed.
    pub(super) async fn wait_closed(&self) {
        until_closed(self.closed.subscribe()).await;
    }

    /// Closes the connection: its tasks end (dropping the socket) and every pending request
    /// fails. A connection replaced by another fails them as retryable at once; a broken one as
    /// unreachable, so that openraft backs off.
    pub(super) fn close(&self, reason: &CloseReason) {
        let pending = self.pending.lock().take();
        self.closed.send_replace(true);
        for (_, waiter) in pending.into_iter().flatten() {
            // The requester may have given up already; nothing to do then.
            let _ = waiter.send(Err(self.failure(reason)));
        }
    }

    fn failure(&self, reason: &CloseReason) -> RpcError {
        let peer = self.peer.node_id;
        match reason {
            CloseReason::Broken(why) => {
                RpcError::Unreachable { reason: format!("connection to node {peer} lost: {why}") }
            }
            CloseReason::Replaced => {
                RpcError::Network { reason: format!("connection to node {peer} replaced by another") }
            }
            CloseReason::Stopped => RpcError::Unreachable { reason: "this node's endpoint stopped".to_owned() },
        }
    }

    fn closed_error(&self) -> RpcError {
        RpcError::Unreachable { reason: format!("connection to node {} closed", self.peer.node_id) }
    }

    /// Sends request `frame` and waits for its answer until `deadline` (`timeout` after the
    /// RPC began).
    pub(super) async fn call(
        &self,
        mut frame: Vec<u8>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        frame::set_request_id(&mut frame, id);
        let (waiter, answer) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(pending) => pending.insert(id, waiter),
            None => return Err(self.closed_error()),
        };
        // Whatever ends this call (answer, failure, timeout, or openraft dropping it), the
        // request is no longer waited for.
        let _forget = Forget { conn: self, id };
        let exchange = async {
            self.outbox.send(frame).await.map_err(|_| self.closed_error())?;
            answer.await.map_err(|_| self.closed_error())?
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(RpcError::Timeout { after: timeout }),
        }
    }

    /// Hands an answer to the request waiting for it, if it still waits.
    fn answer(&self, id: u64, response: Response) {
        let waiter = self.pending.lock().as_mut().and_then(|pending| pending.remove(&id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(Ok(response));
        }
    }
}

/// Removes a request from the pending map when its caller stops waiting.
struct Forget<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.conn.pending.lock().as_mut() {
            pending.remove(&self.id);
        }
    }
}

/// Resolves once the connection is closed.
async fn until_closed(mut closed: watch::Receiver<bool>) {
    // An error means the connection itself is gone, which is as closed as it gets.
    let _ = closed.wait_for(|closed| *closed).await;
}

/// The reader task of `conn`.
pub(super) async fn read_loop(node: Arc<Node>, conn: Arc<Conn>, reader: ReadHalf) {
    let closed = conn.closed.subscribe();
    tokio::select! {
        () = until_closed(closed) => {}
        reason = read_frames(&node, &conn, reader) => node.lost(&conn, reason),
    }
}

async fn read_frames(node: &Arc<Node>, conn: &Arc<Conn>, reader: ReadHalf) -> CloseReason {
    let max = node.config.max_frame_bytes;
    let dead_after = Duration::from_millis(node.config.dead_after_ms);
    let permits = Arc::new(Semaphore::new(node.config.max_requests_in_flight));
    let mut reader = BufReader::new(reader);
    loop {
        let frame = match frame::read_frame(&mut reader, max, dead_after).await {
            // A node refused since this connection opened (one that crossed the refusal, say)
            // is cut off at its next frame, a keepalive at the latest.
            Ok(_) if node.is_refused(&conn.peer) => {
                return CloseReason::Broken("the node was taken out of the cluster".to_owned())
            }
            Ok(frame) => frame,
            Err(ReadError::Closed) => return CloseReason::Broken("closed by the peer".to_owned()),
            Err(ReadError::Idle) => return CloseReason::Broken(format!("nothing received for {dead_after:?}")),
            Err(ReadError::TooLarge(len)) => {
                node.count(|s| s.oversized_frames += 1);
                return CloseReason::Broken(format!("the peer sent a frame of {len} bytes; the limit is {max}"));
            }
            Err(ReadError::Io(e)) => return CloseReason::Broken(e.to_string()),
        };
        match frame::parse(&frame) {
            None => return CloseReason::Broken("the peer sent a malformed frame".to_owned()),
            Some(Header::Ping) => {}
            Some(Header::Response { id, status }) => conn.answer(id, Response { status, frame }),
            Some(Header::Request { group, id, kind }) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    // The handler starts the work here, in arrival order (a forwarded proposal
                    // is handed to its group's core before the next frame is read); its answer
                    // is awaited by a task of its own.
                    let answer = match (kind, node.handler(group)) {
                        (None, _) => Err((status::BAD_REQUEST, "unknown request kind".to_owned())),
                        (Some(_), None) => {
                            Err((status::NO_GROUP, format!("no group {group} on node {}", node.me.node_id)))
                        }
                        (Some(kind), Some(handler)) => Ok(handler.handle(kind, frame::request_body(&frame))),
                    };
                    drop(frame);
                    node.spawn(handle_request(Arc::clone(node), Arc::clone(conn), id, answer, permit));
                }
                // Refused rather than waited for: the reader must keep reading, since the answers
                // to this node's own requests arrive on the same connection.
                Err(_) => {
                    let _ = conn.outbox.try_send(frame::response(id, status::BUSY, b"too many requests in flight"));
                }
            },
        }
    }
}

/// Runs a peer's request `id` for `group` and queues the answer.
async fn handle_request(
    node: Arc<Node>,
    conn: Arc<Conn>,
    id: u64,
    answer: Result<Answer, Refusal>,
    _permit: OwnedSemaphorePermit,
) {
    let answer = match answer {
        Ok(work) => work.await,
        Err(refused) => Err(refused),
    };
    let mut response = match answer {
        Ok(body) => frame::response(id, status::OK, &body),
        Err((status, reason)) => frame::response(id, status, reason.as_bytes()),
    };
    if frame::outgoing_len(&response) > node.config.max_frame_bytes as usize {
        response = frame::response(id, status::TOO_LARGE, b"the answer exceeds the frame limit");
    }
    // A closed connection drops the answer; the requester has seen the connection fail.
    let _ = conn.outbox.send(response).await;
}

/// The writer task of `conn`.
pub(super) async fn write_loop(node: Arc<Node>, conn: Arc<Conn>, outbox: mpsc::Receiver<Vec<u8>>, writer: WriteHalf) {
    let closed = conn.closed.subscribe();
    let keepalive = Duration::from_millis(node.config.keepalive_ms);
    let stall = Duration::from_millis(node.config.dead_after_ms);
    tokio::select! {
        () = until_closed(closed) => {}
        reason = write_frames(outbox, writer, keepalive, stall) => node.lost(&conn, reason),
    }
}

async fn write_frames(
    mut outbox: mpsc::Receiver<Vec<u8>>,
    writer: WriteHalf,
    keepalive: Duration,
    stall: Duration,
) -> CloseReason {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    loop {
        let first = match tokio::time::timeout(keepalive, outbox.recv()).await {
            Err(_quiet) => frame::ping(),
            Ok(Some(frame)) => frame,
            // The connection holds a sender while it lives; no sender means nothing to write.
            Ok(None) => return CloseReason::Stopped,
        };
        if let Err(reason) = write_paced(&mut writer, &first, stall).await {
            return reason;
        }
        // Whatever else is queued goes in the same flush.
        while let Ok(frame) = outbox.try_recv() {
            if let Err(reason) = write_paced(&mut writer, &frame, stall).await {
                return reason;
            }
        }
        match tokio::time::timeout(stall, writer.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return CloseReason::Broken(e.to_string()),
            Err(_) => return stalled(stall),
        }
    }
}

/// Writes `bytes` in pieces of at most [`WRITE_BUFFER_BYTES`], each of which must go within
/// `stall`: a slow link that keeps taking a large frame is not mistaken for a dead peer.
async fn write_paced(writer: &mut BufWriter<WriteHalf>, bytes: &[u8], stall: Duration) -> Result<(), CloseReason> {
    for piece in bytes.chunks(WRITE_BUFFER_BYTES) {
        match tokio::time::timeout(stall, writer.write_all(piece)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CloseReason::Broken(e.to_string())),
            Err(_) => return Err(stalled(stall)),
        }
    }
    Ok(())
}

fn stalled(stall: Duration) -> CloseReason {
    CloseReason::Broken(format!("the peer took no data for {stall:?}"))
}
