//! TLS (issue 7): AMQPS with rustls on its own listener, certificates from the config file,
//! optional client certificates, and a clear error at start-up for a bad key; the management
//! app over HTTPS beside plain HTTP. The clients here are rustls plus the AMQP handshake or an
//! HTTP/1.1 request by hand; pika checks AMQPS in the interop run.

mod common;

use bytes::{Bytes, BytesMut};
use common::{unique, within, Broker};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use warren_amqp::frame::{write_content, write_method, Frame, FrameParser};
use warren_amqp::{FieldTable, Method, ShortStr};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, in PEM
/// files under `dir`.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    client_cert: CertificateDer<'static>,
    client_key: Vec<u8>,
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(unique("warren-tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Warren test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let mut client_params = CertificateParams::new(vec!["client".to_string()]).expect("params");
    client_params.distinguished_name.push(DnType::CommonName, "guest");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).expect("client cert");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write");
    Pki { dir, ca: ca.der().clone(), client_cert: client.der().clone(), client_key: client_key.serialize_der() }
}

fn conf(dir: &Path, extra: &str) -> String {
    format!(
        "listeners.ssl.default = 127.0.0.1:0\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.cacertfile = {}\n{extra}",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("ca.pem").display()
    )
}

async fn tls_connect(
    broker: &Broker,
    pki: &Pki,
    with_client_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_to(broker.amqps_port().expect("an AMQPS listener"), pki, with_client_cert).await
}

async fn tls_connect_to(
    port: u16,
    pki: &Pki,
    with_client_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("ca");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_client_cert {
        let key = PrivateKeyDer::try_from(pki.client_key.clone()).expect("key");
        builder.with_client_auth_cert(vec![pki.client_cert.clone()], key).expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("name");
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, channel: u16, m: &Method) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    write_method(&mut out, channel, m);
    s.write_all(&out).await
}

