//! The connection handshake, as one straight line: protocol header, start / start-ok
//! (authentication: the configured mechanisms, EXTERNAL only for a TLS client with a verified
//! certificate), tune / tune-ok, open / open-ok. Nothing is registered with the broker until it
//! has succeeded.

use crate::{Io, Shared};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_amqp::frame::{write_method, FRAME_MIN_SIZE};
use warren_amqp::{
    FieldTable, FieldValue, Frame, FrameParser, Method, ProtocolError, ReplyCode, ShortStr, PROTOCOL_HEADER,
};
use warren_core::auth::{mechanisms_field, offered, Mechanism};
use warren_core::{ConnInfo, Session};

/// What the handshake settled.
pub(crate) struct Negotiated {
    pub frame_max: u32,
    pub heartbeat_s: u16,
    pub info: ConnInfo,
}

/// Why a handshake ended without a connection.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The socket closed or failed; nothing more to say to the peer.
    Io(std::io::Error),
    /// The peer spoke something else than AMQP 0-9-1; we answered with our header.
    BadHeader,
    /// A protocol error, already reported to the peer with connection.close when it could be.
    Refused(ProtocolError),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Io(e)
    }
}

/// What connection.start tells the client about the server; `cluster_name` as RabbitMQ's.
fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap, FieldValue::Bool(true));
    }
    let mut p = FieldTable::new();
    p.insert("capabilities", FieldValue::Table(caps));
    p.insert("cluster_name", cluster_name.into());
    p.insert("product", "Warren".into());
    p.insert("version", env!("CARGO_PKG_VERSION").into());
    p.insert("platform", "Rust".into());
    p.insert("information", "Warren, an AMQP 0-9-1 message broker".into());
    p
}

async fn send<S: Io>(socket: &mut S, method: &Method) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    write_method(&mut out, 0, method);
    socket.write_all(&out).await
}

