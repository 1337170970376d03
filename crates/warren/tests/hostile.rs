//! Hostile and broken input at the wire level (issue 7): malformed and out-of-order frames sent
//! over a raw socket after a correct handshake. Each gets the reply code the spec gives it (a
//! connection.close naming the fault), and a bystander connection on the same broker, with a
//! consumer, notices nothing.

mod common;

use bytes::{Bytes, BytesMut};
use common::lapin_client::*;
use common::{unique, within, Broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_amqp::frame::{write_method, Frame, FrameParser};
use warren_amqp::{FieldTable, Method, ShortStr};

const FRAME_ERROR: u16 = 501;
const NOT_IMPLEMENTED: u16 = 540;
const CHANNEL_ERROR: u16 = 504;
const UNEXPECTED_FRAME: u16 = 505;

/// A client that speaks frames by hand.
struct Raw {
    socket: TcpStream,
    rbuf: BytesMut,
    parser: FrameParser,
}

impl Raw {
    /// Connects and completes the handshake as guest, with frame_max 131072.
    async fn open(broker: &Broker) -> Raw {
        let socket = TcpStream::connect((broker.host(), broker.port())).await.expect("connect");
        let mut raw = Raw { socket, rbuf: BytesMut::new(), parser: FrameParser::new(1 << 20) };
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        assert!(matches!(raw.method().await, Method::ConnectionStart { .. }));
        let mut response = vec![0u8];
        response.extend_from_slice(broker.user().as_bytes());
        response.push(0);
        response.extend_from_slice(broker.password().as_bytes());
        raw.method_out(
            0,
            &Method::ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: ShortStr::from("PLAIN"),
                response: Bytes::from(response),
                locale: ShortStr::from("en_US"),
            },
        )
        .await;
        assert!(matches!(raw.method().await, Method::ConnectionTune { .. }));
        raw.method_out(0, &Method::ConnectionTuneOk { channel_max: 2047, frame_max: 131072, heartbeat: 0 }).await;
        raw.method_out(0, &Method::ConnectionOpen { virtual_host: ShortStr::from(broker.vhost()) }).await;
        assert!(matches!(raw.method().await, Method::ConnectionOpenOk));
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.expect("write");
    }

    async fn method_out(&mut self, channel: u16, method: &Method) {
        let mut out = BytesMut::new();
        write_method(&mut out, channel, method);
        self.send(&out).await;
    }

    /// The next frame from the broker; `None` once the socket closes.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.parser.parse(&mut self.rbuf).expect("the broker's frames parse") {
                return Some(f);
            }
            let n = within("a frame from the broker", self.socket.read_buf(&mut self.rbuf)).await.expect("read");
            if n == 0 {
                return None;
            }
        }
    }

    async fn method(&mut self) -> Method {
        match self.frame().await {
            Some(Frame::Method { method, .. }) => method,
            other => panic!("expected a method, got {other:?}"),
        }
    }

    /// Reads until connection.close; answers close-ok; returns its reply code and text.
    async fn closed_with(&mut self) -> (u16, String) {
        while let Some(f) = self.frame().await {
            if let Frame::Method { channel: 0, method: Method::ConnectionClose { reply_code, reply_text, .. } } = f {
                self.method_out(0, &Method::ConnectionCloseOk).await;
                return (reply_code, reply_text.to_string());
            }
        }
        panic!("the socket closed without connection.close");
    }
}

/// A frame with any type, channel and payload, and the given end octet.
fn frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(end);
    f
}

fn method_bytes(channel: u16, method: &Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_method(&mut out, channel, method);
    out.to_vec()
}

fn publish_frame(channel: u16) -> Vec<u8> {
    method_bytes(
        channel,
        &Method::BasicPublish {
            exchange: ShortStr::from(""),
            routing_key: ShortStr::from("nowhere"),
            mandatory: false,
            immediate: false,
        },
    )
}

/// A content header frame: class 60, weight 0, body size, no properties.
fn header(channel: u16, body_size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&60u16.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    frame(2, channel, &p, 0xCE)
}

