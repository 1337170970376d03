//! The command assembler: turns the frames of one channel into whole commands.
//!
//! A content-bearing method (basic.publish) is followed by one content header and as many body
//! frames as it takes to carry `body_size` bytes. Anything else arriving in between is an
//! UNEXPECTED_FRAME connection error, as the spec says (4.2.6).
//!
//! Invariant: at most `max_body` bytes are buffered per channel; a header declaring more is
//! refused before any body arrives.

use crate::frame::Frame;
use crate::method::{Method, CLASS_BASIC};
use crate::properties::PublishProperties;
use crate::reply::{ProtocolError, ReplyCode};
use bytes::{Bytes, BytesMut};

/// A whole command.
#[derive(Debug, Clone, PartialEq)]
pub enum Assembled {
    Method(Method),
    /// The properties the broker reads, decoded (every property was checked); the whole list
    /// is `raw_properties`.
    Content {
        method: Method,
        properties: PublishProperties,
        raw_properties: Bytes,
        body: Bytes,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    AwaitHeader(Method),
    AwaitBody {
        method: Method,
        properties: PublishProperties,
        raw_properties: Bytes,
        remaining: u64,
        parts: BodyParts,
    },
}

/// A body that arrived in one frame is kept as that frame's bytes; a longer one is gathered.
#[derive(Debug)]
enum BodyParts {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyParts {
    fn push(&mut self, payload: Bytes, total: u64) {
        *self = match std::mem::replace(self, BodyParts::Empty) {
            BodyParts::Empty => BodyParts::One(payload),
            BodyParts::One(first) => {
                // Grow with what arrives rather than reserving the declared size up front: a
                // header may declare the maximum and send a byte, on every channel at once.
                let mut all = BytesMut::with_capacity((total as usize).min(BODY_RESERVE_MAX_BYTES));
                all.extend_from_slice(&first);
                all.extend_from_slice(&payload);
                BodyParts::Many(all)
            }
            BodyParts::Many(mut all) => {
                all.extend_from_slice(&payload);
                BodyParts::Many(all)
            }
        }
    }

    fn finish(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) => b,
            BodyParts::Many(all) => all.freeze(),
        }
    }
}

/// At most this much is reserved ahead for a body that spans several frames.
const BODY_RESERVE_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct ContentAssembler {
    state: State,
}

fn unexpected(detail: &str) -> ProtocolError {
    ProtocolError::new(ReplyCode::UnexpectedFrame, detail)
}

impl ContentAssembler {
    /// True while a content-bearing method waits for its header or bodies.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Forgets a half-assembled command (used when the channel closes).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Feeds one frame of this channel. `max_body` bounds the declared body size: over it the
    /// result is a channel error 406, as RabbitMQ reports an oversized message.
    pub fn push(&mut self, frame: Frame, max_body: u64) -> Result<Option<Assembled>, ProtocolError> {
        if let (State::AwaitBody { .. }, Frame::Body { payload, .. }) = (&self.state, &frame) {
            // The common case, handled in place: the pending command is moved once, when whole.
            let payload = payload.clone();
            return self.push_body(payload);
        }
        match (std::mem::take(&mut self.state), frame) {
            (State::Idle, Frame::Method { method, .. }) => {
                if method.has_content() {
                    self.state = State::AwaitHeader(method);
                    Ok(None)
                } else {
                    Ok(Some(Assembled::Method(method)))
                }
            }
            (State::Idle, _) => Err(unexpected("expected method frame, got non method frame instead")),
            (State::AwaitHeader(method), Frame::Header { class_id, body_size, properties: raw, .. }) => {
                let ids = method.ids();
                if class_id != CLASS_BASIC {
                    return Err(unexpected("expected content header for class 60, got one for another class").on(ids));
                }
                if body_size > max_body {
                    return Err(ProtocolError::new(
                        ReplyCode::PreconditionFailed,
                        format_args!("message size {body_size} is larger than configured max size {max_body}"),
                    )
                    .on(ids));
                }
                let properties = PublishProperties::decode(&raw).map_err(|e| e.on(ids))?;
                if body_size == 0 {
                    return Ok(Some(Assembled::Content {
                        method,
                        properties,
                        raw_properties: raw,
                        body: Bytes::new(),
                    }));
                }
                self.state = State::AwaitBody {
                    method,
                    properties,
                    raw_properties: raw,
                    remaining: body_size,
                    parts: BodyParts::Empty,
                };
                Ok(None)
            }
            (State::AwaitHeader(_), _) => {
                Err(unexpected("expected content header for class 60, got non content header frame instead"))
            }
            (State::AwaitBody { .. }, _) => {
                Err(unexpected("expected content body, got non content body frame instead"))
            }
        }
    }
}

