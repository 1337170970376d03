//! The handshake that opens every node-to-node connection: who is at each end, and proof that
//! both know the cluster's shared secret (the cookie), without either sending it.
//!
//! A straight line of four messages, the dialer first:
//!
//! | # | from | bytes |
//! |---|---|---|
//! | 1 | dialer | magic `WRFT`, version `u8`, node id `u64`, incarnation `u64`, nonce (32) |
//! | 2 | acceptor | magic, version, node id, incarnation, nonce (32), proof (32) |
//! | 3 | dialer | proof (32) |
//! | 4 | acceptor | `1`: accepted; `2`: refused (the dialer was taken out of the cluster) |
//!
//! The incarnation's top bit says the node holds no cluster state yet (a first start, or a
//! node reset): a node taken out of the cluster is refused (verdict `2`) unless it says so, so
//! that, reset, it can join again.
//!
//! Each proof is an HMAC-SHA256 keyed with the cookie over a label naming the side that proves
//! and messages 1 and 2 without the proof: both nonces, both node ids and both incarnations, so
//! a proof is good for this one connection only and cannot be replayed on another, nor turned
//! around to the other side (the labels differ). The acceptor proves first; a dialer that finds
//! the proof wrong hangs up before proving anything itself. Proofs are checked in constant
//! time (the `hmac` crate's `verify_slice`). Nonces come from the operating system's random
//! source.
//!
//! Every holder of the cookie is trusted: the node id a peer states is believed. The exchange
//! authenticates but does not encrypt; what follows it travels in the clear, and someone on the
//! path could take over an authenticated connection (TLS is the remedy, not yet here).
//!
//! Invariant: nothing but these messages is read or written before message 4, and a failure at
//! any step ends the connection; the caller bounds the whole exchange with a timeout.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Opens both hellos: "Warren raft".
const MAGIC: [u8; 4] = *b"WRFT";
/// The version of the handshake and of the frames that follow it.
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 32;
const PROOF_BYTES: usize = 32;
/// Magic, version, node id, incarnation, nonce.
const HELLO_BYTES: usize = 4 + 1 + 8 + 8 + NONCE_BYTES;
/// The acceptor's last message.
const ACCEPTED: u8 = 1;
/// The acceptor's verdict on a dialer it authenticated but refuses (a node taken out of the
/// cluster).
const REFUSED: u8 = 2;

/// Labels of the two proofs, of equal length so that no label is a prefix of the other.
const DIALER_LABEL: &[u8; 16] = b"warren-raft dial";
const ACCEPTOR_LABEL: &[u8; 16] = b"warren-raft acpt";

/// One end of a connection: a node and the run of its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The node id.
    pub(crate) node_id: u64,
    /// Drawn at random when the endpoint starts: tells a restarted node from its earlier run
    /// (its top bit clear: that bit is `fresh`'s on the wire).
    pub(crate) incarnation: u64,
    /// The node holds no cluster state yet (see the module's doc).
    pub(crate) fresh: bool,
}

/// The bit of the incarnation field that carries `fresh`.
pub(crate) const FRESH_BIT: u64 = 1 << 63;

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The other side's proof was wrong: it does not know our cookie.
    Auth(String),
    /// Anything else: the connection closed, the bytes were not a Warren node's, or the node is
    /// not the one expected.
    Failed(String),
    /// The dialer authenticated but is refused (taken out of the cluster): told to both sides.
    Refused(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Auth(reason) | HandshakeError::Failed(reason) | HandshakeError::Refused(reason) => {
                f.write_str(reason)
            }
        }
    }
}

fn failed(what: impl fmt::Display) -> HandshakeError {
    HandshakeError::Failed(format!("handshake failed: {what}"))
}

fn nonce() -> Result<[u8; NONCE_BYTES], HandshakeError> {
    let mut nonce = [0; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| failed(format!("no random nonce: {e}")))?;
    Ok(nonce)
}

fn hello(me: Identity, nonce: &[u8; NONCE_BYTES]) -> [u8; HELLO_BYTES] {
    let mut out = [0; HELLO_BYTES];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = VERSION;
    out[5..13].copy_from_slice(&me.node_id.to_be_bytes());
    let incarnation = (me.incarnation & !FRESH_BIT) | if me.fresh { FRESH_BIT } else { 0 };
    out[13..21].copy_from_slice(&incarnation.to_be_bytes());
    out[21..].copy_from_slice(nonce);
    out
}

/// The identity in a hello, checked for magic and version.
fn parse_hello(hello: &[u8; HELLO_BYTES]) -> Result<Identity, HandshakeError> {
    if hello[..4] != MAGIC {
        return Err(failed("the peer is not a Warren raft endpoint"));
    }
    if hello[4] != VERSION {
        return Err(failed(format!("the peer speaks version {}, this node {VERSION}", hello[4])));
    }
    let mut id = [0; 8];
    id.copy_from_slice(&hello[5..13]);
    let mut incarnation = [0; 8];
    incarnation.copy_from_slice(&hello[13..21]);
    let incarnation = u64::from_be_bytes(incarnation);
    Ok(Identity {
        node_id: u64::from_be_bytes(id),
        incarnation: incarnation & !FRESH_BIT,
        fresh: incarnation & FRESH_BIT != 0,
    })
}

