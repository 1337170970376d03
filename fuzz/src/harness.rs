//! The fuzz harnesses: each takes arbitrary bytes and panics only when warren-amqp breaks one of
//! its promises (no panic on any input, errors of the right kind, re-encoding round trips).
//!
//! Shared, as this one file, by the cargo-fuzz targets in `fuzz/fuzz_targets/` and by the
//! deterministic smoke test `crates/warren-amqp/tests/fuzz_smoke.rs` (which includes it with
//! `#[path]`), so it may use only `bytes` and `warren_amqp`.

use bytes::{Bytes, BytesMut};
use warren_amqp::codec::Reader;
use warren_amqp::frame::{write_content, write_heartbeat, write_method, Frame, FrameParser, FRAME_OVERHEAD};
use warren_amqp::{Assembled, BasicProperties, ContentAssembler, FieldTable, FieldValue, Method, ReplyCode, ShortStr};

// ---------------------------------------------------------------------------------------------
// frame_decode
// ---------------------------------------------------------------------------------------------

/// The frame_max the first input byte selects: below 0x80 the usual 131072, otherwise a small
/// one (8 to 8136) so that the size limit is reached by short inputs too.
pub fn frame_max_for(selector: u8) -> u32 {
    if selector < 0x80 {
        131_072
    } else {
        FRAME_OVERHEAD as u32 + u32::from(selector & 0x7F) * 64
    }
}

/// Input: one byte choosing frame_max ([`frame_max_for`]), then a byte stream. Frames are taken
/// off it until the parser wants more bytes or reports an error. Every frame must re-encode to
/// bytes that decode to the same frame.
pub fn frame_decode(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else { return };
    let frame_max = frame_max_for(selector);
    let parser = FrameParser::new(frame_max);
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        match parser.parse(&mut buf) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                assert!(used >= FRAME_OVERHEAD, "a frame of {used} bytes is shorter than the frame overhead");
                assert!(used as u64 <= u64::from(frame_max), "a frame of {used} bytes passed frame_max {frame_max}");
                check_frame(&frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "'need more bytes' consumed bytes");
                if before >= 7 {
                    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
                    assert!(before < size + FRAME_OVERHEAD, "a complete frame of {before} bytes was left unparsed");
                }
                return;
            }
            Err(e) => {
                assert!(e.code.is_hard(), "frame decoding failed with a channel error: {e}");
                return;
            }
        }
    }
}

/// `method_decode`: a method frame's payload (class id, method id, arguments) straight into
/// `Method::decode`. It must not panic; a failure must be a connection error; a method that
/// decodes must re-encode, re-decode to the same method and re-encode to the same bytes.
pub fn method_decode(data: &[u8]) {
    match Method::decode(Bytes::copy_from_slice(data)) {
        Ok(method) => check_frame(&Frame::Method { channel: 1, method }),
        Err(e) => assert!(e.code.is_hard(), "method decoding failed with a channel error: {e}"),
    }
}

/// Valid `method_decode` inputs: the payload of every seed method.
pub fn method_decode_seeds() -> Vec<Vec<u8>> {
    seed_methods()
        .iter()
        .map(|m| {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            out.to_vec()
        })
        .collect()
}

/// Equality that also holds for values holding NaN floats (whose `==` is false).
fn same<T: PartialEq + std::fmt::Debug>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

fn check_frame(frame: &Frame) {
    match frame {
        Frame::Method { channel, method } => {
            let mut first = BytesMut::new();
            write_method(&mut first, *channel, method);
            let mut again = first.clone();
            let reread = FrameParser::new(u32::MAX)
                .parse(&mut again)
                .unwrap_or_else(|e| panic!("warren cannot read back its encoding of {method:?}: {e}"))
                .unwrap_or_else(|| panic!("warren's encoding of {method:?} is incomplete"));
            assert!(again.is_empty(), "bytes left after re-reading {method:?}");
            let Frame::Method { channel: ch, method: m } = &reread else {
                panic!("{method:?} was re-read as {reread:?}")
            };
            assert_eq!(*ch, *channel);
            assert!(same(m, method), "{method:?} was re-read as {m:?}");
            let mut second = BytesMut::new();
            write_method(&mut second, *ch, m);
            assert_eq!(first, second, "re-encoding {method:?} is not stable");
        }
        Frame::Header { properties, .. } => {
            if let Ok(p) = BasicProperties::decode(properties.clone()) {
                check_properties(&p, properties.len());
            }
        }
        Frame::Body { .. } | Frame::Heartbeat => {}
    }
}