impl ContentAssembler {
    fn push_body(&mut self, payload: Bytes) -> Result<Option<Assembled>, ProtocolError> {
        let State::AwaitBody { method, remaining, parts, .. } = &mut self.state else {
            return Err(unexpected("expected content body, got non content body frame instead"));
        };
        let len = payload.len() as u64;
        if len > *remaining {
            let e = ProtocolError::frame("content body is longer than the size its header declared").on(method.ids());
            self.state = State::Idle;
            return Err(e);
        }
        let total = match &*parts {
            BodyParts::Many(all) => all.len() as u64 + *remaining,
            BodyParts::One(b) => b.len() as u64 + *remaining,
            BodyParts::Empty => *remaining,
        };
        parts.push(payload, total);
        *remaining -= len;
        if *remaining > 0 {
            return Ok(None);
        }
        match std::mem::take(&mut self.state) {
            State::AwaitBody { method, properties, raw_properties, parts, .. } => {
                Ok(Some(Assembled::Content { method, properties, raw_properties, body: parts.finish() }))
            }
            _ => Err(unexpected("expected content body, got non content body frame instead")),
        }
    }
}

/// What a connection hands to the broker: a frame for its channel's assembler, or a whole
/// content-bearing command assembled ahead ([`assemble_ahead`]).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Frame(Frame),
    /// Always an [`Assembled::Content`].
    Content {
        channel: u16,
        content: Assembled,
    },
}