fn mac(label: &[u8; 16], cookie: &[u8], dialer_hello: &[u8], acceptor_hello: &[u8]) -> Hmac<Sha256> {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(cookie) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(label);
    mac.update(dialer_hello);
    mac.update(acceptor_hello);
    mac
}

/// The proof a side sends.
fn proof(label: &[u8; 16], cookie: &[u8], dialer_hello: &[u8], acceptor_hello: &[u8]) -> [u8; PROOF_BYTES] {
    mac(label, cookie, dialer_hello, acceptor_hello).finalize().into_bytes().into()
}

/// Whether `got` is the proof the side named by `label` should have sent, checked in constant
/// time.
fn proof_holds(
    got: &[u8; PROOF_BYTES],
    label: &[u8; 16],
    cookie: &[u8],
    dialer_hello: &[u8],
    acceptor_hello: &[u8],
) -> bool {
    mac(label, cookie, dialer_hello, acceptor_hello).verify_slice(got).is_ok()
}

async fn read<S: AsyncRead + Unpin, const N: usize>(stream: &mut S, what: &str) -> Result<[u8; N], HandshakeError> {
    let mut buf = [0; N];
    stream.read_exact(&mut buf).await.map_err(|e| failed(format!("reading the {what}: {e}")))?;
    Ok(buf)
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], what: &str) -> Result<(), HandshakeError> {
    stream.write_all(bytes).await.map_err(|e| failed(format!("writing the {what}: {e}")))?;
    stream.flush().await.map_err(|e| failed(format!("writing the {what}: {e}")))
}

/// Runs the dialer's side with `me` and `cookie` against the node expected to be `expected`;
/// returns the acceptor's identity.
pub(crate) async fn dial<S>(
    stream: &mut S,
    me: Identity,
    cookie: &[u8],
    expected: u64,
) -> Result<Identity, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mine = hello(me, &nonce()?);
    write(stream, &mine, "hello").await?;
    let theirs: [u8; HELLO_BYTES] = read(stream, "peer's hello").await?;
    let peer = parse_hello(&theirs)?;
    if peer.node_id != expected {
        return Err(failed(format!("the address is node {}'s, not node {expected}'s", peer.node_id)));
    }
    let their_proof: [u8; PROOF_BYTES] = read(stream, "peer's proof").await?;
    if !proof_holds(&their_proof, ACCEPTOR_LABEL, cookie, &mine, &theirs) {
        return Err(HandshakeError::Auth(format!(
            "node {} failed authentication: its cookie differs from this node's",
            peer.node_id
        )));
    }
    write(stream, &proof(DIALER_LABEL, cookie, &mine, &theirs), "proof").await?;
    let [verdict]: [u8; 1] = read(stream, "peer's verdict").await?;
    if verdict == REFUSED {
        return Err(HandshakeError::Refused(format!(
            "node {} refuses this node: it was taken out of the cluster (forget_cluster_node)",
            peer.node_id
        )));
    }
    if verdict != ACCEPTED {
        return Err(failed(format!("node {} answered {verdict} to the proof", peer.node_id)));
    }
    Ok(peer)
}

/// Runs the acceptor's side with `me` and `cookie`; returns the dialer's identity.
#[cfg(test)]
pub(crate) async fn accept<S>(stream: &mut S, me: Identity, cookie: &[u8]) -> Result<Identity, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_unless(stream, me, cookie, |_, _| false).await
}

