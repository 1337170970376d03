//! A minimal AMQP 0-9-1 client on tokio and Warren's codec: what a load generator needs, no
//! more.
//!
//! [`Connection::open`] is the handshake as one straight line (protocol header, start / start-ok
//! with PLAIN, tune / tune-ok taking the broker's frame_max and channel_max with no heartbeats,
//! open / open-ok). The synchronous methods (declare, bind, qos, consume, confirm.select) are
//! one write and a wait for the reply on the same channel. The hot loops of producers and
//! consumers take the socket and buffers apart (see [`Connection::io`]) and use
//! [`on_async_method`] for what the broker may say at any time.
//!
//! Invariant: a broker's connection.close is always answered with close-ok before the error is
//! returned, and every error carries the broker's reply code and text when it gave one.

use bytes::BytesMut;
use std::fmt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_amqp::frame::{write_method, FRAME_MIN_SIZE};
use warren_amqp::{FieldTable, FieldValue, Frame, FrameParser, Method, ShortStr, PROTOCOL_HEADER};

use crate::uri::AmqpUri;

/// Bound on TCP connect plus the whole handshake, so a broker that never answers fails the run.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any synchronous method's reply (a durable declare may wait for a disk sync).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connection.close waits for close-ok before dropping the socket.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// frame_max asked for when the broker sets no limit (0): RabbitMQ's default.
pub const FRAME_MAX_DEFAULT: u32 = 131_072;
/// channel_max assumed when the broker sets no limit (0): the wire's maximum.
pub const CHANNEL_MAX_DEFAULT: u16 = u16::MAX;
/// Room a read buffer gets before each read in a hot loop: one read takes in up to this much.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A read buffer with less room than this is given [`READ_BUFFER_BYTES`] more before reading,
/// so reads never shrink to a few bytes; idle connections keep only this much.
pub const READ_ROOM_MIN: usize = 4096;

/// Makes room in `rbuf` for the next read (reusing its allocation once the frames split off it
/// are dropped).
pub fn ensure_read_room(rbuf: &mut BytesMut) {
    if rbuf.capacity() - rbuf.len() < READ_ROOM_MIN {
        rbuf.reserve(READ_BUFFER_BYTES);
    }
}

#[derive(Debug)]
pub enum Error {
    Io {
        context: String,
        source: std::io::Error,
    },
    Timeout(String),
    /// The broker closed the connection (connection.close).
    ConnectionClosed {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    /// The broker closed a channel (channel.close); the run treats it as fatal too.
    ChannelClosed {
        channel: u16,
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    /// The socket closed with no connection.close.
    Eof(String),
    /// Bytes or methods this client cannot make sense of.
    Protocol(String),
}

impl Error {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The broker's reply code, when the broker closed the connection or a channel.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            Error::ConnectionClosed { code, .. } | Error::ChannelClosed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = |class_id: u16, method_id: u16| {
            if class_id == 0 {
                String::new()
            } else {
                format!(" (caused by {})", method_name(class_id, method_id))
            }
        };
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Timeout(what) => write!(f, "timed out {what}"),
            Error::ConnectionClosed { code, text, class_id, method_id } => write!(
                f,
                "the broker closed the connection: reply code {code}, reply text {text:?}{}",
                cause(*class_id, *method_id)
            ),
            Error::ChannelClosed { channel, code, text, class_id, method_id } => write!(
                f,
                "the broker closed channel {channel}: reply code {code}, reply text {text:?}{}",
                cause(*class_id, *method_id)
            ),
            Error::Eof(what) => write!(f, "the broker closed the socket {what}"),
            Error::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl std::error::Error for Error {}

/// `class.method` for the methods a reply may blame.
pub fn method_name(class_id: u16, method_id: u16) -> String {
    let name = match (class_id, method_id) {
        (10, 11) => "connection.start-ok",
        (10, 31) => "connection.tune-ok",
        (10, 40) => "connection.open",
        (20, 10) => "channel.open",
        (40, 10) => "exchange.declare",
        (40, 20) => "exchange.delete",
        (50, 10) => "queue.declare",
        (50, 20) => "queue.bind",
        (50, 40) => "queue.delete",
        (60, 10) => "basic.qos",
        (60, 20) => "basic.consume",
        (60, 40) => "basic.publish",
        (60, 80) => "basic.ack",
        (85, 10) => "confirm.select",
        _ => return format!("method {class_id}/{method_id}"),
    };
    name.to_string()
}

/// What a hot loop does with a method it did not ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Async {
    /// Nothing to do (heartbeat, a method of no interest).
    Ignore,
    Blocked(String),
    Unblocked,
}

/// Handles the methods any loop may receive at any time: the broker closing the connection or
/// the channel (the close-ok is appended to `wbuf`, to be written before returning the error),
/// and connection.blocked / unblocked.
pub fn on_async_method(wbuf: &mut BytesMut, channel: u16, method: &Method) -> Result<Async, Error> {
    match method {
        Method::ConnectionClose { reply_code, reply_text, class_id, method_id } => {
            write_method(wbuf, 0, &Method::ConnectionCloseOk);
            Err(Error::ConnectionClosed {
                code: *reply_code,
                text: reply_text.to_string(),
                class_id: *class_id,
                method_id: *method_id,
            })
        }
        Method::ChannelClose { reply_code, reply_text, class_id, method_id } => {
            write_method(wbuf, channel, &Method::ChannelCloseOk);
            Err(Error::ChannelClosed {
                channel,
                code: *reply_code,
                text: reply_text.to_string(),
                class_id: *class_id,
                method_id: *method_id,
            })
        }
        Method::ConnectionBlocked { reason } => Ok(Async::Blocked(reason.to_string())),
        Method::ConnectionUnblocked => Ok(Async::Unblocked),
        _ => Ok(Async::Ignore),
    }
}

/// An open connection: the socket, its buffers and what was negotiated.
pub struct Connection {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    parser: FrameParser,
    pub frame_max: u32,
    pub channel_max: u16,
}

/// The parts a hot loop works on directly.
pub struct Io<'a> {
    pub stream: &'a mut TcpStream,
    pub rbuf: &'a mut BytesMut,
    pub wbuf: &'a mut BytesMut,
    pub parser: &'a FrameParser,
}