/// Sends `bytes` on a fresh raw connection (channel 1 opened first when `open_channel`) and
/// checks the broker closes it with `code`, while a bystander's consumer keeps working.
async fn expect_close(bytes: Vec<u8>, open_channel: bool, code: u16) -> String {
    let broker = Broker::start();
    let (bystander, ch) = connect_channel(&broker).await;
    let queue = unique("bystander");
    declare_plain(&ch, &queue).await;
    let mut consumer = consume(&ch, &queue, true).await;
    let mut raw = Raw::open(&broker).await;
    if open_channel {
        raw.method_out(1, &Method::ChannelOpen).await;
        assert!(matches!(raw.method().await, Method::ChannelOpenOk));
    }
    raw.send(&bytes).await;
    let (got, text) = raw.closed_with().await;
    assert_eq!(got, code, "reply text: {text}");
    // The bystander never noticed.
    publish(&ch, "", &queue, b"still here").await;
    assert_eq!(body(&next_delivery(&mut consumer).await), "still here");
    assert!(bystander.status().connected());
    text
}

#[tokio::test]
async fn a_wrong_frame_end_octet_is_a_frame_error() {
    let f =
        frame(1, 1, &method_bytes(1, &Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false })[7..], 0);
    // The payload above is the method's own; only the end octet is wrong.
    let text = expect_close(f, true, FRAME_ERROR).await;
    assert!(!text.is_empty());
}

#[tokio::test]
async fn a_frame_over_frame_max_is_a_frame_error() {
    let big = vec![0u8; 200_000];
    expect_close(frame(3, 1, &big, 0xCE), true, FRAME_ERROR).await;
}

#[tokio::test]
async fn a_body_longer_than_its_header_declared_is_a_frame_error() {
    if common::is_external() {
        // RabbitMQ 3.10 leaves this unanswered; Warren closes with the spec's frame error.
        return;
    }
    let mut bytes = publish_frame(1);
    bytes.extend(header(1, 3));
    bytes.extend(frame(3, 1, b"too long", 0xCE));
    expect_close(bytes, true, FRAME_ERROR).await;
}

#[tokio::test]
async fn a_method_on_a_channel_never_opened_is_a_channel_error() {
    let bytes = method_bytes(7, &Method::BasicQos { prefetch_size: 0, prefetch_count: 1, global: false });
    expect_close(bytes, false, CHANNEL_ERROR).await;
}

#[tokio::test]
async fn content_without_a_publish_is_an_unexpected_frame() {
    expect_close(header(1, 3), true, UNEXPECTED_FRAME).await;
}

#[tokio::test]
async fn content_on_another_channel_than_its_publish_is_an_unexpected_frame() {
    // basic.publish on channel 1, its header on channel 2 (not open), as RabbitMQ 3.10 answers.
    let mut bytes = publish_frame(1);
    bytes.extend(header(2, 3));
    expect_close(bytes, true, UNEXPECTED_FRAME).await;
}

// A publish whose frames arrive in one read is assembled ahead, outside the broker's lock; it
// must meet the same fate as frames taken one at a time.
#[tokio::test]
async fn a_whole_publish_on_a_channel_never_opened_is_a_channel_error() {
    let mut bytes = publish_frame(7);
    bytes.extend(header(7, 3));
    bytes.extend(frame(3, 7, b"abc", 0xCE));
    let text = expect_close(bytes, false, CHANNEL_ERROR).await;
    assert!(text.contains("channel.open"), "{text}");
}

#[tokio::test]
async fn a_whole_publish_where_a_header_was_due_is_an_unexpected_frame() {
    // The first publish never gets its header: the second one's method frame is unexpected.
    let mut bytes = publish_frame(1);
    bytes.extend(publish_frame(1));
    bytes.extend(header(1, 3));
    bytes.extend(frame(3, 1, b"abc", 0xCE));
    expect_close(bytes, true, UNEXPECTED_FRAME).await;
}

#[tokio::test]
async fn a_method_of_an_unknown_class_is_not_implemented() {
    if common::is_external() {
        // RabbitMQ 3.10 drops the TCP connection without a word; Warren says why.
        return;
    }
    // Class 99, method 1, no arguments.
    let bytes = frame(1, 1, &[0, 99, 0, 1], 0xCE);
    expect_close(bytes, true, NOT_IMPLEMENTED).await;
}

#[tokio::test]
async fn an_unknown_frame_type_is_a_frame_error() {
    expect_close(frame(9, 1, b"", 0xCE), true, FRAME_ERROR).await;
}

