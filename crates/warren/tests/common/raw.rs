//! A raw AMQP 0-9-1 client for tests that must see frames exactly as the broker sends them
//! (order, reply codes, failing method ids), which a client library hides.
#![allow(dead_code)]

use super::{within, Broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// (class id, method id)
pub type Method = (u16, u16);
pub const CONNECTION_START: Method = (10, 10);
pub const CONNECTION_START_OK: Method = (10, 11);
pub const CONNECTION_TUNE: Method = (10, 30);
pub const CONNECTION_TUNE_OK: Method = (10, 31);
pub const CONNECTION_OPEN: Method = (10, 40);
pub const CONNECTION_OPEN_OK: Method = (10, 41);
pub const CONNECTION_CLOSE: Method = (10, 50);
pub const CONNECTION_CLOSE_OK: Method = (10, 51);
pub const CHANNEL_OPEN: Method = (20, 10);
pub const CHANNEL_OPEN_OK: Method = (20, 11);
pub const QUEUE_DECLARE: Method = (50, 10);
pub const QUEUE_DECLARE_OK: Method = (50, 11);
pub const QUEUE_DELETE: Method = (50, 40);
pub const QUEUE_DELETE_OK: Method = (50, 41);
pub const BASIC_CONSUME: Method = (60, 20);
pub const BASIC_CONSUME_OK: Method = (60, 21);
pub const BASIC_CANCEL: Method = (60, 30);

const FRAME_METHOD: u8 = 1;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

pub fn short_string(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).expect("short string")];
    out.extend_from_slice(s.as_bytes());
    out
}

fn long_string(s: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(s.len()).expect("long string").to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Reply code and failing (class, method) of a connection.close.
pub fn parse_close(args: &[u8]) -> (u16, Method) {
    let code = u16::from_be_bytes([args[0], args[1]]);
    let text_len = usize::from(args[2]);
    let rest = &args[3 + text_len..];
    let class = u16::from_be_bytes([rest[0], rest[1]]);
    let method = u16::from_be_bytes([rest[2], rest[3]]);
    (code, (class, method))
}

pub struct RawConnection(TcpStream);

impl RawConnection {
    /// Connects and completes the handshake (PLAIN, no heartbeats).
    pub async fn open(broker: &Broker) -> RawConnection {
        let stream =
            within("TCP connect", TcpStream::connect((broker.host(), broker.port()))).await.expect("TCP connect");
        let mut conn = RawConnection(stream);
        conn.write(b"AMQP\x00\x00\x09\x01").await;
        conn.expect_method(0, CONNECTION_START).await;

        // client-properties: capabilities { consumer_cancel_notify: true }, so the broker
        // tells of cancelled consumers as it does real clients.
        let mut caps = short_string("consumer_cancel_notify");
        caps.extend([b't', 1]);
        let mut entry = short_string("capabilities");
        entry.push(b'F');
        entry.extend(u32::try_from(caps.len()).expect("table").to_be_bytes());
        entry.extend(caps);
        let mut start_ok = u32::try_from(entry.len()).expect("table").to_be_bytes().to_vec();
        start_ok.extend(entry);
        start_ok.extend(short_string("PLAIN"));
        let response = format!("\0{}\0{}", broker.user(), broker.password());
        start_ok.extend(long_string(response.as_bytes()));
        start_ok.extend(short_string("en_US"));
        conn.send_method(0, CONNECTION_START_OK, &start_ok).await;

        let tune = conn.expect_method(0, CONNECTION_TUNE).await;
        let mut tune_ok = tune[..6].to_vec(); // channel-max, frame-max as offered
        tune_ok.extend(0u16.to_be_bytes()); // no heartbeats
        conn.send_method(0, CONNECTION_TUNE_OK, &tune_ok).await;

        let mut open = short_string(broker.vhost());
        open.extend(short_string("")); // reserved
        open.push(0); // reserved bit
        conn.send_method(0, CONNECTION_OPEN, &open).await;
        conn.expect_method(0, CONNECTION_OPEN_OK).await;
        conn
    }

    async fn write(&mut self, bytes: &[u8]) {
        within("socket write", self.0.write_all(bytes)).await.expect("socket write");
    }

    pub async fn send_method(&mut self, channel: u16, (class, method): Method, args: &[u8]) {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend(method.to_be_bytes());
        payload.extend_from_slice(args);
        let mut frame = vec![FRAME_METHOD];
        frame.extend(channel.to_be_bytes());
        frame.extend(u32::try_from(payload.len()).expect("frame size").to_be_bytes());
        frame.extend(payload);
        frame.push(FRAME_END);
        self.write(&frame).await;
    }

    /// Reads frames until a method frame, which must be `expected` on
    /// `channel`; returns its arguments.
    pub async fn expect_method(&mut self, channel: u16, expected: Method) -> Vec<u8> {
        loop {
            let (frame_type, frame_channel, payload) = self.read_frame().await;
            if frame_type == FRAME_HEARTBEAT {
                continue;
            }
            assert_eq!(frame_type, FRAME_METHOD, "expected a method frame");
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            assert_eq!(
                (frame_channel, (class, method)),
                (channel, expected),
                "unexpected method (channel, (class, method))"
            );
            return payload[4..].to_vec();
        }
    }

    /// Opens `channel` and waits for its open-ok.
    pub async fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, CHANNEL_OPEN, &short_string("")).await;
        self.expect_method(channel, CHANNEL_OPEN_OK).await;
    }

    /// basic.consume of `queue` as `tag` on `channel` (manual acks, no arguments); waits for
    /// consume-ok.
    pub async fn consume(&mut self, channel: u16, queue: &str, tag: &str) {
        let mut consume = vec![0, 0];
        consume.extend(short_string(queue));
        consume.extend(short_string(tag));
        consume.extend([0, 0, 0, 0, 0]);
        self.send_method(channel, BASIC_CONSUME, &consume).await;
        self.expect_method(channel, BASIC_CONSUME_OK).await;
    }

    /// The next method frame, whatever it is: (channel, method, arguments). Heartbeats and
    /// content frames are skipped.
    pub async fn next_method(&mut self) -> (u16, Method, Vec<u8>) {
        loop {
            let (frame_type, channel, payload) = self.read_frame().await;
            if frame_type != FRAME_METHOD {
                continue;
            }
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            return (channel, (class, method), payload[4..].to_vec());
        }
    }

    async fn read_frame(&mut self) -> (u8, u16, Vec<u8>) {
        within("a frame from the broker", async {
            let mut header = [0u8; 7];
            self.0.read_exact(&mut header).await.expect("frame header");
            let channel = u16::from_be_bytes([header[1], header[2]]);
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
            let mut payload = vec![0u8; usize::try_from(size).expect("frame size") + 1];
            self.0.read_exact(&mut payload).await.expect("frame payload");
            assert_eq!(payload.pop(), Some(FRAME_END), "frame end octet");
            (header[0], channel, payload)
        })
        .await
    }
}
