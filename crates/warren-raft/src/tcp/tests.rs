//! The endpoint against hand-driven peers on real sockets: frame limits, answers matched by
//! request id, timeouts, unreachable peers and their backoff, redialling a broken connection,
//! and registration.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::frame::{self, status, Header};
use super::handshake::{self, Identity};
use super::*;
use crate::{codec, Transport, Vote, VoteRequest, VoteResponse};

const COOKIE: &[u8] = b"unit-test-cookie";
const WAIT: Duration = Duration::from_secs(5);

use crate::test_machine::Nop;

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn endpoint(id: u64, config: impl FnOnce(&mut TcpConfig)) -> TcpNode {
    let mut tcp = TcpConfig::new(id, COOKIE);
    config(&mut tcp);
    TcpNode::bind(localhost(), tcp).await.expect("bind")
}

async fn wait_stats(node: &TcpNode, condition: impl Fn(&TcpStats) -> bool) -> TcpStats {
    let mut stats = node.watch_stats();
    let seen = tokio::time::timeout(WAIT, stats.wait_for(|s| condition(s))).await.expect("in time").map(|s| *s);
    seen.expect("counters")
}

/// A peer played by hand: node `id` listening on a plain socket.
struct FakePeer {
    listener: TcpListener,
    me: Identity,
}

impl FakePeer {
    async fn bind(id: u64) -> FakePeer {
        let listener = TcpListener::bind(localhost()).await.expect("bind");
        FakePeer { listener, me: Identity { node_id: id, incarnation: 1, fresh: false } }
    }

    fn peer(&self) -> Peer {
        Peer { id: self.me.node_id, addr: self.listener.local_addr().expect("addr").to_string() }
    }

    /// Accepts the next connection and completes the handshake.
    async fn accept(&self) -> TcpStream {
        let (mut stream, _) = self.listener.accept().await.expect("accept");
        handshake::accept(&mut stream, self.me, COOKIE).await.expect("handshake");
        stream
    }
}