/// A decoded property list re-encodes to at most the bytes it was read from (trailing bytes are
/// ignored, nothing else changes size), and that encoding reads back to the same thing.
fn check_properties(p: &BasicProperties, read_from: usize) {
    let once = p.to_bytes();
    assert!(once.len() <= read_from, "{p:?} re-encodes to {} bytes, read from {read_from}", once.len());
    let back = BasicProperties::decode(once.clone()).unwrap_or_else(|e| panic!("cannot re-read {p:?}: {e}"));
    assert!(same(&back, p), "{p:?} was re-read as {back:?}");
    assert_eq!(back.to_bytes(), once, "re-encoding {p:?} is not stable");
}

// ---------------------------------------------------------------------------------------------
// field_table
// ---------------------------------------------------------------------------------------------

/// Input: bytes read as a field table (length-prefixed, as in a method or header). A table that
/// decodes re-encodes to as many bytes as it was read from, and that encoding decodes to the same
/// table and re-encodes to the same bytes. A table that does not decode is a syntax error.
pub fn field_table(data: &[u8]) {
    let mut r = Reader::new(Bytes::copy_from_slice(data));
    let t = match FieldTable::decode(&mut r) {
        Ok(t) => t,
        Err(e) => {
            assert_eq!(e.code, ReplyCode::SyntaxError, "{e}");
            return;
        }
    };
    let consumed = data.len() - r.remaining();
    let mut once = BytesMut::new();
    t.encode(&mut once);
    // Only a bool's octet (to 0/1) and the tag 'L' (to 'l') are normalised: both keep the size.
    assert_eq!(once.len(), consumed, "{t:?} re-encodes to another size");
    let mut r2 = Reader::new(once.clone().freeze());
    let back = FieldTable::decode(&mut r2).unwrap_or_else(|e| panic!("cannot re-read {t:?}: {e}"));
    assert_eq!(r2.remaining(), 0);
    assert!(same(&back, &t), "{t:?} was re-read as {back:?}");
    let mut twice = BytesMut::new();
    back.encode(&mut twice);
    assert_eq!(once, twice, "re-encoding {t:?} is not stable");
}

// ---------------------------------------------------------------------------------------------
// content_assembler
// ---------------------------------------------------------------------------------------------

/// Consumes the fuzz input a few bytes at a time.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8);
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        (b.len() == 8).then(|| u64::from_be_bytes(a))
    }
}

/// The methods the assembler input can name: the first four carry content.
fn method_for(selector: u8) -> Method {
    let s = ShortStr::from;
    match selector % 8 {
        0 => Method::BasicPublish { exchange: s("x"), routing_key: s("k"), mandatory: true, immediate: false },
        1 => Method::BasicDeliver {
            consumer_tag: s("c"),
            delivery_tag: 1,
            redelivered: false,
            exchange: s("x"),
            routing_key: s("k"),
        },
        2 => Method::BasicGetOk {
            delivery_tag: 2,
            redelivered: true,
            exchange: s(""),
            routing_key: s("q"),
            message_count: 0,
        },
        3 => Method::BasicReturn { reply_code: 312, reply_text: s("NO_ROUTE"), exchange: s("x"), routing_key: s("k") },
        4 => Method::BasicAck { delivery_tag: 3, multiple: false },
        5 => Method::BasicQos { prefetch_size: 0, prefetch_count: 10, global: false },
        6 => Method::TxSelect,
        _ => Method::ChannelFlow { active: true },
    }
}

/// Property lists the assembler input can name without spelling them out.
fn properties_for(selector: u8) -> Bytes {
    let mut headers = FieldTable::new();
    headers.insert("x-count", FieldValue::I32(7));
    headers.insert("x-list", FieldValue::Array(vec![FieldValue::from("a"), FieldValue::Void]));
    let p = match selector % 4 {
        0 => BasicProperties::default(),
        1 => BasicProperties { content_type: Some("text/plain".into()), delivery_mode: Some(2), ..Default::default() },
        2 => BasicProperties { headers: Some(headers), priority: Some(5), ..Default::default() },
        _ => BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(1),
            priority: Some(9),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("a".into()),
            cluster_id: Some("cl".into()),
        },
    };
    p.to_bytes()
}