/// Assembles ahead, where the frames were read (outside the broker's lock), each
/// content-bearing command whose frames are all here, in a row and well formed: a method with
/// content on a channel other than 0, its content header of class 60 declaring at most
/// `max_body` bytes with properties that decode, and the whole body in no more than one frame.
/// Every other frame is passed on as it is, for the channel's own assembler to judge, so errors
/// are found and worded in one place.
///
/// A channel given [`Input::Content`] treats it as the frames it was made of: when its
/// assembler is idle, it is the command that assembler would have made of them; otherwise the
/// method frame alone tells what happens (it is an error there, and the rest is dropped).
pub fn assemble_ahead(frames: impl IntoIterator<Item = Frame>, max_body: u64, out: &mut Vec<Input>) {
    let mut frames = frames.into_iter().peekable();
    while let Some(frame) = frames.next() {
        let Frame::Method { channel, method } = frame else {
            out.push(Input::Frame(frame));
            continue;
        };
        if channel == 0 || !method.has_content() {
            out.push(Input::Frame(Frame::Method { channel, method }));
            continue;
        }
        // Its header, when it comes next, is for it and is one the assembler would take.
        let header = frames.next_if(|f| {
            matches!(f, Frame::Header { channel: c, class_id: CLASS_BASIC, body_size, .. }
                if *c == channel && *body_size <= max_body)
        });
        let Some(Frame::Header { body_size, properties: raw, .. }) = header else {
            out.push(Input::Frame(Frame::Method { channel, method }));
            continue;
        };
        let properties = match PublishProperties::decode(&raw) {
            Ok(p) => p,
            Err(_) => {
                out.push(Input::Frame(Frame::Method { channel, method }));
                out.push(Input::Frame(Frame::Header { channel, class_id: CLASS_BASIC, body_size, properties: raw }));
                continue;
            }
        };
        let body = if body_size == 0 {
            Bytes::new()
        } else {
            let next = frames.next_if(|f| {
                matches!(f, Frame::Body { channel: c, payload } if *c == channel && payload.len() as u64 == body_size)
            });
            let Some(Frame::Body { payload, .. }) = next else {
                // The body is elsewhere or in several frames: the frames go on as they came.
                out.push(Input::Frame(Frame::Method { channel, method }));
                out.push(Input::Frame(Frame::Header { channel, class_id: CLASS_BASIC, body_size, properties: raw }));
                continue;
            };
            payload
        };
        out.push(Input::Content {
            channel,
            content: Assembled::Content { method, properties, raw_properties: raw, body },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShortStr;

    fn publish() -> Frame {
        publish_on(1)
    }
    fn publish_on(channel: u16) -> Frame {
        Frame::Method {
            channel,
            method: Method::BasicPublish {
                exchange: ShortStr::from(""),
                routing_key: ShortStr::from("q"),
                mandatory: false,
                immediate: false,
            },
        }
    }
    fn header(size: u64) -> Frame {
        Frame::Header { channel: 1, class_id: 60, body_size: size, properties: Bytes::from_static(&[0, 0]) }
    }
    fn body(b: &'static [u8]) -> Frame {
        Frame::Body { channel: 1, payload: Bytes::from_static(b) }
    }

    /// What a connection's channels make of what it hands over, as the broker does: one
    /// assembler per channel, content assembled ahead taken as is by an idle assembler and as
    /// its method frame otherwise; everything stops at the first error (it closes the channel
    /// or the connection, and what follows is dropped).
    fn channels_make(inputs: Vec<Input>, max_body: u64) -> Vec<Result<Assembled, ReplyCode>> {
        let mut assemblers: std::collections::HashMap<u16, ContentAssembler> = Default::default();
        let mut made = Vec::new();
        for input in inputs {
            let (channel, result) = match input {
                Input::Frame(f) => {
                    let channel = f.channel();
                    (channel, assemblers.entry(channel).or_default().push(f, max_body))
                }
                Input::Content { channel, content } => {
                    let a = assemblers.entry(channel).or_default();
                    if a.in_progress() {
                        let Assembled::Content { method, .. } = content else { panic!("not content") };
                        (channel, a.push(Frame::Method { channel, method }, max_body))
                    } else {
                        (channel, Ok(Some(content)))
                    }
                }
            };
            let _ = channel;
            match result {
                Ok(Some(a)) => made.push(Ok(a)),
                Ok(None) => {}
                Err(e) => {
                    made.push(Err(e.code));
                    break;
                }
            }
        }
        made
    }

    fn frame_strategy() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        let channel = 0u16..3;
        prop_oneof![
            4 => channel.clone().prop_map(publish_on),
            1 => channel.clone().prop_map(|channel| Frame::Method { channel, method: Method::BasicQos {
                prefetch_size: 0, prefetch_count: 1, global: false } }),
            4 => (channel.clone(), prop_oneof![Just(60u16), Just(50u16)], 0u64..6, prop_oneof![
                    3 => Just(Bytes::from_static(&[0, 0])),
                    1 => Just(Bytes::from_static(&[0x10, 0, 2])),
                    1 => Just(Bytes::from_static(&[0x80])),
                ])
                .prop_map(|(channel, class_id, body_size, properties)| Frame::Header { channel, class_id, body_size, properties }),
            4 => (channel, 0usize..6).prop_map(|(channel, n)| Frame::Body { channel, payload: Bytes::from(vec![7u8; n]) }),
            1 => Just(Frame::Heartbeat),
        ]
    }

    /// Mostly publishes whose frames come in a row (well formed or nearly), among stray frames.
    fn frames_strategy() -> impl proptest::strategy::Strategy<Value = Vec<Frame>> {
        use proptest::prelude::*;
        let publish_run = (1u16..3, 0u64..5, 0usize..6, proptest::bool::weighted(0.8)).prop_map(
            |(channel, body_size, body_len, with_body)| {
                let mut run = vec![
                    publish_on(channel),
                    Frame::Header { channel, class_id: 60, body_size, properties: Bytes::from_static(&[0, 0]) },
                ];
                if with_body {
                    run.push(Frame::Body { channel, payload: Bytes::from(vec![1u8; body_len]) });
                }
                run
            },
        );
        let piece = prop_oneof![2 => publish_run, 1 => frame_strategy().prop_map(|f| vec![f])];
        proptest::collection::vec(piece, 0..10).prop_map(|pieces| pieces.into_iter().flatten().collect())
    }

    proptest::proptest! {
        /// Assembling ahead never changes what the channels make of a connection's frames:
        /// the same commands, the same first error.
        #[test]
        fn assembling_ahead_changes_nothing(
            frames in frames_strategy(),
            split in 0usize..30,
            max_body in 0u64..6,
        ) {
            let raw: Vec<Input> = frames.iter().cloned().map(Input::Frame).collect();
            // Frames arrive in two reads: what is begun at the end of one is passed on as frames.
            let split = split.min(frames.len());
            let mut ahead = Vec::new();
            assemble_ahead(frames[..split].iter().cloned(), max_body, &mut ahead);
            assemble_ahead(frames[split..].iter().cloned(), max_body, &mut ahead);
            proptest::prop_assert_eq!(channels_make(ahead, max_body), channels_make(raw, max_body));
        }
    }

    #[test]
    fn whole_publishes_are_assembled_ahead_and_the_rest_passed_on() {
        let mut out = Vec::new();
        let frames = vec![publish(), header(2), body(b"hi"), publish(), header(0), publish(), header(5), body(b"he")];
        assemble_ahead(frames, 100, &mut out);
        let kinds: Vec<&str> = out
            .iter()
            .map(|i| match i {
                Input::Content { .. } => "content",
                Input::Frame(Frame::Method { .. }) => "method",
                Input::Frame(Frame::Header { .. }) => "header",
                Input::Frame(_) => "body",
            })
            .collect();
        // A body in several frames is left to the channel's assembler.
        assert_eq!(kinds, ["content", "content", "method", "header", "body"]);
    }

    #[test]
    fn assembles_multi_frame_body() {
        let mut a = ContentAssembler::default();
        assert_eq!(a.push(publish(), 100).expect("ok"), None);
        assert_eq!(a.push(header(5), 100).expect("ok"), None);
        assert_eq!(a.push(body(b"he"), 100).expect("ok"), None);
        match a.push(body(b"llo"), 100).expect("ok") {
            Some(Assembled::Content { body, .. }) => assert_eq!(&body[..], b"hello"),
            other => panic!("{other:?}"),
        }
        assert!(!a.in_progress());
    }

    #[test]
    fn empty_body_completes_at_header() {
        let mut a = ContentAssembler::default();
        a.push(publish(), 100).expect("ok");
        assert!(matches!(a.push(header(0), 100).expect("ok"), Some(Assembled::Content { .. })));
    }

    #[test]
    fn out_of_order_frames_are_unexpected() {
        let mut a = ContentAssembler::default();
        assert_eq!(a.push(body(b"x"), 100).expect_err("body first").code, ReplyCode::UnexpectedFrame);
        let mut a = ContentAssembler::default();
        a.push(publish(), 100).expect("ok");
        assert_eq!(a.push(publish(), 100).expect_err("method instead of header").code, ReplyCode::UnexpectedFrame);
    }

    #[test]
    fn body_longer_than_declared_is_a_frame_error() {
        let mut a = ContentAssembler::default();
        a.push(publish(), 100).expect("ok");
        a.push(header(1), 100).expect("ok");
        assert_eq!(a.push(body(b"xy"), 100).expect_err("too long").code, ReplyCode::FrameError);
    }

    #[test]
    fn size_limit_at_and_past() {
        let mut a = ContentAssembler::default();
        a.push(publish(), 3).expect("ok");
        assert_eq!(a.push(header(3), 3).expect("at the limit"), None);
        let mut a = ContentAssembler::default();
        a.push(publish(), 3).expect("ok");
        assert_eq!(a.push(header(4), 3).expect_err("past the limit").code, ReplyCode::PreconditionFailed);
    }
}
