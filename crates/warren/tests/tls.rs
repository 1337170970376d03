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
use warren_amqp::{FieldTable, FieldValue, Method, ShortStr};

/// A client certificate from the test CA, with its key.
struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate (CN=guest),
/// in PEM files under `dir`; more client certificates from [`Pki::issue`].
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    client: Identity,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Drop for Pki {
    /// The certificates, keys and configuration files live only as long as the test.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    /// A client certificate from the CA whose subject has these attributes (outermost first).
    fn issue(&self, subject: &[(DnType, &str)]) -> Identity {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["client".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), *v);
        }
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).expect("client cert");
        Identity { cert: cert.der().clone(), key: key.serialize_der() }
    }
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(unique("warren-tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Warren test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server cert");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write");
    let ca = ca_cert.der().clone();
    let placeholder = Identity { cert: ca.clone(), key: Vec::new() };
    let mut pki = Pki { dir, ca, client: placeholder, ca_cert, ca_key };
    pki.client = pki.issue(&[(DnType::CommonName, "guest")]);
    pki
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
    let identity = with_client_cert.then_some(&pki.client);
    tls_connect_as(broker.amqps_port().expect("an AMQPS listener"), pki, identity).await
}

async fn tls_connect_to(
    port: u16,
    pki: &Pki,
    with_client_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_as(port, pki, with_client_cert.then_some(&pki.client)).await
}

/// A TLS connection that verifies the server against the test CA, presenting `identity`'s
/// certificate if given.
async fn tls_connect_as(
    port: u16,
    pki: &Pki,
    identity: Option<&Identity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).expect("ca");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if let Some(identity) = identity {
        let key = PrivateKeyDer::try_from(identity.key.clone()).expect("key");
        builder.with_client_auth_cert(vec![identity.cert.clone()], key).expect("client auth")
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

// ---- EXTERNAL ---------------------------------------------------------------------------

/// Sends the protocol header and answers connection.start with `mechanism` and `response`
/// (announcing authentication_failure_close); returns the mechanisms connection.start offered
/// and the method that answered start-ok (connection.tune, or connection.close when refused).
async fn start_with<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    mechanism: &str,
    response: &'static [u8],
) -> std::io::Result<(String, Method)> {
    s.write_all(b"AMQP\x00\x00\x09\x01").await?;
    let Method::ConnectionStart { mechanisms, .. } = method(s, buf).await? else {
        return Err(std::io::Error::other("expected connection.start"));
    };
    let mut capabilities = FieldTable::new();
    capabilities.insert("authentication_failure_close", FieldValue::Bool(true));
    let mut client_properties = FieldTable::new();
    client_properties.insert("capabilities", FieldValue::Table(capabilities));
    let start_ok = Method::ConnectionStartOk {
        client_properties,
        mechanism: ShortStr::from(mechanism),
        response: Bytes::from_static(response),
        locale: ShortStr::from("en_US"),
    };
    send(s, 0, &start_ok).await?;
    Ok((String::from_utf8_lossy(&mechanisms).into_owned(), method(s, buf).await?))
}

/// After connection.tune: tune-ok and open of vhost "/"; then, if open-ok came, a channel and
/// a queue declared. Returns the answer to connection.open if it was not open-ok, else the
/// answer to queue.declare.
async fn open_and_declare<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, buf: &mut BytesMut) -> std::io::Result<Method> {
    send(s, 0, &Method::ConnectionTuneOk { channel_max: 16, frame_max: 131072, heartbeat: 0 }).await?;
    send(s, 0, &Method::ConnectionOpen { virtual_host: ShortStr::from("/") }).await?;
    let opened = method(s, buf).await?;
    if !matches!(opened, Method::ConnectionOpenOk) {
        return Ok(opened);
    }
    send(s, 1, &Method::ChannelOpen).await?;
    method(s, buf).await?;
    let declare = Method::QueueDeclare {
        queue: ShortStr::from(unique("external").as_str()),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::new(),
    };
    send(s, 1, &declare).await?;
    method(s, buf).await
}

/// The AMQPS config with client verification, EXTERNAL offered after PLAIN and AMQPLAIN, and
/// `users` (with permissions in "/" unless marked `false`) loaded from definitions.
/// Logs in over TLS with EXTERNAL and this client certificate, then opens a channel and declares
/// a queue; fails the test at the first refusal.
async fn external_login_declares(port: u16, pki: &Pki, identity: &Identity) {
    let mut tls = within("TLS connect", tls_connect_as(port, pki, Some(identity))).await.expect("TLS handshake");
    let mut buf = BytesMut::new();
    let (_, answer) = within("start", start_with(&mut tls, &mut buf, "EXTERNAL", b"")).await.expect("start");
    assert!(matches!(answer, Method::ConnectionTune { .. }), "{answer:?}");
    let declared = within("open and declare", open_and_declare(&mut tls, &mut buf)).await.expect("open");
    assert!(matches!(declared, Method::QueueDeclareOk { .. }), "{declared:?}");
}