/// One step of the assembler input.
#[derive(Debug)]
enum Step {
    Frame(Frame),
    Reset,
}

/// The assembler input language (all multi-byte numbers big-endian):
/// - `op % 8` in 0..=1: a method frame, the next byte choosing it ([`method_for`]);
/// - 2..=3: a content header; next byte `k`: if `k & 0x80` a u16 class-id follows (else 60);
///   if `k & 0x40` a u64 body size follows, else a u8 one; if `k & 0x20` a length byte and that
///   many raw property bytes follow, else the property list is [`properties_for`]`(k)`;
/// - 4..=6: a body frame, a length byte (mod 48) and the payload;
/// - 7: a heartbeat, or with `op & 0x08` a reset of the assembler.
fn next_step(input: &mut Input) -> Option<Step> {
    let op = input.u8()?;
    let channel = 1;
    Some(match op % 8 {
        0 | 1 => Step::Frame(Frame::Method { channel, method: method_for(input.u8()?) }),
        2 | 3 => {
            let k = input.u8()?;
            let class_id = if k & 0x80 != 0 { input.u16()? } else { 60 };
            let body_size = if k & 0x40 != 0 { input.u64()? } else { u64::from(input.u8()?) };
            let properties = if k & 0x20 != 0 {
                let len = input.u8()? as usize;
                Bytes::copy_from_slice(input.take(len))
            } else {
                properties_for(k)
            };
            Step::Frame(Frame::Header { channel, class_id, body_size, properties })
        }
        4..=6 => {
            let len = input.u8()? as usize % 48;
            Step::Frame(Frame::Body { channel, payload: Bytes::copy_from_slice(input.take(len)) })
        }
        _ if op & 0x08 != 0 => Step::Reset,
        _ => Step::Frame(Frame::Heartbeat),
    })
}

/// What the spec (4.2.6) says the assembler does, written plainly to compare against.
#[derive(Debug, Default)]
enum Model {
    #[default]
    Idle,
    AwaitHeader(Method),
    AwaitBody {
        method: Method,
        raw: Bytes,
        size: u64,
        body: Vec<u8>,
    },
}

#[derive(Debug)]
enum Expected {
    Pending,
    Method(Method),
    Content { method: Method, raw: Bytes, body: Vec<u8> },
    Error(ReplyCode),
}

impl Model {
    fn push(&mut self, frame: &Frame, max_body: u64) -> Expected {
        match (std::mem::take(self), frame) {
            (Model::Idle, Frame::Method { method, .. }) if method.has_content() => {
                *self = Model::AwaitHeader(method.clone());
                Expected::Pending
            }
            (Model::Idle, Frame::Method { method, .. }) => Expected::Method(method.clone()),
            (Model::AwaitHeader(method), Frame::Header { class_id, body_size, properties, .. }) => {
                if *class_id != 60 {
                    return Expected::Error(ReplyCode::UnexpectedFrame);
                }
                if *body_size > max_body {
                    return Expected::Error(ReplyCode::PreconditionFailed);
                }
                if let Err(e) = BasicProperties::decode(properties.clone()) {
                    return Expected::Error(e.code);
                }
                if *body_size == 0 {
                    return Expected::Content { method, raw: properties.clone(), body: Vec::new() };
                }
                *self = Model::AwaitBody { method, raw: properties.clone(), size: *body_size, body: Vec::new() };
                Expected::Pending
            }
            (Model::AwaitBody { method, raw, size, mut body }, Frame::Body { payload, .. }) => {
                if (body.len() + payload.len()) as u64 > size {
                    return Expected::Error(ReplyCode::FrameError);
                }
                body.extend_from_slice(payload);
                if body.len() as u64 == size {
                    Expected::Content { method, raw, body }
                } else {
                    *self = Model::AwaitBody { method, raw, size, body };
                    Expected::Pending
                }
            }
            // Anything else out of order: a method during content, a header or body without
            // the step before it, a heartbeat handed to the channel's assembler.
            _ => Expected::Error(ReplyCode::UnexpectedFrame),
        }
    }

