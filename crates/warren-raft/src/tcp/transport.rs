//! The typed ends of the endpoint: [`TcpTransport`] encodes one group's requests and decodes the
//! answers; [`GroupHandler`] decodes a peer's requests for a registered group, runs them on the
//! group and encodes the answers. Both use the group's own machine `M` for commands, which is
//! what lets groups of different machines share one endpoint: the endpoint itself sees bytes.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::frame::{self, status, Kind};
use super::Node;
use crate::codec;
use crate::types::{AppendRequest, AppendResponse, Snapshot, SnapshotResponse, Vote, VoteRequest, VoteResponse};
use crate::{Group, Machine, Peer, RpcError, Stopped, Transport};

/// A refused request: a status of [`frame::status`] and the reason, sent as the answer's body.
pub(super) type Refusal = (u8, String);

/// A request being handled; resolves to the encoded answer.
pub(super) type Answer = Pin<Box<dyn Future<Output = Result<Vec<u8>, Refusal>> + Send>>;

/// A registered group as the endpoint sees it: bytes in, bytes out.
pub(super) trait Handler: Send + Sync + 'static {
    /// Decodes `body` as a request of `kind` and returns the work of answering it.
    fn handle(&self, kind: Kind, body: &[u8]) -> Answer;
}

/// The handler of this node's member of a group replicating `M`.
pub(super) struct GroupHandler<M: Machine> {
    group: Group<M>,
    /// The snapshot arriving in parts, if one is ([`Kind::SnapshotPart`]).
    parts: parking_lot::Mutex<Option<Arriving>>,
}

impl<M: Machine> GroupHandler<M> {
    pub(super) fn new(group: Group<M>) -> Self {
        GroupHandler { group, parts: parking_lot::Mutex::new(None) }
    }
}

/// A snapshot request arriving in parts: the sender's transfer id, its total length, the
/// bytes so far, and when the last part came.
struct Arriving {
    transfer: u64,
    total: u64,
    bytes: Vec<u8>,
    at: tokio::time::Instant,
}

/// A transfer with no part for this long is let go (its sender gave up: a new leader, say) at
/// the group's next append, rather than held until the next snapshot comes.
const PARTS_STALE_AFTER: Duration = Duration::from_secs(60);

/// Bytes of a snapshot part's header: transfer id, total length, offset.
const PART_HEADER_BYTES: usize = 24;

/// How many bytes of a snapshot request go in one part (at most; half the frame limit if that
/// is less): a snapshot request larger than this goes in parts, one at a time, each answered
/// before the next is sent, so that the connection's other traffic (every group's heartbeats)
/// goes between them and no frame comes near the frame limit, whatever the snapshot's size.
pub(crate) const SNAPSHOT_PART_BYTES: usize = 1 << 20;