fn external_conf(pki: &Pki, users: &[(&str, bool)], extra: &str) -> String {
    let defs = serde_json::json!({
        "users": users.iter().map(|(u, _)| serde_json::json!({"name": u, "tags": ""})).collect::<Vec<_>>(),
        "permissions": users.iter().filter(|(_, p)| *p).map(|(u, _)| serde_json::json!(
            {"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})).collect::<Vec<_>>(),
    });
    let path = pki.dir.join(format!("{}.json", unique("defs")));
    std::fs::write(&path, defs.to_string()).expect("write definitions");
    let extra = format!(
        "ssl_options.verify = verify_peer\nauth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = AMQPLAIN\nauth_mechanisms.3 = EXTERNAL\nload_definitions = {}\n{extra}",
        path.display()
    );
    conf(&pki.dir, &extra)
}

/// The reply code and text of a connection.close, or a panic naming what came instead.
fn close_of(m: &Method) -> (u16, String) {
    match m {
        Method::ConnectionClose { reply_code, reply_text, .. } => (*reply_code, reply_text.to_string()),
        other => panic!("expected connection.close, got {other:?}"),
    }
}

#[tokio::test]
async fn external_logs_in_the_user_its_certificate_names() {
    let pki = pki();
    let user = unique("alice");
    let conf = external_conf(&pki, &[(&user, true)], "ssl_cert_login_from = common_name\n");
    let Some(broker) = Broker::start_with_config(&conf) else { return };
    let port = broker.amqps_port().expect("an AMQPS listener");
    let identity = pki.issue(&[(DnType::OrganizationName, "Warren tests"), (DnType::CommonName, &user)]);
    let mut tls = within("TLS connect", tls_connect_as(port, &pki, Some(&identity))).await.expect("TLS handshake");
    let mut buf = BytesMut::new();
    let (offered, answer) = within("start", start_with(&mut tls, &mut buf, "EXTERNAL", b"")).await.expect("start");
    assert_eq!(offered, "PLAIN AMQPLAIN EXTERNAL");
    assert!(matches!(answer, Method::ConnectionTune { .. }), "{answer:?}");
    let declared = within("open and declare", open_and_declare(&mut tls, &mut buf)).await.expect("open");
    assert!(matches!(declared, Method::QueueDeclareOk { .. }), "{declared:?}");
    // The management API tells how it came in: EXTERNAL, over TLS, on the AMQPS listener, and when.
    let mut http = TcpStream::connect(broker.http_addr().expect("HTTP")).await.expect("connect");
    let (status, body) =
        within("GET /api/connections", http_get(&mut http, "/api/connections", Some(GUEST))).await.expect("GET");
    assert_eq!(status, 200, "{body}");
    let conns: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let c = conns.as_array().and_then(|a| a.iter().find(|c| c["user"] == user.as_str())).expect("the connection");
    assert_eq!((c["auth_mechanism"].as_str(), c["ssl"].as_bool()), (Some("EXTERNAL"), Some(true)), "{c}");
    assert_eq!(c["port"], port, "{c}");
    assert!(c["name"].as_str().expect("name").ends_with(&format!(":{port}")), "{c}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let at = c["connected_at"].as_u64().expect("connected_at");
    assert!(at <= now && now - at < 60_000, "connected_at {at} is when it connected (now {now})");
}

#[tokio::test]
async fn external_can_log_in_the_user_a_subject_alternative_name_names() {
    let pki = pki();
    let user = format!("{}@example.com", unique("svc"));
    let extra = "ssl_cert_login_from = subject_alternative_name\nssl_cert_login_san_type = email\n";
    let Some(broker) = Broker::start_with_config(&external_conf(&pki, &[(&user, true)], extra)) else { return };
    let port = broker.amqps_port().expect("an AMQPS listener");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["client.example".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::Rfc822Name(user.as_str().try_into().expect("email")));
    params.distinguished_name.push(DnType::CommonName, "not the login");
    let cert = params.signed_by(&key, &pki.ca_cert, &pki.ca_key).expect("client cert");
    let identity = Identity { cert: cert.der().clone(), key: key.serialize_der() };
    external_login_declares(port, &pki, &identity).await;
}

#[tokio::test]
async fn external_by_default_logs_in_the_whole_distinguished_name() {
    let pki = pki();
    let cn = unique("dora");
    let user = format!("CN={cn},O=Warren tests\\, Inc.,C=GB");
    let Some(broker) = Broker::start_with_config(&external_conf(&pki, &[(&user, true)], "")) else { return };
    let port = broker.amqps_port().expect("an AMQPS listener");
    let identity = pki.issue(&[
        (DnType::CountryName, "GB"),
        (DnType::OrganizationName, "Warren tests, Inc."),
        (DnType::CommonName, &cn),
    ]);
    external_login_declares(port, &pki, &identity).await;
}

#[tokio::test]
async fn external_is_offered_only_over_tls_with_a_client_certificate() {
    let pki = pki();
    let Some(broker) = Broker::start_with_config(&external_conf(&pki, &[], "")) else { return };
    // Plain TCP: not offered, and refused when chosen anyway.
    let mut tcp = TcpStream::connect(("127.0.0.1", broker.port())).await.expect("connect");
    let mut buf = BytesMut::new();
    let (offered, answer) = within("start", start_with(&mut tcp, &mut buf, "EXTERNAL", b"")).await.expect("start");
    assert_eq!(offered, "PLAIN AMQPLAIN");
    let (code, text) = close_of(&answer);
    assert_eq!(code, common::code::ACCESS_REFUSED, "{text}");
    // TLS without a client certificate (verify_peer without fail_if_no_peer_cert lets it in):
    // not offered either; PLAIN still works.
    let port = broker.amqps_port().expect("an AMQPS listener");
    let mut tls = within("TLS connect", tls_connect_as(port, &pki, None)).await.expect("TLS handshake");
    let mut buf = BytesMut::new();
    let (offered, answer) =
        within("start", start_with(&mut tls, &mut buf, "PLAIN", b"\0guest\0guest")).await.expect("start");
    assert_eq!(offered, "PLAIN AMQPLAIN");
    assert!(matches!(answer, Method::ConnectionTune { .. }), "{answer:?}");
    // /api/nodes shows the configured mechanisms as enabled.
    let mut http = TcpStream::connect(broker.http_addr().expect("HTTP")).await.expect("connect");
    let (status, body) = within("GET /api/nodes", http_get(&mut http, "/api/nodes", Some(GUEST))).await.expect("GET");
    assert_eq!(status, 200, "{body}");
    let nodes: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let enabled: Vec<&str> = nodes[0]["auth_mechanisms"]
        .as_array()
        .expect("auth_mechanisms")
        .iter()
        .filter(|m| m["enabled"] == true)
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(enabled, ["PLAIN", "AMQPLAIN", "EXTERNAL"]);
}

#[tokio::test]
async fn external_refuses_a_certificate_naming_no_user_after_the_failure_delay() {
    let pki = pki();
    let stranger = unique("stranger");
    let conf =
        external_conf(&pki, &[(&stranger, false)], "ssl_cert_login_from = common_name\nauth_failure_delay = 300\n");
    let Some(broker) = Broker::start_with_config(&conf) else { return };
    let port = broker.amqps_port().expect("an AMQPS listener");
    // A CN that names no user: 403 at start-ok, answered only after auth_failure_delay.
    let nobody = pki.issue(&[(DnType::CommonName, "nobody-here")]);
    let mut tls = within("TLS connect", tls_connect_as(port, &pki, Some(&nobody))).await.expect("TLS handshake");
    let mut buf = BytesMut::new();
    let started = std::time::Instant::now();
    let (offered, answer) = within("start", start_with(&mut tls, &mut buf, "EXTERNAL", b"")).await.expect("start");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "refused before the delay");
    assert_eq!(offered, "PLAIN AMQPLAIN EXTERNAL");
    let (code, text) = close_of(&answer);
    assert_eq!(code, common::code::ACCESS_REFUSED);
    assert_eq!(text, "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.");
    // A user that exists but has no permissions in "/" logs in and is refused at connection.open
    // (530, as RabbitMQ refuses a vhost).
    let identity = pki.issue(&[(DnType::CommonName, &stranger)]);
    let mut tls = within("TLS connect", tls_connect_as(port, &pki, Some(&identity))).await.expect("TLS handshake");
    let mut buf = BytesMut::new();
    let (_, answer) = within("start", start_with(&mut tls, &mut buf, "EXTERNAL", b"")).await.expect("start");
    assert!(matches!(answer, Method::ConnectionTune { .. }), "{answer:?}");
    let refused = within("open", open_and_declare(&mut tls, &mut buf)).await.expect("open");
    let (code, text) = close_of(&refused);
    assert_eq!(code, common::code::NOT_ALLOWED, "{text}");
    assert!(text.contains(&format!("access to vhost '/' refused for user '{stranger}'")), "{text}");
}