/// Reads the next request frame; returns its id and the vote request it carries.
async fn read_vote_request(stream: &mut TcpStream) -> (u64, VoteRequest) {
    loop {
        let frame = frame::read_frame(stream, DEFAULT_MAX_FRAME_BYTES, WAIT).await.expect("a frame");
        match frame::parse(&frame) {
            Some(Header::Request { id, .. }) => {
                let request = codec::decode_vote_request(frame::request_body(&frame)).expect("a vote request");
                return (id, request);
            }
            Some(Header::Ping) => continue,
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

/// Answers request `id` by granting `vote`.
async fn grant(stream: &mut TcpStream, id: u64, vote: Vote) {
    let mut body = Vec::new();
    codec::encode_vote_response(&VoteResponse::new(vote, None, true), &mut body);
    stream.write_all(&frame::response(id, status::OK, &body)).await.expect("write");
}

fn ask(term: u64) -> VoteRequest {
    VoteRequest::new(Vote::new(term, 1), None)
}

#[tokio::test]
async fn answers_are_matched_to_requests_by_id_whatever_their_order() {
    let peer = FakePeer::bind(2).await;
    let node = endpoint(1, |_| {}).await;
    let transport = node.transport::<Nop>(7);
    let target = peer.peer();

    let serve = async {
        let mut stream = peer.accept().await;
        let (first, first_request) = read_vote_request(&mut stream).await;
        let (second, second_request) = read_vote_request(&mut stream).await;
        assert_ne!(first, second);
        // Answered in the opposite order, each with the vote it asked for.
        grant(&mut stream, second, second_request.vote).await;
        grant(&mut stream, first, first_request.vote).await;
        stream
    };
    let (stream, five, six) =
        tokio::join!(serve, transport.vote(&target, ask(5), WAIT), transport.vote(&target, ask(6), WAIT));
    assert_eq!(five.expect("answered").vote, Vote::new(5, 1));
    assert_eq!(six.expect("answered").vote, Vote::new(6, 1));
    assert_eq!(node.peers(), vec![2]);
    assert_eq!(node.stats().dialed, 1, "one connection carried both");
    drop(stream);
    node.shutdown().await;
}

#[tokio::test]
async fn a_request_without_an_answer_times_out_and_the_connection_stays() {
    let peer = FakePeer::bind(2).await;
    let node = endpoint(1, |_| {}).await;
    let transport = node.transport::<Nop>(7);
    let target = peer.peer();

    let timeout = Duration::from_millis(100);
    let serve = async {
        let mut stream = peer.accept().await;
        let _ignored = read_vote_request(&mut stream).await;
        let (id, request) = read_vote_request(&mut stream).await;
        grant(&mut stream, id, request.vote).await;
        stream
    };
    let client = async {
        let lost = transport.vote(&target, ask(5), timeout).await;
        let answered = transport.vote(&target, ask(6), WAIT).await;
        (lost, answered)
    };
    let (_stream, (lost, answered)) = tokio::join!(serve, client);
    assert_eq!(lost, Err(RpcError::Timeout { after: timeout }));
    assert_eq!(answered.expect("answered").vote, Vote::new(6, 1));
    assert_eq!(node.stats().dialed, 1, "the timeout did not close the connection");
    node.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_cannot_be_dialed_is_unreachable_and_not_redialled_within_the_backoff() {
    let closed_port = TcpListener::bind(localhost()).await.expect("bind").local_addr().expect("addr");
    let node = endpoint(1, |c| c.redial_backoff_ms = 60_000).await;
    let transport = node.transport::<Nop>(7);
    let target = Peer { id: 2, addr: closed_port.to_string() };

    let first = transport.vote(&target, ask(5), WAIT).await;
    assert!(matches!(&first, Err(RpcError::Unreachable { reason }) if reason.contains("cannot connect")), "{first:?}");
    let second = transport.vote(&target, ask(6), WAIT).await;
    assert_eq!(second, first, "the same failure, from the backoff");
    assert_eq!(node.stats().dial_failures, 1, "dialed once");

    let nowhere = Peer { id: 3, addr: "not an address".to_owned() };
    let bad = transport.vote(&nowhere, ask(5), WAIT).await;
    assert!(matches!(bad, Err(RpcError::Unreachable { .. })), "{bad:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_broken_connection_fails_its_requests_and_the_next_request_redials() {
    let peer = FakePeer::bind(2).await;
    let node = endpoint(1, |_| {}).await;
    let transport = node.transport::<Nop>(7);
    let target = peer.peer();

    let hang_up = async {
        let mut stream = peer.accept().await;
        let _ = read_vote_request(&mut stream).await;
        drop(stream);
    };
    let (_, broken) = tokio::join!(hang_up, transport.vote(&target, ask(5), WAIT));
    assert!(matches!(&broken, Err(RpcError::Unreachable { reason }) if reason.contains("lost")), "{broken:?}");
    wait_stats(&node, |s| s.lost == 1).await;

    let serve = async {
        let mut stream = peer.accept().await;
        let (id, request) = read_vote_request(&mut stream).await;
        grant(&mut stream, id, request.vote).await;
        stream
    };
    let (_stream, answered) = tokio::join!(serve, transport.vote(&target, ask(6), WAIT));
    assert_eq!(answered.expect("answered over a new connection").vote, Vote::new(6, 1));
    assert_eq!(node.stats().dialed, 2);
    node.shutdown().await;
}

#[tokio::test]
async fn a_frame_at_the_limit_is_answered_and_one_past_it_closes_the_connection() {
    let node = endpoint(1, |c| c.max_frame_bytes = MIN_MAX_FRAME_BYTES).await;
    let mut stream = TcpStream::connect(node.local_addr()).await.expect("connect");
    let me = Identity { node_id: 2, incarnation: 1, fresh: false };
    handshake::dial(&mut stream, me, COOKIE, 1).await.expect("handshake");

    // A request for a group the node does not have, exactly at the limit: answered.
    let mut at_limit = frame::request(77, frame::Kind::Vote, |out| out.resize(out.len() + 4096, 0));
    let excess = frame::outgoing_len(&at_limit) - MIN_MAX_FRAME_BYTES as usize;
    at_limit.truncate(at_limit.len() - excess);
    let len = (at_limit.len() - 4) as u32;
    at_limit[..4].copy_from_slice(&len.to_be_bytes());
    frame::set_request_id(&mut at_limit, 9);
    stream.write_all(&at_limit).await.expect("write");
    let answer = loop {
        let frame = frame::read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES, WAIT).await.expect("an answer");
        if frame::parse(&frame) != Some(Header::Ping) {
            break frame;
        }
    };
    assert_eq!(frame::parse(&answer), Some(Header::Response { id: 9, status: status::NO_GROUP }));

    // One byte past it: the node hangs up without reading the rest.
    stream.write_all(&(MIN_MAX_FRAME_BYTES + 1).to_be_bytes()).await.expect("write");
    let closed = loop {
        match frame::read_frame(&mut stream, DEFAULT_MAX_FRAME_BYTES, WAIT).await {
            Ok(frame) if frame::parse(&frame) == Some(Header::Ping) => continue,
            other => break other,
        }
    };
    assert!(matches!(closed, Err(frame::ReadError::Closed | frame::ReadError::Io(_))), "{closed:?}");
    wait_stats(&node, |s| s.oversized_frames == 1 && s.lost == 1).await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_stranger_is_dropped_and_counted() {
    let node = endpoint(1, |c| c.handshake_timeout_ms = 100).await;
    let mut stream = TcpStream::connect(node.local_addr()).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    wait_stats(&node, |s| s.handshake_failures == 1).await;
    // And one that says nothing is dropped after the handshake timeout.
    let _silent = TcpStream::connect(node.local_addr()).await.expect("connect");
    wait_stats(&node, |s| s.handshake_failures == 2).await;
    assert!(node.peers().is_empty());
    node.shutdown().await;
}

#[tokio::test]
async fn groups_register_once_under_the_endpoints_node_id() {
    let node = endpoint(1, |_| {}).await;
    let config = crate::GroupConfig::default();
    let (group, _applied) = node.start_group(5, &config, Nop).await.expect("start");
    let again = node.register(5, group.clone());
    assert_eq!(again, Err(RegisterError::Taken { group: 5 }));
    let (stranger, _) = Group::start(2, &config, Nop, node.transport::<Nop>(6)).await.expect("start");
    assert_eq!(node.register(6, stranger.clone()), Err(RegisterError::WrongNode { group: 6, member: 2, endpoint: 1 }));
    assert!(node.unregister(5));
    assert!(!node.unregister(5));

    node.shutdown().await;
    assert_eq!(node.register(5, group.clone()), Err(RegisterError::Stopped));
    let after = node.transport::<Nop>(5).vote(&Peer { id: 2, addr: "127.0.0.1:1".into() }, ask(1), WAIT).await;
    assert!(matches!(after, Err(RpcError::Unreachable { .. })), "{after:?}");
    group.shutdown().await.expect("shutdown");
    stranger.shutdown().await.expect("shutdown");
}

/// A service that records the calls it gets, in order, and answers each in upper case, or
/// refuses a body that says "no".
struct Shout(parking_lot::Mutex<Vec<Vec<u8>>>);

impl Service for Shout {
    fn call(&self, body: &[u8]) -> ServiceAnswer {
        self.0.lock().push(body.to_vec());
        let answer = if body == b"no" { Err("refused on purpose".to_owned()) } else { Ok(body.to_ascii_uppercase()) };
        Box::pin(std::future::ready(answer))
    }
}

#[tokio::test]
async fn services_answer_calls_in_the_order_they_arrive_and_say_why_they_refuse() {
    let a = endpoint(1, |_| {}).await;
    let b = endpoint(2, |_| {}).await;
    let shout = Arc::new(Shout(parking_lot::Mutex::new(Vec::new())));
    b.serve(u64::MAX - 1, shout.clone()).expect("serve");
    assert_eq!(b.serve(u64::MAX - 1, shout.clone()), Err(RegisterError::Taken { group: u64::MAX - 1 }));
    let to_b = Peer { id: 2, addr: b.local_addr().to_string() };

    assert_eq!(a.call(&to_b, u64::MAX - 1, b"hello", WAIT).await.expect("answered"), b"HELLO");
    for i in 0..20u8 {
        assert_eq!(a.call(&to_b, u64::MAX - 1, &[b'a' + i], WAIT).await.expect("answered"), vec![b'A' + i]);
    }
    let seen = shout.0.lock().clone();
    let expected: Vec<Vec<u8>> = std::iter::once(b"hello".to_vec()).chain((0..20u8).map(|i| vec![b'a' + i])).collect();
    assert_eq!(seen, expected, "every call reached the service once, in order");

    let refused = a.call(&to_b, u64::MAX - 1, b"no", WAIT).await;
    assert!(
        matches!(&refused, Err(RpcError::Network { reason }) if reason.contains("refused on purpose")),
        "{refused:?}"
    );
    let unknown = a.call(&to_b, 77, b"hello", WAIT).await;
    assert!(matches!(unknown, Err(RpcError::Unreachable { .. })), "{unknown:?}");
    // A Raft request sent to a service is refused, and a call sent to a group too.
    let raft_to_service = a.transport::<Nop>(u64::MAX - 1);
    let vote = raft_to_service.vote(&to_b, ask(1), WAIT).await;
    assert!(matches!(vote, Err(RpcError::Network { .. })), "{vote:?}");
    let (group, _applied) = b.start_group(9, &crate::GroupConfig::default(), Nop).await.expect("start");
    let to_group = a.call(&to_b, 9, b"hello", WAIT).await;
    assert!(matches!(to_group, Err(RpcError::Network { .. })), "{to_group:?}");
    group.shutdown().await.expect("shutdown");
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn the_config_is_checked_and_its_debug_hides_the_cookie() {
    let config = TcpConfig::new(1, "s3cret-cookie");
    assert!(config.validate().is_ok());
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(TcpConfig::new(1, "").validate().is_err());
    let small = TcpConfig { max_frame_bytes: MIN_MAX_FRAME_BYTES - 1, ..config.clone() };
    assert!(small.validate().is_err());
    let deaf = TcpConfig { dead_after_ms: config.keepalive_ms, ..config };
    assert!(deaf.validate().is_err());
}

/// TLS for nodes whose certificates `ca` signed (for 127.0.0.1), each asking the other for its
/// certificate.
mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

    pub(super) struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        pub(super) fn new() -> Ca {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).expect("CA certificate");
            Ca { cert, key }
        }

        /// A node's TLS: its certificate for `name`, and this CA as the only root.
        pub(super) fn node(&self, name: &str) -> TcpTls {
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec![name.to_owned()])
                .expect("params")
                .signed_by(&key, &self.cert, &self.key)
                .expect("certificate");
            let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
            let private = || PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let mut roots = RootCertStore::empty();
            roots.add(self.cert.der().clone()).expect("root");
            let roots = Arc::new(roots);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().expect("verifier");
            let server = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), private())
                .expect("server config");
            let client = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, private())
                .expect("client config");
            TcpTls {
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
                connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            }
        }
    }
}

