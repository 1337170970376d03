//! Frames on a node-to-node connection after the handshake, and reading them within limits.
//!
//! Every frame is a `u32` length (of what follows it, big-endian) and then a type byte:
//!
//! | type | after the type byte |
//! |---|---|
//! | 1 request | group id `u64`, request id `u64`, kind `u8` (1 append, 2 vote, 3 snapshot, 4 propose, 5 call, 6 snapshot part), the request ([`codec`](crate::codec)) |
//! | 2 response | request id `u64`, status `u8` (0 ok, 1 no such group, 2 group stopped, 3 bad request, 4 busy, 5 too large), then the answer if ok, else a UTF-8 reason |
//! | 3 ping | nothing: sent when the connection has been quiet, so the peer knows it is alive |
//!
//! Either side sends requests; request ids are the sender's own, and a response carries the id
//! of the request it answers. Invariant: a length of zero or above the endpoint's maximum is
//! refused before any of the frame is read, and a frame's bytes are only held as they arrive,
//! so a hostile length costs nothing.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Frame types.
pub(crate) const REQUEST: u8 = 1;
pub(crate) const RESPONSE: u8 = 2;
pub(crate) const PING: u8 = 3;

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;
/// Where a request's body starts in a frame read by [`read_frame`] (without its length): type,
/// group, request id, kind.
const REQUEST_BODY_AT: usize = 1 + 8 + 8 + 1;
/// Where a response's body starts: type, request id, status.
const RESPONSE_BODY_AT: usize = 1 + 8 + 1;
/// Where the request id sits in an outgoing request frame (after the length and the type).
const OUTGOING_REQUEST_ID_AT: usize = LEN_BYTES + 1 + 8;

/// Frames are read in pieces of at most this many bytes, so that memory grows only as data
/// arrives (a peer that announces a large frame and sends little of it costs little).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An append-entries request.
    Append = 1,
    /// A vote request.
    Vote = 2,
    /// A whole snapshot.
    Snapshot = 3,
    /// A command for the group's leader, forwarded by a member that does not lead.
    Propose = 4,
    /// A call to a service the node serves under the request's id ([`super::Service`]).
    Call = 5,
    /// A piece of a snapshot too large for one frame: transfer id `u64`, total length `u64`,
    /// offset `u64`, then the bytes; the pieces, in order, make a [`Kind::Snapshot`] request's
    /// body, which the last one installs (its answer is the snapshot's).
    SnapshotPart = 6,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Append),
            2 => Some(Kind::Vote),
            3 => Some(Kind::Snapshot),
            4 => Some(Kind::Propose),
            5 => Some(Kind::Call),
            6 => Some(Kind::SnapshotPart),
            _ => None,
        }
    }
}

/// Response statuses.
pub(crate) mod status {
    /// The body is the answer.
    pub(crate) const OK: u8 = 0;
    /// No group with the request's id is registered on the node.
    pub(crate) const NO_GROUP: u8 = 1;
    /// The group has stopped on the node.
    pub(crate) const STOPPED: u8 = 2;
    /// The node could not decode the request (or does not know its kind).
    pub(crate) const BAD_REQUEST: u8 = 3;
    /// The node is handling as many of this connection's requests as it allows.
    pub(crate) const BUSY: u8 = 4;
    /// The answer would exceed the node's frame limit.
    pub(crate) const TOO_LARGE: u8 = 5;
    /// A service refused the call; the body says why.
    pub(crate) const REFUSED: u8 = 6;
}

/// A frame's header, as read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// A request for `group`; its body follows the header.
    Request {
        /// The group id.
        group: u64,
        /// The sender's request id.
        id: u64,
        /// What it asks, `None` if the kind is unknown (answered as a bad request).
        kind: Option<Kind>,
    },
    /// The answer to our request `id`.
    Response {
        /// Our request id.
        id: u64,
        /// One of [`status`].
        status: u8,
    },
    /// A keepalive.
    Ping,
}