impl Connection {
    /// Connects and runs the handshake, within [`HANDSHAKE_TIMEOUT`].
    pub async fn open(uri: &AmqpUri, connection_name: &str) -> Result<Connection, Error> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::handshake(uri, connection_name)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!("connecting to {uri}"))),
        }
    }

    async fn handshake(uri: &AmqpUri, connection_name: &str) -> Result<Connection, Error> {
        let addr = uri.address();
        let stream = TcpStream::connect(&addr).await.map_err(Error::io(format!("cannot connect to {addr}")))?;
        stream.set_nodelay(true).map_err(Error::io("cannot set TCP_NODELAY"))?;
        let mut c = Connection {
            stream,
            rbuf: BytesMut::with_capacity(READ_ROOM_MIN),
            wbuf: BytesMut::with_capacity(READ_ROOM_MIN),
            // Until tune, frames are bounded by the broker's frame_max, which is not yet known;
            // connection.start fits in the default one.
            parser: FrameParser::new(FRAME_MAX_DEFAULT),
            frame_max: FRAME_MIN_SIZE,
            channel_max: 0,
        };
        c.wbuf.extend_from_slice(PROTOCOL_HEADER);
        c.flush().await?;
        match c.expect(0, "connection.start").await? {
            Method::ConnectionStart { mechanisms, .. } => {
                if !mechanisms.split(|&b| b == b' ').any(|m| m == b"PLAIN") {
                    return Err(Error::Protocol(format!(
                        "the broker does not offer PLAIN authentication (it offers {})",
                        String::from_utf8_lossy(&mechanisms)
                    )));
                }
            }
            other => return Err(unexpected("connection.start", &other)),
        }
        let mut response = Vec::with_capacity(2 + uri.username.len() + uri.password.len());
        response.push(0);
        response.extend_from_slice(uri.username.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        c.send(
            0,
            &Method::ConnectionStartOk {
                client_properties: client_properties(connection_name),
                mechanism: ShortStr::from_static("PLAIN"),
                response: response.into(),
                locale: ShortStr::from_static("en_US"),
            },
        );
        c.flush().await?;
        let (channel_max, frame_max) = match c.expect(0, "connection.tune").await {
            Ok(Method::ConnectionTune { channel_max, frame_max, .. }) => (channel_max, frame_max),
            Ok(Method::ConnectionSecure { .. }) => {
                return Err(Error::Protocol("the broker asked for a SASL challenge, PLAIN needs none".into()))
            }
            Ok(other) => return Err(unexpected("connection.tune", &other)),
            Err(Error::Eof(_)) => {
                return Err(Error::Eof(format!(
                    "after connection.start-ok: are the user and password right for {uri}?"
                )))
            }
            Err(e) => return Err(e),
        };
        c.frame_max = if frame_max == 0 { FRAME_MAX_DEFAULT } else { frame_max.max(FRAME_MIN_SIZE) };
        c.channel_max = if channel_max == 0 { CHANNEL_MAX_DEFAULT } else { channel_max };
        c.parser = FrameParser::new(c.frame_max);
        c.send(0, &Method::ConnectionTuneOk { channel_max: c.channel_max, frame_max: c.frame_max, heartbeat: 0 });
        c.send(0, &Method::ConnectionOpen { virtual_host: ShortStr::from(uri.vhost.as_str()) });
        c.flush().await?;
        match c.expect(0, "connection.open-ok").await? {
            Method::ConnectionOpenOk => Ok(c),
            other => Err(unexpected("connection.open-ok", &other)),
        }
    }

    /// The socket and buffers, for a hot loop. Frames are split off `rbuf` with `parser`;
    /// anything appended to `wbuf` is the loop's to write.
    pub fn io(&mut self) -> Io<'_> {
        Io { stream: &mut self.stream, rbuf: &mut self.rbuf, wbuf: &mut self.wbuf, parser: &self.parser }
    }

    /// Appends a method frame to the write buffer.
    pub fn send(&mut self, channel: u16, method: &Method) {
        write_method(&mut self.wbuf, channel, method);
    }

    /// Writes the write buffer out.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await.map_err(Error::io("cannot write to the broker"))?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next frame, reading as needed.
    async fn next_frame(&mut self, waiting_for: &str) -> Result<Frame, Error> {
        loop {
            if self.rbuf.starts_with(b"AMQP") {
                return Err(Error::Protocol(format!(
                    "the broker refused the protocol header and answered with {:?}",
                    String::from_utf8_lossy(&self.rbuf[..self.rbuf.len().min(8)])
                )));
            }
            match self.parser.parse(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(format!("while waiting for {waiting_for}: {e}"))),
            }
            if self.rbuf.capacity() == self.rbuf.len() {
                self.rbuf.reserve(READ_ROOM_MIN);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await.map_err(Error::io("cannot read from the broker"))?;
            if n == 0 {
                return Err(Error::Eof(format!("while waiting for {waiting_for}")));
            }
        }
    }

    /// Waits for the next method on `channel`, answering a close from the broker.
    async fn expect(&mut self, channel: u16, waiting_for: &str) -> Result<Method, Error> {
        loop {
            let (ch, method) = match self.next_frame(waiting_for).await? {
                Frame::Method { channel, method } => (channel, method),
                _ => continue,
            };
            match on_async_method(&mut self.wbuf, ch, &method) {
                Err(e) => {
                    // Best effort: the broker closes the socket after close-ok either way.
                    let _ = self.flush().await;
                    return Err(e);
                }
                Ok(Async::Ignore) if ch == channel => return Ok(method),
                Ok(_) => continue,
            }
        }
    }

    /// Sends a synchronous method and waits for its reply, within [`RPC_TIMEOUT`].
    pub async fn rpc(&mut self, channel: u16, method: Method) -> Result<Method, Error> {
        let (class_id, method_id) = method.ids();
        let name = method_name(class_id, method_id);
        self.send(channel, &method);
        match tokio::time::timeout(RPC_TIMEOUT, async {
            self.flush().await?;
            self.expect(channel, &format!("the reply to {name}")).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!("waiting for the reply to {name}"))),
        }
    }

    pub async fn channel_open(&mut self, channel: u16) -> Result<(), Error> {
        match self.rpc(channel, Method::ChannelOpen).await? {
            Method::ChannelOpenOk => Ok(()),
            other => Err(unexpected("channel.open-ok", &other)),
        }
    }

    /// Declares a queue; returns its name (the broker's choice when `name` is "").
    pub async fn queue_declare(
        &mut self,
        channel: u16,
        name: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> Result<String, Error> {
        self.queue_declare_with(channel, name, durable, exclusive, auto_delete, FieldTable::new()).await
    }

    /// Declares a queue with arguments; returns its name.
    pub async fn queue_declare_with(
        &mut self,
        channel: u16,
        name: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Result<String, Error> {
        let m = Method::QueueDeclare {
            queue: ShortStr::from(name),
            passive: false,
            durable,
            exclusive,
            auto_delete,
            nowait: false,
            arguments,
        };
        match self.rpc(channel, m).await? {
            Method::QueueDeclareOk { queue, .. } => Ok(queue.to_string()),
            other => Err(unexpected("queue.declare-ok", &other)),
        }
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn queue_delete(&mut self, channel: u16, name: &str) -> Result<u32, Error> {
        let m = Method::QueueDelete { queue: ShortStr::from(name), if_unused: false, if_empty: false, nowait: false };
        match self.rpc(channel, m).await? {
            Method::QueueDeleteOk { message_count } => Ok(message_count),
            other => Err(unexpected("queue.delete-ok", &other)),
        }
    }

    pub async fn exchange_declare(
        &mut self,
        channel: u16,
        name: &str,
        kind: &str,
        durable: bool,
        passive: bool,
    ) -> Result<(), Error> {
        let m = Method::ExchangeDeclare {
            exchange: ShortStr::from(name),
            kind: ShortStr::from(kind),
            passive,
            durable,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::new(),
        };
        match self.rpc(channel, m).await? {
            Method::ExchangeDeclareOk => Ok(()),
            other => Err(unexpected("exchange.declare-ok", &other)),
        }
    }

    pub async fn queue_bind(
        &mut self,
        channel: u16,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = Method::QueueBind {
            queue: ShortStr::from(queue),
            exchange: ShortStr::from(exchange),
            routing_key: ShortStr::from(routing_key),
            nowait: false,
            arguments,
        };
        match self.rpc(channel, m).await? {
            Method::QueueBindOk => Ok(()),
            other => Err(unexpected("queue.bind-ok", &other)),
        }
    }

    pub async fn basic_qos(&mut self, channel: u16, prefetch_count: u16) -> Result<(), Error> {
        match self.rpc(channel, Method::BasicQos { prefetch_size: 0, prefetch_count, global: false }).await? {
            Method::BasicQosOk => Ok(()),
            other => Err(unexpected("basic.qos-ok", &other)),
        }
    }

    /// Starts a consumer; returns its tag.
    pub async fn basic_consume(&mut self, channel: u16, queue: &str, no_ack: bool) -> Result<String, Error> {
        let m = Method::BasicConsume {
            queue: ShortStr::from(queue),
            consumer_tag: ShortStr::default(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::new(),
        };
        match self.rpc(channel, m).await? {
            Method::BasicConsumeOk { consumer_tag } => Ok(consumer_tag.to_string()),
            other => Err(unexpected("basic.consume-ok", &other)),
        }
    }

    pub async fn confirm_select(&mut self, channel: u16) -> Result<(), Error> {
        match self.rpc(channel, Method::ConfirmSelect { nowait: false }).await? {
            Method::ConfirmSelectOk => Ok(()),
            other => Err(unexpected("confirm.select-ok", &other)),
        }
    }

    /// Closes the connection politely: anything still in the write buffer goes first, then
    /// connection.close; waits (bounded by [`CLOSE_TIMEOUT`]) for close-ok, discarding whatever
    /// arrives before it (deliveries in flight, confirms).
    pub async fn close(mut self) -> Result<(), Error> {
        self.send(
            0,
            &Method::ConnectionClose {
                reply_code: 200,
                reply_text: ShortStr::from_static("warren-perf done"),
                class_id: 0,
                method_id: 0,
            },
        );
        let closing = async {
            self.flush().await?;
            loop {
                match self.next_frame("connection.close-ok").await? {
                    Frame::Method { method: Method::ConnectionCloseOk, .. } => break,
                    // Both sides closed at once: answer and stop.
                    Frame::Method { method: Method::ConnectionClose { .. }, .. } => {
                        self.send(0, &Method::ConnectionCloseOk);
                        self.flush().await?;
                        break;
                    }
                    _ => {}
                }
            }
            // The socket closes when `self` drops: after close-ok the closing side may hang up.
            Ok(())
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout("waiting for connection.close-ok".into())),
        }
    }
}

/// Ends a hot loop's connection. After a clean loop, closes it politely; a close that times out
/// (a broker still busy flushing deliveries, or holding a producer back) or a socket already gone
/// is no failure of the run, but the broker closing with an error code is. After a failed loop,
/// writes what is pending (the close-ok answering the broker's close) as best it can.
pub async fn finish(mut conn: Connection, result: Result<(), Error>) -> Option<Error> {
    match result {
        Ok(()) => match conn.close().await {
            Err(e @ Error::ConnectionClosed { code, .. }) if code != 200 => Some(e),
            Err(e @ Error::Protocol(_)) => Some(e),
            _ => None,
        },
        Err(e) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.flush()).await;
            Some(e)
        }
    }
}