/// Runs the acceptor's side with `me` and `cookie`, refusing a dialer that authenticates as a
/// node `refused` names (given its id and whether it says it is fresh); returns the dialer's
/// identity.
pub(crate) async fn accept_unless<S>(
    stream: &mut S,
    me: Identity,
    cookie: &[u8],
    refused: impl Fn(u64, bool) -> bool,
) -> Result<Identity, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let theirs: [u8; HELLO_BYTES] = read(stream, "peer's hello").await?;
    let peer = parse_hello(&theirs)?;
    if peer.node_id == me.node_id {
        return Err(failed(format!("the peer claims this node's own id {}", me.node_id)));
    }
    let mine = hello(me, &nonce()?);
    let mut message = Vec::with_capacity(HELLO_BYTES + PROOF_BYTES);
    message.extend_from_slice(&mine);
    message.extend_from_slice(&proof(ACCEPTOR_LABEL, cookie, &theirs, &mine));
    write(stream, &message, "hello").await?;
    let their_proof: [u8; PROOF_BYTES] = read(stream, "peer's proof").await?;
    if !proof_holds(&their_proof, DIALER_LABEL, cookie, &theirs, &mine) {
        return Err(HandshakeError::Auth(format!(
            "node {} failed authentication: its cookie differs from this node's",
            peer.node_id
        )));
    }
    if refused(peer.node_id, peer.fresh) {
        write(stream, &[REFUSED], "verdict").await?;
        return Err(HandshakeError::Refused(format!("node {} was taken out of the cluster", peer.node_id)));
    }
    write(stream, &[ACCEPTED], "verdict").await?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity { node_id: 1, incarnation: 11, fresh: false };
    const YOU: Identity = Identity { node_id: 2, incarnation: 22, fresh: false };

    #[tokio::test]
    async fn the_same_cookie_authenticates_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (dialed, accepted) = tokio::join!(dial(&mut a, ME, b"secret", 2), accept(&mut b, YOU, b"secret"));
        assert_eq!(dialed.expect("dialer"), YOU);
        assert_eq!(accepted.expect("acceptor"), ME);
    }

    #[tokio::test]
    async fn a_different_cookie_fails_authentication_at_the_dialer_first() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let dialer = async {
            let result = dial(&mut a, ME, b"secret", 2).await;
            drop(a); // hang up, as the endpoint does
            result
        };
        let (dialed, accepted) = tokio::join!(dialer, accept(&mut b, YOU, b"other"));
        assert!(matches!(dialed, Err(HandshakeError::Auth(_))), "{dialed:?}");
        assert!(matches!(accepted, Err(HandshakeError::Failed(_))), "{accepted:?}");
    }

    #[tokio::test]
    async fn a_dialer_with_a_wrong_proof_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let forger = async {
            // A dialer that skips checking and sends a proof made without the cookie.
            let mine = hello(ME, &[7; NONCE_BYTES]);
            write(&mut a, &mine, "hello").await?;
            let theirs: [u8; HELLO_BYTES] = read(&mut a, "hello").await?;
            let _: [u8; PROOF_BYTES] = read(&mut a, "proof").await?;
            write(&mut a, &proof(DIALER_LABEL, b"guess", &mine, &theirs), "proof").await
        };
        let (forged, accepted) = tokio::join!(forger, accept(&mut b, YOU, b"secret"));
        forged.expect("the forger's writes succeed");
        assert!(matches!(accepted, Err(HandshakeError::Auth(_))), "{accepted:?}");
    }

    #[tokio::test]
    async fn the_wrong_node_at_an_address_or_a_stranger_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let dialer = async {
            let result = dial(&mut a, ME, b"secret", 3).await;
            drop(a);
            result
        };
        let (dialed, _) = tokio::join!(dialer, accept(&mut b, YOU, b"secret"));
        assert!(matches!(dialed, Err(HandshakeError::Failed(ref r)) if r.contains("node 2")), "{dialed:?}");

        let (mut a, mut b) = tokio::io::duplex(1024);
        let stranger = async {
            a.write_all(b"AMQP\x00\x00\x09\x01").await.expect("write");
            drop(a);
        };
        let (_, accepted) = tokio::join!(stranger, accept(&mut b, YOU, b"secret"));
        assert!(matches!(accepted, Err(HandshakeError::Failed(_))), "{accepted:?}");
    }

    #[test]
    fn a_hello_carries_freshness_in_the_incarnations_top_bit() {
        let nonce = [7; NONCE_BYTES];
        for fresh in [false, true] {
            let me = Identity { node_id: 5, incarnation: u64::MAX, fresh };
            let back = parse_hello(&hello(me, &nonce)).expect("parses");
            assert_eq!(back, Identity { node_id: 5, incarnation: !FRESH_BIT, fresh });
        }
    }

    #[tokio::test]
    async fn a_refused_dialer_is_told_so_unless_it_is_fresh() {
        for fresh in [false, true] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            let dialer = Identity { fresh, ..YOU };
            let (dialed, accepted) = tokio::join!(
                dial(&mut a, dialer, b"secret", ME.node_id),
                accept_unless(&mut b, ME, b"secret", |id, fresh| id == YOU.node_id && !fresh)
            );
            if fresh {
                assert_eq!(dialed.expect("let in"), ME);
                assert_eq!(accepted.expect("let in"), dialer);
            } else {
                assert!(
                    matches!(dialed, Err(HandshakeError::Refused(ref why)) if why.contains("taken out")),
                    "{dialed:?}"
                );
                assert!(matches!(accepted, Err(HandshakeError::Refused(_))), "{accepted:?}");
            }
        }
    }

    #[test]
    fn proofs_depend_on_the_cookie_the_side_and_both_hellos() {
        let d = hello(ME, &[1; NONCE_BYTES]);
        let a = hello(YOU, &[2; NONCE_BYTES]);
        let base = proof(DIALER_LABEL, b"secret", &d, &a);
        assert_ne!(base, proof(DIALER_LABEL, b"secreT", &d, &a));
        assert_ne!(base, proof(ACCEPTOR_LABEL, b"secret", &d, &a));
        assert_ne!(base, proof(DIALER_LABEL, b"secret", &a, &d));
        let other_nonce = hello(ME, &[3; NONCE_BYTES]);
        assert_ne!(base, proof(DIALER_LABEL, b"secret", &other_nonce, &a));
        assert!(proof_holds(&base, DIALER_LABEL, b"secret", &d, &a));
        assert!(!proof_holds(&base, ACCEPTOR_LABEL, b"secret", &d, &a));
        assert!(!proof_holds(&base, DIALER_LABEL, b"other", &d, &a));
    }
}