/// Reads the next frame; every handshake frame must be a method on channel 0.
async fn next_method<S: Io>(socket: &mut S, buf: &mut BytesMut, parser: &FrameParser) -> Result<Method, Failed> {
    loop {
        match parser.parse(buf) {
            Ok(Some(Frame::Method { channel: 0, method })) => return Ok(method),
            Ok(Some(Frame::Heartbeat)) => continue,
            Ok(Some(_)) => {
                return Err(Failed::Refused(ProtocolError::new(
                    ReplyCode::UnexpectedFrame,
                    "expected a connection method on channel 0 during the handshake",
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(Failed::Refused(e)),
        }
        if socket.read_buf(buf).await? == 0 {
            return Err(Failed::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

fn unexpected(method: &Method, wanted: &str) -> Failed {
    Failed::Refused(
        ProtocolError::new(ReplyCode::CommandInvalid, format_args!("expected '{wanted}' during the handshake"))
            .on(method.ids()),
    )
}

/// Tells the peer why we close, then gives it a moment to read it.
async fn refuse<S: Io>(socket: &mut S, e: &ProtocolError) {
    let close = Method::ConnectionClose {
        reply_code: e.code.code(),
        reply_text: ShortStr::from(e.reply_text()),
        class_id: e.class_id,
        method_id: e.method_id,
    };
    if send(socket, &close).await.is_ok() {
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(crate::CLOSE_OK_TIMEOUT, socket.read(&mut sink)).await;
    }
}

/// Runs the handshake on `socket`. `client_cert` is the certificate (DER) a TLS client
/// presented and the CA verified, which the EXTERNAL mechanism needs.
pub(crate) async fn handshake<S: Io>(
    shared: &Shared,
    socket: &mut S,
    buf: &mut BytesMut,
    peer: SocketAddr,
    client_cert: Option<&[u8]>,
    tls: bool,
) -> Result<Negotiated, Failed> {
    // 1. The protocol header. Anything else gets ours back and the socket closed (spec 4.2.2).
    while buf.len() < PROTOCOL_HEADER.len() {
        if socket.read_buf(buf).await? == 0 {
            return Err(Failed::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !PROTOCOL_HEADER.starts_with(&buf[..buf.len().min(PROTOCOL_HEADER.len())]) {
            break;
        }
    }
    if buf.len() < PROTOCOL_HEADER.len() || &buf[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
        socket.write_all(PROTOCOL_HEADER).await?;
        return Err(Failed::BadHeader);
    }
    let _ = buf.split_to(PROTOCOL_HEADER.len());

    let (server_frame_max, server_channel_max, server_heartbeat, mechanisms, cert_login) = {
        let b = shared.broker();
        let c = b.config();
        (
            c.frame_max,
            c.channel_max,
            c.heartbeat_s,
            offered(&c.auth_mechanisms, client_cert.is_some()),
            (c.ssl_cert_login_from, c.ssl_cert_login_san),
        )
    };
    let parser = FrameParser::new(server_frame_max);

    // 2. start / start-ok: authentication.
    send(
        socket,
        &Method::ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(&shared.cluster_view().cluster_name()),
            mechanisms: Bytes::from(mechanisms_field(&mechanisms)),
            locales: Bytes::from_static(b"en_US"),
        },
    )
    .await?;
    let (client_properties, user, auth_mechanism) = match next_method(socket, buf, &parser).await? {
        Method::ConnectionStartOk { client_properties, mechanism, response, .. } => {
            // Only EXTERNAL reads the certificate, so it is parsed only for a client that
            // chooses EXTERNAL (and outside the broker lock).
            let cert_login = match (Mechanism::parse(&mechanism), client_cert) {
                (Some(Mechanism::External), Some(der)) => crate::tls::cert_login_name(der, cert_login.0, cert_login.1),
                _ => None,
            };
            let auth = shared.broker().users().authenticate(
                &mechanism,
                &response,
                &mechanisms,
                cert_login.as_deref(),
                crate::is_loopback(&peer),
            );
            match auth {
                Ok(user) => {
                    let used = Mechanism::parse(&mechanism).map_or("PLAIN", Mechanism::as_str);
                    (client_properties, user, used)
                }
                Err(refused) => {
                    tracing::warn!("connection {peer}: authentication failed: {}", refused.why);
                    let e = refused.error;
                    // Answered late, so that passwords cannot be tried at speed.
                    let delay = shared.broker().config().auth_failure_delay_ms;
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    let wants_close = match client_properties.get("capabilities") {
                        Some(FieldValue::Table(t)) => {
                            t.get("authentication_failure_close").and_then(FieldValue::as_bool).unwrap_or(false)
                        }
                        _ => false,
                    };
                    // Clients that do not announce authentication_failure_close expect the
                    // socket to be closed without a word (spec 4.2.3).
                    if wants_close {
                        refuse(socket, &e).await;
                    }
                    return Err(Failed::Refused(e));
                }
            }
        }
        other => return Err(unexpected(&other, "connection.start-ok")),
    };

    // 3. tune / tune-ok.
    send(
        socket,
        &Method::ConnectionTune {
            channel_max: server_channel_max,
            frame_max: server_frame_max,
            heartbeat: server_heartbeat,
        },
    )
    .await?;
    let (channel_max, frame_max, heartbeat_s) = match next_method(socket, buf, &parser).await? {
        Method::ConnectionTuneOk { channel_max, frame_max, heartbeat } => {
            let frame_max = if frame_max == 0 { server_frame_max } else { frame_max };
            if frame_max < FRAME_MIN_SIZE || frame_max > server_frame_max {
                let e = ProtocolError::new(
                    ReplyCode::NotAllowed,
                    format_args!(
                        "frame_max={frame_max} outside the allowed range {FRAME_MIN_SIZE}..{server_frame_max}"
                    ),
                )
                .on((10, 31));
                refuse(socket, &e).await;
                return Err(Failed::Refused(e));
            }
            let channel_max = if channel_max == 0 { server_channel_max } else { channel_max.min(server_channel_max) };
            (channel_max, frame_max, heartbeat)
        }
        other => return Err(unexpected(&other, "connection.tune-ok")),
    };

    // 4. open / open-ok.
    match next_method(socket, buf, &parser).await? {
        Method::ConnectionOpen { virtual_host } => {
            let info = ConnInfo {
                user,
                vhost: virtual_host.to_string(),
                peer: peer.to_string(),
                client_properties,
                channel_max,
                session: Session { auth_mechanism, tls, connected_at_ms: shared.now_ms() },
            };
            Ok(Negotiated { frame_max, heartbeat_s, info })
        }
        other => Err(unexpected(&other, "connection.open")),
    }
}

/// Reports a handshake failure to the peer where the handshake did not already.
pub(crate) async fn report<S: Io>(socket: &mut S, failed: &Failed) {
    if let Failed::Refused(e) = failed {
        if e.code != ReplyCode::AccessRefused && e.code != ReplyCode::NotAllowed {
            refuse(socket, e).await;
        }
    }
}

/// Refuses connection.open (unknown vhost and the like).
pub(crate) async fn refuse_open<S: Io>(socket: &mut S, e: &ProtocolError) {
    refuse(socket, e).await
}