fn u64_at(frame: &[u8], at: usize) -> Option<u64> {
    let bytes = frame.get(at..at + 8)?;
    let mut out = [0; 8];
    out.copy_from_slice(bytes);
    Some(u64::from_be_bytes(out))
}

/// Parses the header of a frame read by [`read_frame`]; `None` if it is malformed, which closes
/// the connection.
pub(crate) fn parse(frame: &[u8]) -> Option<Header> {
    match *frame.first()? {
        REQUEST if frame.len() >= REQUEST_BODY_AT => {
            Some(Header::Request { group: u64_at(frame, 1)?, id: u64_at(frame, 9)?, kind: Kind::from_u8(frame[17]) })
        }
        RESPONSE if frame.len() >= RESPONSE_BODY_AT => {
            Some(Header::Response { id: u64_at(frame, 1)?, status: frame[9] })
        }
        PING if frame.len() == 1 => Some(Header::Ping),
        _ => None,
    }
}

/// The body of a request frame (whose header [`parse`] accepted).
pub(crate) fn request_body(frame: &[u8]) -> &[u8] {
    frame.get(REQUEST_BODY_AT..).unwrap_or_default()
}

/// The body of a response frame (whose header [`parse`] accepted).
pub(crate) fn response_body(frame: &[u8]) -> &[u8] {
    frame.get(RESPONSE_BODY_AT..).unwrap_or_default()
}

/// An outgoing request frame for `group`, its body written by `body`; the request id is set
/// later with [`set_request_id`], once the connection it goes on is known.
pub(crate) fn request(group: u64, kind: Kind, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0; LEN_BYTES]);
    frame.push(REQUEST);
    frame.extend_from_slice(&group.to_be_bytes());
    frame.extend_from_slice(&0u64.to_be_bytes());
    frame.push(kind as u8);
    body(&mut frame);
    seal(&mut frame);
    frame
}

/// Sets the request id of an outgoing request frame.
pub(crate) fn set_request_id(frame: &mut [u8], id: u64) {
    if let Some(slot) = frame.get_mut(OUTGOING_REQUEST_ID_AT..OUTGOING_REQUEST_ID_AT + 8) {
        slot.copy_from_slice(&id.to_be_bytes());
    }
}

/// An outgoing response frame answering request `id`.
pub(crate) fn response(id: u64, status: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(LEN_BYTES + RESPONSE_BODY_AT + body.len());
    frame.extend_from_slice(&[0; LEN_BYTES]);
    frame.push(RESPONSE);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.push(status);
    frame.extend_from_slice(body);
    seal(&mut frame);
    frame
}

/// An outgoing ping frame.
pub(crate) fn ping() -> Vec<u8> {
    let mut frame = vec![0; LEN_BYTES];
    frame.push(PING);
    seal(&mut frame);
    frame
}

/// Writes the length prefix of an outgoing frame. A frame too long for the `u32` gets the
/// largest length, which every receiver refuses; [`outgoing_len`] lets senders check first.
fn seal(frame: &mut [u8]) {
    let len = u32::try_from(frame.len() - LEN_BYTES).unwrap_or(u32::MAX);
    frame[..LEN_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// The length an outgoing frame announces (what a receiver checks against its maximum).
pub(crate) fn outgoing_len(frame: &[u8]) -> usize {
    frame.len().saturating_sub(LEN_BYTES)
}

/// Why no frame was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// Nothing arrived for the idle limit.
    Idle,
    /// The announced length is zero or above the maximum.
    TooLarge(u32),
    /// The connection failed, or closed inside a frame.
    Io(io::Error),
}

/// Reads into `buf` completely, failing if nothing arrives for `idle`. With `at_boundary`, an
/// end of stream before the first byte is a clean close.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    idle: Duration,
    at_boundary: bool,
) -> Result<(), ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = match tokio::time::timeout(idle, reader.read(&mut buf[filled..])).await {
            Err(_) => return Err(ReadError::Idle),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(if at_boundary && filled == 0 {
                ReadError::Closed
            } else {
                ReadError::Io(io::ErrorKind::UnexpectedEof.into())
            });
        }
        filled += n;
    }
    Ok(())
}