async fn connected_within(node: &TcpNode, peer: u64, wait: Duration) -> bool {
    let mut connected = node.watch_connected();
    let seen = tokio::time::timeout(wait, connected.wait_for(|c| c.contains(&peer))).await.is_ok();
    seen
}

#[tokio::test]
async fn nodes_with_certificates_from_the_cluster_ca_talk_over_tls_and_others_are_refused() {
    let ca = tls::Ca::new();
    let a = endpoint(1, |c| c.tls = Some(ca.node("127.0.0.1"))).await;
    let b = endpoint(2, |c| c.tls = Some(ca.node("127.0.0.1"))).await;
    let addr = |n: &TcpNode| n.local_addr().to_string();
    a.watch_peers(BTreeMap::from([(2, addr(&b))]));
    assert!(connected_within(&a, 2, WAIT).await, "a and b connect over TLS");
    // A request goes through and b's group answers it.
    let (group, _applied) = b.start_group(7, &crate::GroupConfig::default(), Nop).await.expect("start");
    let answer = a.transport::<Nop>(7).vote(&Peer { id: 2, addr: addr(&b) }, ask(1), WAIT).await;
    assert!(answer.is_ok(), "{answer:?}");

    // A certificate from another CA and no TLS at all: neither gets a connection, and b counts
    // the failed ones.
    let other = tls::Ca::new();
    let strangers = [endpoint(3, |c| c.tls = Some(other.node("127.0.0.1"))).await, endpoint(5, |_| {}).await];
    let failures = |s: &TcpStats| s.auth_failures + s.handshake_failures;
    let before = failures(&b.watch_stats().borrow());
    for stranger in &strangers {
        stranger.watch_peers(BTreeMap::from([(2, addr(&b))]));
    }
    wait_stats(&b, |s| failures(s) >= before + 2).await;
    for stranger in &strangers {
        assert!(!connected_within(stranger, 2, Duration::from_millis(300)).await, "{:?}", stranger.id());
    }
    // A node whose certificate names another host: b, dialing it, refuses it.
    let misnamed = endpoint(4, |c| c.tls = Some(ca.node("elsewhere.example"))).await;
    let before = b.watch_stats().borrow().auth_failures;
    b.watch_peers(BTreeMap::from([(4, addr(&misnamed))]));
    wait_stats(&b, |s| s.auth_failures > before).await;
    assert!(!connected_within(&b, 4, Duration::from_millis(300)).await);
    assert_eq!(*b.watch_connected().borrow(), BTreeSet::from([1]));
    group.shutdown().await.expect("shutdown");
}