fn unexpected(wanted: &str, got: &Method) -> Error {
    let (c, m) = got.ids();
    Error::Protocol(format!("expected {wanted}, got method {c}/{m}"))
}

fn client_properties(connection_name: &str) -> FieldTable {
    let mut capabilities = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        capabilities.insert(cap, FieldValue::Bool(true));
    }
    let mut p = FieldTable::new();
    p.insert("product", FieldValue::from("warren-perf"));
    p.insert("version", FieldValue::from(env!("CARGO_PKG_VERSION")));
    p.insert("platform", FieldValue::from("Rust"));
    p.insert("connection_name", FieldValue::from(connection_name));
    p.insert("capabilities", FieldValue::Table(capabilities));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_close_is_answered_and_reported() {
        let mut wbuf = BytesMut::new();
        let close = Method::ConnectionClose {
            reply_code: 404,
            reply_text: ShortStr::from("NOT_FOUND - no queue 'q'"),
            class_id: 50,
            method_id: 10,
        };
        let err = on_async_method(&mut wbuf, 0, &close).expect_err("close is an error");
        assert_eq!(err.reply_code(), Some(404));
        let text = err.to_string();
        assert!(text.contains("404") && text.contains("no queue 'q'") && text.contains("queue.declare"), "{text}");
        let reply = FrameParser::new(4096).parse(&mut wbuf).expect("valid").expect("whole");
        assert_eq!(reply, Frame::Method { channel: 0, method: Method::ConnectionCloseOk });
    }

    #[test]
    fn channel_close_is_answered_on_its_channel() {
        let mut wbuf = BytesMut::new();
        let close = Method::ChannelClose {
            reply_code: 406,
            reply_text: ShortStr::from("PRECONDITION_FAILED - unknown delivery tag 9"),
            class_id: 60,
            method_id: 80,
        };
        let err = on_async_method(&mut wbuf, 1, &close).expect_err("close is an error");
        assert!(err.to_string().contains("channel 1"), "{err}");
        let reply = FrameParser::new(4096).parse(&mut wbuf).expect("valid").expect("whole");
        assert_eq!(reply, Frame::Method { channel: 1, method: Method::ChannelCloseOk });
    }

    #[test]
    fn blocked_and_other_methods() {
        let mut wbuf = BytesMut::new();
        let blocked = Method::ConnectionBlocked { reason: ShortStr::from("low on memory") };
        assert_eq!(on_async_method(&mut wbuf, 0, &blocked).expect("ok"), Async::Blocked("low on memory".into()));
        assert_eq!(on_async_method(&mut wbuf, 0, &Method::ConnectionUnblocked).expect("ok"), Async::Unblocked);
        let ack = Method::BasicAck { delivery_tag: 1, multiple: false };
        assert_eq!(on_async_method(&mut wbuf, 1, &ack).expect("ok"), Async::Ignore);
        assert!(wbuf.is_empty());
    }

    #[test]
    fn client_properties_announce_the_capabilities_used() {
        let p = client_properties("perf-1");
        assert_eq!(p.get("connection_name").and_then(|v| v.as_str()), Some("perf-1"));
        let Some(FieldValue::Table(caps)) = p.get("capabilities") else { panic!("capabilities table") };
        assert_eq!(caps.get("publisher_confirms").and_then(|v| v.as_bool()), Some(true));
    }
}