#[tokio::test]
async fn a_silent_or_slow_client_is_dropped_at_the_handshake_timeout() {
    let Some(broker) = Broker::start_with_config("handshake_timeout = 300\n") else { return };
    // Says nothing at all.
    let mut silent = TcpStream::connect((broker.host(), broker.port())).await.expect("connect");
    let mut sink = Vec::new();
    let n = within("the broker dropping a silent client", silent.read_to_end(&mut sink)).await;
    assert!(n.is_ok() && sink.is_empty(), "dropped without a word: {sink:?}");
    // Slow loris: a byte of the protocol header every 100 ms, never finishing the handshake.
    let mut slow = TcpStream::connect((broker.host(), broker.port())).await.expect("connect");
    let dropped = within("the broker dropping a slow client", async {
        for b in b"AMQP\x00\x00\x09\x01".iter().cycle() {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            let mut one = [0u8; 64];
            match tokio::time::timeout(std::time::Duration::from_millis(100), slow.read(&mut one)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    assert!(dropped);
    // Clients that complete the handshake in time are not affected.
    let (conn, _ch) = connect_channel(&broker).await;
    assert!(conn.status().connected());
}

#[tokio::test]
async fn channel_max_bounds_the_channels_open_at_once() {
    // As RabbitMQ 3.10: channel numbers above channel_max open, the number of channels open at
    // once is what is bounded.
    let broker = Broker::start();
    let mut raw = Raw::open(&broker).await;
    // channel_max was negotiated at 2047: numbers 101..=2147 open.
    for ch in 101..=2147u16 {
        raw.method_out(ch, &Method::ChannelOpen).await;
    }
    for _ in 101..=2147u16 {
        assert!(matches!(raw.method().await, Method::ChannelOpenOk));
    }
    raw.method_out(3000, &Method::ChannelOpen).await;
    let (code, text) = raw.closed_with().await;
    assert_eq!(code, 530, "{text}");
    assert!(text.contains("number of channels opened (2047) has reached the negotiated channel_max (2047)"), "{text}");
}

#[tokio::test]
async fn a_message_over_max_message_size_closes_only_its_channel() {
    let Some(broker) = Broker::start_with_config("max_message_size = 1024\n") else { return };
    let mut raw = Raw::open(&broker).await;
    raw.method_out(1, &Method::ChannelOpen).await;
    assert!(matches!(raw.method().await, Method::ChannelOpenOk));
    // A header declaring 2048 bytes: refused before any body is sent or buffered.
    let mut bytes = publish_frame(1);
    bytes.extend(header(1, 2048));
    raw.send(&bytes).await;
    match raw.frame().await {
        Some(Frame::Method { channel: 1, method: Method::ChannelClose { reply_code, reply_text, .. } }) => {
            assert_eq!(reply_code, 406, "{reply_text}");
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    raw.method_out(1, &Method::ChannelCloseOk).await;
    // The connection goes on: another channel opens, and a message within the limit is taken.
    raw.method_out(2, &Method::ChannelOpen).await;
    assert!(matches!(raw.method().await, Method::ChannelOpenOk));
    let mut bytes = publish_frame(2);
    bytes.extend(header(2, 1000));
    bytes.extend(frame(3, 2, &[1u8; 1000], 0xCE));
    raw.send(&bytes).await;
    raw.method_out(
        2,
        &Method::ChannelClose { reply_code: 200, reply_text: ShortStr::from("bye"), class_id: 0, method_id: 0 },
    )
    .await;
    assert!(matches!(raw.method().await, Method::ChannelCloseOk));
}

#[tokio::test]
async fn connection_max_refuses_connections_past_the_limit_until_one_closes() {
    let Some(broker) = Broker::start_with_config("connection_max = 2\n") else { return };
    let first = connect(&broker).await;
    let _second = connect(&broker).await;
    let third = within("a third connection", lapin::Connection::connect(&broker.amqp_url(), Default::default())).await;
    let Err(err) = third else { panic!("a connection past connection_max was accepted") };
    assert_eq!(reply_code(&err), 530, "{err}");
    // A connection closing makes room (the broker has cleaned up before close-ok).
    within("close", first.close(200, "bye")).await.expect("close");
    let again = connect(&broker).await;
    assert!(again.status().connected());
}

#[tokio::test]
async fn consumer_max_per_channel_refuses_one_more_consumer() {
    let Some(broker) = Broker::start_with_config("consumer_max_per_channel = 2\n") else { return };
    let (conn, ch) = connect_channel(&broker).await;
    let queue = unique("consumers");
    declare_plain(&ch, &queue).await;
    let _a = consume(&ch, &queue, true).await;
    let _b = consume(&ch, &queue, true).await;
    let third = within(
        "a third basic.consume",
        ch.basic_consume(&queue, "third", Default::default(), lapin::types::FieldTable::default()),
    )
    .await;
    let Err(err) = third else { panic!("a consumer past consumer_max_per_channel was accepted") };
    assert_eq!(reply_code(&err), 530, "{err}");
    drop(conn);
}

#[tokio::test]
async fn a_failed_login_is_answered_only_after_the_delay() {
    let Some(broker) = Broker::start_with_config("auth_failure_delay = 400\n") else { return };
    let url = broker.amqp_url_with(broker.user(), "wrong", broker.vhost());
    let started = std::time::Instant::now();
    let result = within("a refused login", lapin::Connection::connect(&url, Default::default())).await;
    let Err(err) = result else { panic!("a wrong password was accepted") };
    assert_eq!(reply_code(&err), 403, "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(400), "answered after {:?}", started.elapsed());
}

#[tokio::test]
async fn unacked_max_per_channel_holds_deliveries_back_and_refuses_one_more_get() {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let Some(broker) = Broker::start_with_config("unacked_max_per_channel = 5\n") else { return };
    let (conn, ch) = connect_channel(&broker).await;
    let (a, b) = (unique("unacked-a"), unique("unacked-b"));
    declare_plain(&ch, &a).await;
    declare_plain(&ch, &b).await;
    for i in 0..4 {
        publish(&ch, "", &a, format!("a{i}").as_bytes()).await;
        publish(&ch, "", &b, format!("b{i}").as_bytes()).await;
    }
    // Manual-ack consumers on two queues share the channel's cap: 5 deliveries, then none.
    let consumer_ch = channel(&conn).await;
    let mut from_a = consume(&consumer_ch, &a, false).await;
    let mut from_b = consume(&consumer_ch, &b, false).await;
    let mut held = Vec::new();
    while held.len() < 5 {
        tokio::select! {
            d = next_delivery(&mut from_a) => held.push(d),
            d = next_delivery(&mut from_b) => held.push(d),
        }
    }
    assert_no_delivery(&mut from_a).await;
    assert_no_delivery(&mut from_b).await;
    // One ack makes room for exactly one more.
    held.remove(0).ack(BasicAckOptions::default()).await.expect("ack");
    tokio::select! {
        d = next_delivery(&mut from_a) => held.push(d),
        d = next_delivery(&mut from_b) => held.push(d),
    }
    assert_no_delivery(&mut from_a).await;
    assert_no_delivery(&mut from_b).await;
    // Acking the rest lets the last two through.
    for d in held.drain(..) {
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let mut rest = 0;
    while rest < 2 {
        tokio::select! {
            _ = next_delivery(&mut from_a) => rest += 1,
            _ = next_delivery(&mut from_b) => rest += 1,
        }
    }

    close_channel(&consumer_ch).await;

    // basic.get with manual ack: five, then 406 on that channel only; nothing is lost.
    for i in 0..6 {
        publish(&ch, "", &a, format!("g{i}").as_bytes()).await;
    }
    let get_ch = channel(&conn).await;
    for _ in 0..5 {
        let got = within("basic.get", get_ch.basic_get(&a, BasicGetOptions { no_ack: false })).await;
        assert!(got.expect("basic.get").is_some(), "a message was there");
    }
    let over = within("a basic.get past the cap", get_ch.basic_get(&a, BasicGetOptions { no_ack: false })).await;
    let Err(err) = over else { panic!("a basic.get past unacked_max_per_channel was answered") };
    assert_eq!(reply_code(&err), 406, "{err}");
    assert!(err.to_string().contains("unacked message limit of the channel (5) is reached"), "{err}");
    common::eventually("the closed channel's messages to be requeued", || async { message_count(&ch, &a).await == 6 })
        .await;
    // Deliveries without acks are not held to the cap.
    let free_ch = channel(&conn).await;
    let mut no_ack = consume(&free_ch, &a, true).await;
    assert_eq!(next_bodies(&mut no_ack, 6).await.len(), 6);
    close(&conn).await;
}