impl<M: Machine> GroupHandler<M> {
    /// Takes one part of a snapshot request: a part that completes it installs the snapshot
    /// (answered as a whole snapshot is), the others are answered with nothing. A part that
    /// does not follow the one before (another transfer's, or at another offset) is refused,
    /// and a first part (offset 0) always starts a transfer again.
    fn take_part(&self, body: &[u8]) -> Answer {
        let invalid = |why: &str| bad_request(std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()));
        let Some(header) = body.get(..PART_HEADER_BYTES) else { return invalid("a snapshot part without its header") };
        let field = |i: usize| u64::from_be_bytes(header[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let (transfer, total, offset) = (field(0), field(1), field(2));
        let data = &body[PART_HEADER_BYTES..];
        let mut parts = self.parts.lock();
        if offset == 0 {
            // Room for the whole at once (one copy, not a vector doubling as it grows), or a
            // refusal rather than an abort for a size this node cannot hold.
            *parts = None;
            let mut bytes = Vec::new();
            if usize::try_from(total).map_err(|_| ()).and_then(|n| bytes.try_reserve_exact(n).map_err(|_| ())).is_err()
            {
                return invalid(&format!("a snapshot of {total} bytes cannot be held"));
            }
            *parts = Some(Arriving { transfer, total, bytes, at: tokio::time::Instant::now() });
        }
        let Some(arriving) = parts.as_mut() else { return invalid("a snapshot part with no transfer started") };
        if arriving.transfer != transfer || arriving.total != total || arriving.bytes.len() as u64 != offset {
            *parts = None;
            return invalid("a snapshot part out of order");
        }
        if offset + data.len() as u64 > total {
            *parts = None;
            return invalid("a snapshot part past the snapshot's length");
        }
        arriving.bytes.extend_from_slice(data);
        arriving.at = tokio::time::Instant::now();
        if (arriving.bytes.len() as u64) < total {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        let whole = parts.take().map(|a| a.bytes).unwrap_or_default();
        drop(parts);
        self.handle(Kind::Snapshot, &whole)
    }

    /// Lets go of a transfer whose sender stopped sending parts.
    fn let_go_of_stale_parts(&self) {
        let mut parts = self.parts.lock();
        if parts.as_ref().is_some_and(|a| a.at.elapsed() > PARTS_STALE_AFTER) {
            *parts = None;
        }
    }
}

fn bad_request(err: std::io::Error) -> Answer {
    Box::pin(std::future::ready(Err((status::BAD_REQUEST, err.to_string()))))
}

fn stopped(stopped: Stopped) -> Refusal {
    (status::STOPPED, stopped.to_string())
}

fn encoded(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out);
    out
}

impl<M: Machine> Handler for GroupHandler<M> {
    fn handle(&self, kind: Kind, body: &[u8]) -> Answer {
        let group = self.group.clone();
        match kind {
            Kind::Append => {
                self.let_go_of_stale_parts();
                match codec::decode_append_request::<M>(body) {
                    Err(e) => bad_request(e),
                    Ok(request) => Box::pin(async move {
                        let response = group.handle_append(request).await.map_err(stopped)?;
                        Ok(encoded(|out| codec::encode_append_response(&response, out)))
                    }),
                }
            }
            Kind::Vote => match codec::decode_vote_request(body) {
                Err(e) => bad_request(e),
                Ok(request) => Box::pin(async move {
                    let response = group.handle_vote(request).await.map_err(stopped)?;
                    Ok(encoded(|out| codec::encode_vote_response(&response, out)))
                }),
            },
            Kind::Snapshot => match codec::decode_snapshot_request::<M>(body) {
                Err(e) => bad_request(e),
                Ok((vote, snapshot)) => Box::pin(async move {
                    let response = group.handle_snapshot(vote, snapshot).await.map_err(stopped)?;
                    Ok(encoded(|out| codec::encode_snapshot_response(&response, out)))
                }),
            },
            Kind::SnapshotPart => self.take_part(body),
            // Submitted here, as the reader takes the request (it calls `handle` in the order
            // requests arrive): commands one node forwards one after another are appended in
            // that order, however many are in flight.
            Kind::Call => bad_request(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a call to a service sent to a Raft group",
            )),
            Kind::Propose => match M::decode_command(body) {
                Err(e) => bad_request(e),
                Ok(command) => {
                    let submitted = group.submit(command);
                    Box::pin(async move {
                        let outcome = match submitted {
                            Ok(wait) => wait.await,
                            Err(e) => Err(e),
                        };
                        let answer = match outcome {
                            Ok((index, output)) => {
                                let mut receipt = Vec::new();
                                M::receipt(&output, &mut receipt);
                                Forwarded::Committed { index, receipt }
                            }
                            Err(crate::ProposeError::NotLeader { leader }) => Forwarded::NotLeader(leader),
                            Err(crate::ProposeError::Stopped(s)) => return Err(stopped(s)),
                        };
                        Ok(encoded(|out| answer.encode(out)))
                    })
                }
            },
        }
    }
}

/// The work of answering a call to a [`Service`]: the answer's body, or why the call is refused.
pub type ServiceAnswer = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Something a node serves its peers besides Raft groups, under an id of its own in the same
/// space as the groups' ids ([`TcpNode::serve`](super::TcpNode::serve)); its peers reach it with
/// [`TcpNode::call`](super::TcpNode::call). It sees bytes: what they mean is its own.
pub trait Service: Send + Sync + 'static {
    /// Starts answering a call whose body is `body`. Called in the order calls arrive on a
    /// connection, before the next frame is read: work started here keeps that order.
    fn call(&self, body: &[u8]) -> ServiceAnswer;
}

/// A [`Service`] as the endpoint sees it.
pub(super) struct ServiceHandler(pub(super) Arc<dyn Service>);

impl Handler for ServiceHandler {
    fn handle(&self, kind: Kind, body: &[u8]) -> Answer {
        if kind != Kind::Call {
            return bad_request(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a {kind:?} request sent to a service, which answers calls only"),
            ));
        }
        let answer = self.0.call(body);
        Box::pin(async move { answer.await.map_err(|why| (status::REFUSED, why)) })
    }
}