async fn frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> std::io::Result<Frame> {
    let parser = FrameParser::new(1 << 20);
    loop {
        if let Some(f) = parser.parse(buf).map_err(|e| std::io::Error::other(e.text))? {
            return Ok(f);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn method<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> std::io::Result<Method> {
    match frame(s, buf).await? {
        Frame::Method { method, .. } => Ok(method),
        other => Err(std::io::Error::other(format!("expected a method, got {other:?}"))),
    }
}

/// The AMQP handshake as guest, then a queue declared, a message published and fetched back.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::new();
    s.write_all(b"AMQP\x00\x00\x09\x01").await?;
    method(s, &mut buf).await?;
    let start_ok = Method::ConnectionStartOk {
        client_properties: FieldTable::new(),
        mechanism: ShortStr::from("PLAIN"),
        response: Bytes::from_static(b"\0guest\0guest"),
        locale: ShortStr::from("en_US"),
    };
    send(s, 0, &start_ok).await?;
    method(s, &mut buf).await?;
    send(s, 0, &Method::ConnectionTuneOk { channel_max: 16, frame_max: 131072, heartbeat: 0 }).await?;
    send(s, 0, &Method::ConnectionOpen { virtual_host: ShortStr::from("/") }).await?;
    assert!(matches!(method(s, &mut buf).await?, Method::ConnectionOpenOk));
    send(s, 1, &Method::ChannelOpen).await?;
    method(s, &mut buf).await?;
    let queue = ShortStr::from(unique("tls").as_str());
    let declare = Method::QueueDeclare {
        queue: queue.clone(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    send(s, 1, &declare).await?;
    method(s, &mut buf).await?;
    let mut out = BytesMut::new();
    let publish = Method::BasicPublish {
        exchange: ShortStr::from(""),
        routing_key: queue.clone(),
        mandatory: false,
        immediate: false,
    };
    write_method(&mut out, 1, &publish);
    write_content(&mut out, 1, &[0, 0], b"over tls", 131072);
    s.write_all(&out).await?;
    send(s, 1, &Method::BasicGet { queue, no_ack: true }).await?;
    assert!(matches!(method(s, &mut buf).await?, Method::BasicGetOk { .. }));
    frame(s, &mut buf).await?;
    match frame(s, &mut buf).await? {
        Frame::Body { payload, .. } => Ok(payload),
        other => Err(std::io::Error::other(format!("expected the body, got {other:?}"))),
    }
}

#[tokio::test]
async fn amqps_carries_amqp_over_tls() {
    let pki = pki();
    let Some(broker) = Broker::start_with_config(&conf(&pki.dir, "")) else { return };
    let mut tls = within("TLS connect", tls_connect(&broker, &pki, false)).await.expect("TLS handshake");
    let body = within("a round trip over TLS", round_trip(&mut tls)).await.expect("AMQP over TLS");
    assert_eq!(&body[..], b"over tls");
    // The plain listener goes on beside it.
    let (conn, _ch) = common::lapin_client::connect_channel(&broker).await;
    assert!(conn.status().connected());
}

#[tokio::test]
async fn verify_peer_with_fail_if_no_peer_cert_refuses_clients_without_a_certificate() {
    let pki = pki();
    let extra = "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n";
    let Some(broker) = Broker::start_with_config(&conf(&pki.dir, extra)) else { return };
    // Without a client certificate the TLS handshake (or the first read after it, in TLS 1.3)
    // fails.
    let refused = within("a refused TLS client", async {
        match tls_connect(&broker, &pki, false).await {
            Err(_) => true,
            Ok(mut tls) => round_trip(&mut tls).await.is_err(),
        }
    })
    .await;
    assert!(refused, "a client without a certificate got through");
    // With a certificate from the CA it works.
    let mut tls = within("TLS connect", tls_connect(&broker, &pki, true)).await.expect("TLS handshake");
    let body = within("a round trip over TLS", round_trip(&mut tls)).await.expect("AMQP over TLS");
    assert_eq!(&body[..], b"over tls");
}

#[tokio::test]
async fn a_bad_key_stops_the_start_with_an_error_naming_it() {
    if common::is_external() {
        return;
    }
    let pki = pki();
    std::fs::write(pki.dir.join("server.key"), "not a key\n").expect("write");
    let conf_path = pki.dir.join("rabbitmq.conf");
    std::fs::write(&conf_path, conf(&pki.dir, "")).expect("write");
    let data = pki.dir.join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--config"])
        .arg(&conf_path)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("run warren");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ssl_options.keyfile"), "{stderr}");
}

/// One HTTP/1.1 GET (basic auth when `auth` is given); the status code and the body.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
    auth: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// base64("guest:guest")
const GUEST: &str = "Z3Vlc3Q6Z3Vlc3Q=";

fn https_conf(dir: &Path, extra: &str) -> String {
    format!(
        "management.ssl.port = 127.0.0.1:0\nmanagement.ssl.certfile = {}\nmanagement.ssl.keyfile = {}\nmanagement.ssl.cacertfile = {}\n{extra}",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("ca.pem").display()
    )
}

#[tokio::test]
async fn https_serves_the_management_api_beside_plain_http() {
    if common::is_external() {
        return;
    }
    let pki = pki();
    let Some(broker) = Broker::start_with_config(&https_conf(&pki.dir, "")) else { return };
    let port = broker.https_port().expect("an HTTPS listener");
    // guest may log in from localhost only: a 200 also shows the API learnt the peer address.
    let mut tls = within("HTTPS connect", tls_connect_to(port, &pki, false)).await.expect("TLS handshake");
    let (status, body) = within("GET over HTTPS", http_get(&mut tls, "/api/overview", Some(GUEST))).await.expect("GET");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"management_version\""), "{body}");
    let mut tls = within("HTTPS connect", tls_connect_to(port, &pki, false)).await.expect("TLS handshake");
    let (status, _) = within("GET over HTTPS", http_get(&mut tls, "/api/overview", None)).await.expect("GET");
    assert_eq!(status, 401);
    // Plain HTTP goes on beside it.
    let http = broker.http_addr().expect("an HTTP listener");
    let mut tcp = TcpStream::connect(&http).await.expect("connect");
    let (status, _) = within("GET over HTTP", http_get(&mut tcp, "/api/overview", Some(GUEST))).await.expect("GET");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_bad_management_key_stops_the_start_with_an_error_naming_it() {
    if common::is_external() {
        return;
    }
    let pki = pki();
    std::fs::write(pki.dir.join("mgmt.key"), "not a key\n").expect("write");
    let conf_path = pki.dir.join("rabbitmq.conf");
    // AMQPS is configured right; only the management listener's key is bad.
    let conf = conf(
        &pki.dir,
        &format!(
            "management.ssl.port = 127.0.0.1:0\nmanagement.ssl.certfile = {}\nmanagement.ssl.keyfile = {}\n",
            pki.dir.join("server.pem").display(),
            pki.dir.join("mgmt.key").display()
        ),
    );
    std::fs::write(&conf_path, conf).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--config"])
        .arg(&conf_path)
        .arg("--data-dir")
        .arg(pki.dir.join("data"))
        .output()
        .expect("run warren");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("management.ssl.keyfile"), "{stderr}");
    assert!(stderr.contains("mgmt.key"), "{stderr}");
}

#[test]
fn warrenctl_talks_https_with_a_cacert() {
    if common::is_external() {
        return;
    }
    let pki = pki();
    let Some(broker) = Broker::start_with_config(&https_conf(&pki.dir, "")) else { return };
    let url = format!("https://localhost:{}", broker.https_port().expect("an HTTPS listener"));
    let ca = pki.dir.join("ca.pem").display().to_string();
    let ctl = |args: &[&str]| {
        let mut argv = vec!["warrenctl", "--url", url.as_str()];
        argv.extend_from_slice(args);
        let cli = <warrenctl::Cli as clap::Parser>::try_parse_from(argv).expect("parses");
        warrenctl::run(&cli)
    };
    let listed = ctl(&["--cacert", &ca, "list", "vhosts"]).expect("list vhosts over HTTPS");
    assert!(listed.lines().any(|l| l.trim() == "/" || l.starts_with("/ ")), "{listed}");
    // Without the CA the server's certificate is not trusted.
    let err = ctl(&["list", "vhosts"]).expect_err("an untrusted certificate");
    assert!(err.0.contains(&url), "{}", err.0);
}
