//! Error paths: each must close the offending channel or connection with
//! the exact AMQP reply code, and leave the broker serving other clients.

mod common;

use common::code::{ACCESS_REFUSED, CHANNEL_ERROR, NOT_ALLOWED, NOT_FOUND, PRECONDITION_FAILED};
use common::lapin_client::*;
use common::{unique, within, Broker};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name, kind, ExchangeDeclareOptions::default(), FieldTable::default()),
    )
    .await
}

/// After a channel error: the same connection opens a new working channel,
/// and a new connection works too.
async fn assert_connection_and_broker_alive(broker: &Broker, conn: &Connection) {
    assert!(conn.status().connected());
    let ch = channel(conn).await;
    declare_plain(&ch, &unique("after-error")).await;
    close_channel(&ch).await;
    assert_broker_alive(broker).await;
}

#[tokio::test]
async fn publish_to_a_missing_exchange_closes_the_channel_with_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let watch = CloseWatch::new(&ch);
    // basic.publish has no reply: the error arrives as a channel.close.
    let _ = ch
        .basic_publish(
            &unique("no-such-exchange"),
            "key",
            BasicPublishOptions::default(),
            b"lost",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(watch.code().await, NOT_FOUND);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn bind_involving_a_missing_queue_or_exchange_is_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let bind = |ch: Channel, queue: String, exchange: &'static str| async move {
        within("queue.bind", ch.queue_bind(&queue, exchange, "key", QueueBindOptions::default(), FieldTable::default()))
            .await
    };
    let missing_queue = unique("no-such-queue");
    assert_code(bind(channel(&conn).await, missing_queue, "amq.direct").await, NOT_FOUND);

    let existing = unique("bind-source-missing");
    declare_plain(&channel(&conn).await, &existing).await;
    assert_code(bind(channel(&conn).await, existing, "no-such-exchange-for-bind").await, NOT_FOUND);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn consume_from_a_missing_queue_is_not_found() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_code(
        within(
            "basic.consume",
            ch.basic_consume(&unique("no-such-queue"), "", BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await,
        NOT_FOUND,
    );
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn amq_prefix_is_reserved_for_exchanges_and_queues() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let exchange = format!("amq.{}", unique("xyz"));
    assert_code(declare_exchange(&channel(&conn).await, &exchange, ExchangeKind::Direct).await, ACCESS_REFUSED);
    // The prefix only guards creation: an equivalent redeclare of a
    // predeclared exchange succeeds.
    within(
        "exchange.declare-ok",
        channel(&conn).await.exchange_declare(
            "amq.direct",
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("equivalent redeclare of amq.direct");
    let queue = format!("amq.{}", unique("queue"));
    assert_code(
        within(
            "queue.declare",
            channel(&conn).await.queue_declare(&queue, QueueDeclareOptions::default(), FieldTable::default()),
        )
        .await,
        ACCESS_REFUSED,
    );
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn redeclaring_an_exchange_with_another_type_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let name = unique("typed");
    declare_exchange(&channel(&conn).await, &name, ExchangeKind::Direct).await.expect("declare direct");
    declare_exchange(&channel(&conn).await, &name, ExchangeKind::Direct).await.expect("equivalent redeclare");
    assert_code(declare_exchange(&channel(&conn).await, &name, ExchangeKind::Fanout).await, PRECONDITION_FAILED);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_is_precondition_failed() {
    let broker = Broker::start();
    let conn = connect(&broker).await;

    // A tag that was never delivered.
    let ch = channel(&conn).await;
    let watch = CloseWatch::new(&ch);
    let _ = ch.basic_ack(42, BasicAckOptions::default()).await;
    assert_eq!(watch.code().await, PRECONDITION_FAILED);

    // A tag acknowledged twice.
    let ch = channel(&conn).await;
    let queue = unique("double-ack");
    declare_plain(&ch, &queue).await;
    publish(&ch, "", &queue, b"once").await;
    let message = get(&ch, &queue, false).await.expect("message");
    let tag = message.delivery.delivery_tag;
    let watch = CloseWatch::new(&ch);
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await.expect("first ack");
    let _ = ch.basic_ack(tag, BasicAckOptions::default()).await;
    assert_eq!(watch.code().await, PRECONDITION_FAILED);
    assert_connection_and_broker_alive(&broker, &conn).await;
    close(&conn).await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_access_refused() {
    let broker = Broker::start();
    let url = broker.amqp_url_with(broker.user(), "definitely-wrong", broker.vhost());
    let result = within("connection attempt", Connection::connect(&url, lapin::ConnectionProperties::default())).await;
    // lapin announces authentication_failure_close, so the broker explains
    // the refusal with connection.close 403 before closing the socket.
    assert_code(result.map(|_| ()), ACCESS_REFUSED);
    assert_broker_alive(&broker).await;
}

#[tokio::test]
async fn opening_a_missing_vhost_is_not_allowed() {
    let broker = Broker::start();
    let url = broker.amqp_url_with(broker.user(), broker.password(), &unique("no-such-vhost"));
    let result = within("connection attempt", Connection::connect(&url, lapin::ConnectionProperties::default())).await;
    assert_code(result.map(|_| ()), NOT_ALLOWED);
    assert_broker_alive(&broker).await;
}

#[tokio::test]
async fn reopening_an_open_channel_is_a_connection_error() {
    let broker = Broker::start();
    // Client libraries manage channel ids themselves and will not send a
    // second channel.open for an open channel, so speak the protocol
    // directly.
    let mut raw = raw::RawConnection::open(&broker).await;
    raw.send_method(1, raw::CHANNEL_OPEN, &raw::short_string("")).await;
    raw.expect_method(1, raw::CHANNEL_OPEN_OK).await;
    raw.send_method(1, raw::CHANNEL_OPEN, &raw::short_string("")).await;
    let close = raw.expect_method(0, raw::CONNECTION_CLOSE).await;
    let (code, failing_method) = raw::parse_close(&close);
    assert_eq!(code, CHANNEL_ERROR);
    assert_eq!(failing_method, raw::CHANNEL_OPEN, "close names channel.open");
    raw.send_method(0, raw::CONNECTION_CLOSE_OK, &[]).await;
    assert_broker_alive(&broker).await;
}

/// Just enough of AMQP 0-9-1 framing to provoke errors that client
/// libraries prevent.
mod raw {
    use super::common::{within, Broker};
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

            let mut start_ok = 0u32.to_be_bytes().to_vec(); // empty client-properties
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
}