/// What a member answered to a command forwarded to it ([`TcpTransport::propose`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// It led the group, and the command is committed.
    Committed {
        /// The command's log index.
        index: u64,
        /// What [`Machine::receipt`](crate::Machine::receipt) made of its output (empty when the
        /// machine makes none).
        receipt: Vec<u8>,
    },
    /// It does not lead the group; this is the leader it knows of, if any.
    NotLeader(Option<u64>),
}

impl Forwarded {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Forwarded::Committed { index, receipt } if receipt.is_empty() => {
                out.push(0);
                out.extend_from_slice(&index.to_be_bytes());
            }
            Forwarded::Committed { index, receipt } => {
                out.push(3);
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(receipt);
            }
            Forwarded::NotLeader(None) => out.push(1),
            Forwarded::NotLeader(Some(leader)) => {
                out.push(2);
                out.extend_from_slice(&leader.to_be_bytes());
            }
        }
    }

    fn decode(bytes: &[u8]) -> std::io::Result<Forwarded> {
        let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an answer to a forwarded command");
        let u64_after_tag = || -> std::io::Result<u64> {
            let b: [u8; 8] = bytes.get(1..).and_then(|b| b.try_into().ok()).ok_or_else(invalid)?;
            Ok(u64::from_be_bytes(b))
        };
        match bytes.first() {
            Some(0) => Ok(Forwarded::Committed { index: u64_after_tag()?, receipt: Vec::new() }),
            Some(3) if bytes.len() > 9 => {
                let index = u64::from_be_bytes(bytes[1..9].try_into().map_err(|_| invalid())?);
                Ok(Forwarded::Committed { index, receipt: bytes[9..].to_vec() })
            }
            Some(1) if bytes.len() == 1 => Ok(Forwarded::NotLeader(None)),
            Some(2) => Ok(Forwarded::NotLeader(Some(u64_after_tag()?))),
            _ => Err(invalid()),
        }
    }
}

/// One group's [`Transport`] over a [`TcpNode`](super::TcpNode): its requests go, framed with
/// the group's id, on the endpoint's connection to each peer.
///
/// Failures: a peer that cannot be dialed or authenticated, a connection that breaks, a peer
/// without the group or whose group stopped are [`RpcError::Unreachable`]; an answer that does
/// not decode, a request the peer could not decode or was too busy for, and a request over the
/// frame limit are [`RpcError::Network`]; no answer within the RPC's timeout is
/// [`RpcError::Timeout`].
pub struct TcpTransport<M> {
    node: Arc<Node>,
    group: u64,
    _machine: PhantomData<fn() -> M>,
}

impl<M> Clone for TcpTransport<M> {
    fn clone(&self) -> Self {
        TcpTransport { node: Arc::clone(&self.node), group: self.group, _machine: PhantomData }
    }
}

impl<M: Machine> TcpTransport<M> {
    pub(super) fn new(node: Arc<Node>, group: u64) -> Self {
        TcpTransport { node, group, _machine: PhantomData }
    }

    /// The group id this transport frames its requests with.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// Sends `request`, a request frame of `kind`, to `target`; returns the answer's body,
    /// decoded by `decode`.
    async fn exchange<R>(
        &self,
        target: &Peer,
        kind: Kind,
        request: Vec<u8>,
        decode: impl FnOnce(&[u8]) -> std::io::Result<R>,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let response = self.node.call(target, request, timeout).await?;
        self.decode_answer(target.id, kind, response, decode)
    }

    /// The body of `peer`'s answer to a request of `kind`, decoded by `decode`.
    fn decode_answer<R>(
        &self,
        peer: u64,
        kind: Kind,
        response: super::conn::Response,
        decode: impl FnOnce(&[u8]) -> std::io::Result<R>,
    ) -> Result<R, RpcError> {
        let body = frame::response_body(&response.frame);
        let group = self.group;
        match response.status {
            status::OK => decode(body).map_err(|e| RpcError::Network {
                reason: format!("node {peer} answered group {group}'s {kind:?} with bytes that do not decode: {e}"),
            }),
            status::NO_GROUP | status::STOPPED => {
                Err(RpcError::Unreachable { reason: format!("node {peer}: {}", String::from_utf8_lossy(body)) })
            }
            other => Err(RpcError::Network {
                reason: format!(
                    "node {peer} refused group {group}'s {kind:?} (status {other}): {}",
                    String::from_utf8_lossy(body)
                ),
            }),
        }
    }
}