/// Sends one snapshot part (transfer, total, offset, bytes) for `group` as request `id`; returns
/// the answer's status and body.
async fn send_part(stream: &mut TcpStream, group: u64, id: u64, part: (u64, u64, u64, &[u8])) -> (u8, Vec<u8>) {
    let (transfer, total, offset, bytes) = part;
    let mut request = frame::request(group, frame::Kind::SnapshotPart, |out| {
        out.extend_from_slice(&transfer.to_be_bytes());
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(bytes);
    });
    frame::set_request_id(&mut request, id);
    stream.write_all(&request).await.expect("write");
    loop {
        let answer = frame::read_frame(stream, DEFAULT_MAX_FRAME_BYTES, WAIT).await.expect("an answer");
        match frame::parse(&answer) {
            Some(Header::Ping) => continue,
            Some(Header::Response { id: answered, status }) if answered == id => {
                return (status, frame::response_body(&answer).to_vec());
            }
            other => panic!("expected the answer to {id}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn snapshot_parts_out_of_order_or_past_their_total_are_refused() {
    let node = endpoint(1, |_| {}).await;
    let (group, _applied) = node.start_group(5, &GroupConfig::default(), Nop).await.expect("start group");
    let mut stream = TcpStream::connect(node.local_addr()).await.expect("connect");
    handshake::dial(&mut stream, Identity { node_id: 2, incarnation: 1, fresh: false }, COOKIE, 1)
        .await
        .expect("handshake");

    // Not the first part of anything.
    let (status, why) = send_part(&mut stream, 5, 1, (7, 20, 8, b"12345678")).await;
    assert_eq!(status, status::BAD_REQUEST, "{}", String::from_utf8_lossy(&why));
    // A first part is taken and answered with nothing; one of another transfer is refused.
    assert_eq!(send_part(&mut stream, 5, 2, (7, 20, 0, b"0123456789")).await, (status::OK, Vec::new()));
    let (status, why) = send_part(&mut stream, 5, 3, (8, 20, 10, b"0123456789")).await;
    assert_eq!(status, status::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&why).contains("out of order"), "{}", String::from_utf8_lossy(&why));
    // Which ended that transfer: its next part is refused too.
    assert_eq!(send_part(&mut stream, 5, 4, (7, 20, 10, b"0123456789")).await.0, status::BAD_REQUEST);
    // Past the total.
    let (status, why) = send_part(&mut stream, 5, 5, (9, 4, 0, b"01234")).await;
    assert_eq!(status, status::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&why).contains("past"), "{}", String::from_utf8_lossy(&why));
    // A whole that is not a snapshot request is refused as one sent whole would be.
    let (status, _) = send_part(&mut stream, 5, 6, (10, 6, 0, b"012")).await;
    assert_eq!(status, status::OK);
    assert_eq!(send_part(&mut stream, 5, 7, (10, 6, 3, b"345")).await.0, status::BAD_REQUEST);
    // A snapshot too large to hold is refused at its first part rather than aborting the node.
    let (status, why) = send_part(&mut stream, 5, 8, (11, u64::MAX, 0, b"0")).await;
    assert_eq!(status, status::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&why).contains("cannot be held"), "{}", String::from_utf8_lossy(&why));

    group.shutdown().await.expect("shutdown");
    node.shutdown().await;
}