    fn in_progress(&self) -> bool {
        !matches!(self, Model::Idle)
    }
}

/// Input: a byte giving max_body (0 to 255), then steps ([`next_step`]). The assembler must
/// agree with [`Model`] on every step: the same command, the same error code, the same state.
pub fn content_assembler(data: &[u8]) {
    let mut input = Input(data);
    let Some(max_body) = input.u8().map(u64::from) else { return };
    let mut asm = ContentAssembler::default();
    let mut model = Model::Idle;
    while let Some(step) = next_step(&mut input) {
        let frame = match step {
            Step::Reset => {
                asm.reset();
                model = Model::Idle;
                assert!(!asm.in_progress());
                continue;
            }
            Step::Frame(frame) => frame,
        };
        let want = model.push(&frame, max_body);
        let got = asm.push(frame.clone(), max_body);
        match (&got, &want) {
            (Ok(None), Expected::Pending) => {}
            (Ok(Some(Assembled::Method(m))), Expected::Method(w)) => assert_eq!(m, w),
            (
                Ok(Some(Assembled::Content { method, properties, raw_properties, body })),
                Expected::Content { method: wm, raw, body: wb },
            ) => {
                assert_eq!(method, wm);
                assert_eq!(raw_properties, raw);
                assert_eq!(&body[..], &wb[..]);
                assert!(body.len() as u64 <= max_body, "a body of {} bytes passed max_body {max_body}", body.len());
                let decoded = BasicProperties::decode(raw.clone()).expect("the model decoded these");
                let kept = warren_amqp::PublishProperties::from(&decoded);
                assert!(same(properties, &kept), "properties {properties:?} are not those of the raw list");
            }
            (Err(e), Expected::Error(code)) => assert_eq!(e.code, *code, "{e} after {frame:?}"),
            _ => panic!("after {frame:?} the assembler gave {got:?}, expected {want:?}"),
        }
        assert_eq!(asm.in_progress(), model.in_progress(), "state after {frame:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid inputs of each harness, for a fuzzer's starting corpus and the smoke test
// ---------------------------------------------------------------------------------------------

fn sample_table() -> FieldTable {
    let mut inner = FieldTable::new();
    inner.insert("count", FieldValue::I64(1));
    inner.insert("reason", FieldValue::from("rejected"));
    let mut t = FieldTable::new();
    for (k, v) in [
        ("t", FieldValue::Bool(true)),
        ("b", FieldValue::I8(-1)),
        ("B", FieldValue::U8(1)),
        ("s", FieldValue::I16(-2)),
        ("u", FieldValue::U16(2)),
        ("I", FieldValue::I32(-3)),
        ("i", FieldValue::U32(3)),
        ("l", FieldValue::I64(-4)),
        ("f", FieldValue::F32(0.5)),
        ("d", FieldValue::F64(0.25)),
        ("D", FieldValue::Decimal { scale: 1, value: 5 }),
        ("S", FieldValue::from("text")),
        ("A", FieldValue::Array(vec![FieldValue::Table(inner.clone()), FieldValue::Void])),
        ("T", FieldValue::Timestamp(6)),
        ("F", FieldValue::Table(inner)),
        ("V", FieldValue::Void),
        ("x", FieldValue::ByteArray(Bytes::from_static(b"\x00\x01"))),
    ] {
        t.insert(k, v);
    }
    t
}

fn seed_methods() -> Vec<Method> {
    let s = ShortStr::from;
    let mut args = FieldTable::new();
    args.insert("x-message-ttl", FieldValue::I32(1000));
    vec![
        Method::ConnectionStartOk {
            client_properties: sample_table(),
            mechanism: s("PLAIN"),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: s("en_US"),
        },
        Method::ConnectionTuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 60 },
        Method::ConnectionOpen { virtual_host: s("/") },
        Method::ConnectionClose { reply_code: 200, reply_text: s("bye"), class_id: 0, method_id: 0 },
        Method::ConnectionUpdateSecret { new_secret: Bytes::from_static(b"tok"), reason: s("r") },
        Method::ChannelOpen,
        Method::ChannelFlow { active: true },
        Method::ExchangeDeclare {
            exchange: s("x"),
            kind: s("topic"),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: args.clone(),
        },
        Method::ExchangeBind {
            destination: s("d"),
            source: s("s"),
            routing_key: s("k"),
            nowait: false,
            arguments: args.clone(),
        },
        Method::QueueDeclare {
            queue: s("q"),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: args.clone(),
        },
        Method::QueueBind {
            queue: s("q"),
            exchange: s("x"),
            routing_key: s("#"),
            nowait: false,
            arguments: sample_table(),
        },
        Method::QueueDelete { queue: s("q"), if_unused: true, if_empty: false, nowait: true },
        Method::BasicQos { prefetch_size: 0, prefetch_count: 10, global: false },
        Method::BasicConsume {
            queue: s("q"),
            consumer_tag: s("c"),
            no_local: false,
            no_ack: false,
            exclusive: true,
            nowait: false,
            arguments: args,
        },
        Method::BasicCancel { consumer_tag: s("c"), nowait: false },
        Method::BasicDeliver {
            consumer_tag: s("c"),
            delivery_tag: 1,
            redelivered: true,
            exchange: s("x"),
            routing_key: s("k"),
        },
        Method::BasicAck { delivery_tag: 1, multiple: true },
        Method::BasicNack { delivery_tag: 2, multiple: false, requeue: true },
        Method::ConfirmSelect { nowait: false },
        Method::TxCommit,
    ]
}

/// Valid `frame_decode` inputs: single method frames, a whole publish, a heartbeat, and a
/// stream of several frames, each after a frame_max selector byte.
pub fn frame_decode_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let mut stream = BytesMut::new();
    for (i, m) in seed_methods().iter().enumerate() {
        let mut out = BytesMut::new();
        write_method(&mut out, i as u16, m);
        stream.extend_from_slice(&out);
        seeds.push([&[0u8][..], &out].concat());
    }
    let mut publish = BytesMut::new();
    write_method(&mut publish, 1, &method_for(0));
    let mut headers = FieldTable::new();
    headers.insert("h", FieldValue::from("v"));
    let props = BasicProperties { headers: Some(headers), delivery_mode: Some(2), ..Default::default() };
    write_content(&mut publish, 1, &props.to_bytes(), b"hello, world", 16);
    write_heartbeat(&mut publish);
    seeds.push([&[0x80 | 1u8][..], &publish].concat());
    seeds.push([&[0u8][..], &publish].concat());
    seeds.push([&[0u8][..], &stream].concat());
    seeds
}

/// Valid `field_table` inputs.
pub fn field_table_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for t in [FieldTable::new(), sample_table()] {
        let mut out = BytesMut::new();
        t.encode(&mut out);
        seeds.push(out.to_vec());
    }
    for (k, v) in sample_table().iter() {
        let mut one = FieldTable::new();
        one.insert(k.clone(), v.clone());
        let mut out = BytesMut::new();
        one.encode(&mut out);
        seeds.push(out.to_vec());
    }
    seeds
}

/// Valid `content_assembler` inputs (see [`next_step`] for the language).
pub fn content_assembler_seeds() -> Vec<Vec<u8>> {
    vec![
        // publish, header (size 5, properties 1), body "hello"
        vec![100, 0, 0, 2, 0x01, 5, 4, 5, b'h', b'e', b'l', b'l', b'o'],
        // deliver, header (size 4, properties 3), two bodies, then an ack
        vec![16, 0, 1, 2, 0x03, 4, 4, 2, 1, 2, 5, 2, 3, 4, 0, 4],
        // get-ok with an empty body, return with raw properties [0, 0], tx.select
        vec![8, 0, 2, 2, 0x00, 0, 0, 3, 2, 0x20, 1, 2, 0, 0, 4, 1, 9, 0, 6],
        // publish, header too large for max_body, reset, heartbeat out of place
        vec![3, 0, 0, 2, 0x40, 0, 0, 0, 0, 0, 0, 0, 4, 0x0F, 0x07],
        // header with another class-id
        vec![50, 0, 3, 2, 0x80, 0, 50, 1],
    ]
}