impl<M: Machine> TcpTransport<M> {
    /// Hands `command` to the group's member on `target` (the leader, as this member believes)
    /// to propose; answers once it is committed there, or with the leader that member knows.
    /// A member that does not lead the group forwards a host's proposal this way. On a timeout
    /// the command may or may not have been committed.
    pub async fn propose(&self, target: &Peer, command: &M::Command, timeout: Duration) -> Result<Forwarded, RpcError> {
        let frame = frame::request(self.group, Kind::Propose, |out| M::encode_command(command, out));
        self.exchange(target, Kind::Propose, frame, Forwarded::decode, timeout).await
    }
}

// Each request is encoded into its frame and dropped before the wait for the answer, so a large
// snapshot is not held twice.
impl<M: Machine> Transport<M> for TcpTransport<M> {
    async fn append(
        &self,
        target: &Peer,
        request: AppendRequest<M>,
        timeout: Duration,
    ) -> Result<AppendResponse, RpcError> {
        let frame = frame::request(self.group, Kind::Append, |out| codec::encode_append_request(&request, out));
        drop(request);
        self.exchange(target, Kind::Append, frame, codec::decode_append_response, timeout).await
    }

    async fn vote(&self, target: &Peer, request: VoteRequest, timeout: Duration) -> Result<VoteResponse, RpcError> {
        let frame = frame::request(self.group, Kind::Vote, |out| codec::encode_vote_request(&request, out));
        self.exchange(target, Kind::Vote, frame, codec::decode_vote_response, timeout).await
    }

    /// A snapshot request of at most [`SNAPSHOT_PART_BYTES`] goes in one frame; a larger one
    /// in parts ([`Kind::SnapshotPart`]), each answered within `timeout`, the last once the
    /// snapshot is installed.
    async fn snapshot(
        &self,
        target: &Peer,
        vote: Vote,
        snapshot: Snapshot<M>,
        timeout: Duration,
    ) -> Result<SnapshotResponse, RpcError> {
        let mut request = Vec::new();
        codec::encode_snapshot_request(&vote, &snapshot, &mut request);
        drop(snapshot);
        // Parts well within the frame limit (every node's, as they share a configuration).
        let part_bytes = SNAPSHOT_PART_BYTES.min(self.node.config.max_frame_bytes as usize / 2);
        if request.len() <= part_bytes {
            let frame = frame::request(self.group, Kind::Snapshot, |out| out.extend_from_slice(&request));
            drop(request);
            return self.exchange(target, Kind::Snapshot, frame, codec::decode_snapshot_response, timeout).await;
        }
        let transfer = fastrand::u64(..);
        let total = request.len() as u64;
        let mut offset = 0;
        for part in request.chunks(part_bytes) {
            let frame = frame::request(self.group, Kind::SnapshotPart, |out| {
                out.reserve(PART_HEADER_BYTES + part.len());
                out.extend_from_slice(&transfer.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&(offset as u64).to_be_bytes());
                out.extend_from_slice(part);
            });
            offset += part.len();
            if offset < request.len() {
                let nothing = |body: &[u8]| match body.is_empty() {
                    true => Ok(()),
                    false => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "an answer to a snapshot part")),
                };
                self.exchange(target, Kind::SnapshotPart, frame, nothing, timeout).await?;
            } else {
                return self
                    .exchange(target, Kind::SnapshotPart, frame, codec::decode_snapshot_response, timeout)
                    .await;
            }
        }
        Err(RpcError::Network { reason: "an empty snapshot request".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::Forwarded;

    #[test]
    fn answers_to_forwarded_commands_read_back_and_damage_is_refused() {
        let answers = [
            Forwarded::Committed { index: 7, receipt: Vec::new() },
            Forwarded::Committed { index: 1 << 40, receipt: vec![0, 1, 2] },
            Forwarded::NotLeader(None),
            Forwarded::NotLeader(Some(42)),
        ];
        for answer in answers {
            let mut bytes = Vec::new();
            answer.encode(&mut bytes);
            assert_eq!(Forwarded::decode(&bytes).expect("decode"), answer);
            for cut in 0..bytes.len().min(9) {
                assert!(Forwarded::decode(&bytes[..cut]).is_err(), "{answer:?} cut at {cut}");
            }
        }
        assert!(Forwarded::decode(&[9]).is_err());
        assert!(Forwarded::decode(&[1, 0]).is_err());
    }
}