/// Reads one frame (without its length prefix) of at most `max` bytes, failing if the peer
/// sends nothing for `idle`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
    idle: Duration,
) -> Result<Vec<u8>, ReadError> {
    let mut len = [0; LEN_BYTES];
    read_full(reader, &mut len, idle, true).await?;
    let len = u32::from_be_bytes(len);
    if len == 0 || len > max {
        return Err(ReadError::TooLarge(len));
    }
    let len = usize::try_from(len).map_err(|_| ReadError::TooLarge(len))?;
    let mut frame = Vec::new();
    while frame.len() < len {
        let start = frame.len();
        let piece = (len - start).min(READ_CHUNK_BYTES);
        frame.resize(start + piece, 0);
        read_full(reader, &mut frame[start..], idle, false).await?;
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    #[test]
    fn requests_and_responses_parse_back() {
        let mut out = request(7, Kind::Vote, |b| b.extend_from_slice(b"body"));
        set_request_id(&mut out, 42);
        let frame = &out[LEN_BYTES..];
        assert_eq!(outgoing_len(&out), frame.len());
        assert_eq!(parse(frame), Some(Header::Request { group: 7, id: 42, kind: Some(Kind::Vote) }));
        assert_eq!(request_body(frame), b"body");

        let out = response(42, status::STOPPED, b"why");
        let frame = &out[LEN_BYTES..];
        assert_eq!(parse(frame), Some(Header::Response { id: 42, status: status::STOPPED }));
        assert_eq!(response_body(frame), b"why");

        assert_eq!(parse(&ping()[LEN_BYTES..]), Some(Header::Ping));
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[9]), None);
        assert_eq!(parse(&[REQUEST, 0, 0]), None);
        assert_eq!(parse(&[RESPONSE; 9]), None);
        assert_eq!(parse(&[PING, 0]), None);
        let mut unknown_kind = request(1, Kind::Append, |_| {});
        unknown_kind[LEN_BYTES + 17] = 9;
        assert!(matches!(parse(&unknown_kind[LEN_BYTES..]), Some(Header::Request { kind: None, .. })));
    }

    #[tokio::test]
    async fn a_frame_at_the_limit_is_read_and_one_past_it_refused() {
        const MAX: u32 = 100_000;
        let at_limit = response(1, status::OK, &vec![5; MAX as usize - RESPONSE_BODY_AT]);
        let mut reader: &[u8] = &at_limit;
        let frame = read_frame(&mut reader, MAX, IDLE).await.expect("at the limit");
        assert_eq!(frame.len(), MAX as usize);

        let past = response(1, status::OK, &vec![5; MAX as usize + 1 - RESPONSE_BODY_AT]);
        let mut reader: &[u8] = &past;
        assert!(matches!(read_frame(&mut reader, MAX, IDLE).await, Err(ReadError::TooLarge(len)) if len == MAX + 1));

        let mut reader: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut reader, MAX, IDLE).await, Err(ReadError::TooLarge(0))));
    }

    #[tokio::test]
    async fn end_of_stream_between_frames_is_a_close_and_inside_one_an_error() {
        let mut reader: &[u8] = &[];
        assert!(matches!(read_frame(&mut reader, 1024, IDLE).await, Err(ReadError::Closed)));
        let whole = ping();
        let mut reader: &[u8] = &whole[..2];
        assert!(matches!(read_frame(&mut reader, 1024, IDLE).await, Err(ReadError::Io(_))));
        // Announces 1000 bytes, sends 3.
        let mut reader: &[u8] = &[0, 0, 3, 232, 1, 2, 3];
        assert!(matches!(read_frame(&mut reader, 1024, IDLE).await, Err(ReadError::Io(_))));
    }

    #[tokio::test]
    async fn a_silent_peer_is_idle() {
        let (mut quiet, _keep_open) = tokio::io::duplex(64);
        let idle = Duration::from_millis(20);
        assert!(matches!(read_frame(&mut quiet, 1024, idle).await, Err(ReadError::Idle)));
    }
}
