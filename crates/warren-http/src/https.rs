//! HTTPS for the management listener: [`TlsListener`], which axum serves as it serves a TCP
//! listener, except that every stream it yields has finished its TLS handshake.
//!
//! Handshakes run in their own tasks, each bounded by the handshake timeout, and only streams
//! whose handshake succeeded are handed on; a client that connects and says nothing therefore
//! holds up nobody else. At most [`HANDSHAKES_IN_FLIGHT_MAX`] handshakes run at once: past that,
//! new connections wait in the kernel's accept backlog until one ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes in progress at once. Each costs a task and some buffers until it ends or
/// times out; the bound keeps a flood of connections that never finish from costing more.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// Handshaken connections waiting for axum to take them. axum takes each as soon as it can
/// spawn a task for it, so this only smooths bursts; when it is full, finished handshakes wait
/// (holding their slot), which in the end pauses accepting.
const READY_MAX: usize = 64;

/// How long accepting pauses after the listener failed (out of file descriptors and the like),
/// rather than spinning on the error.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

type Ready = (TlsStream<TcpStream>, SocketAddr);

/// A TCP listener whose connections are yielded after their TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<Ready>,
    local: SocketAddr,
    /// Accepts and starts handshakes; stopped when the listener is dropped.
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`; each handshake may take up to `handshake_timeout`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, handshake_timeout: Duration) -> std::io::Result<Self> {
        Self::with_limit(listener, acceptor, handshake_timeout, HANDSHAKES_IN_FLIGHT_MAX)
    }

    fn with_limit(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
        in_flight_max: usize,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_MAX);
        let slots = Arc::new(Semaphore::new(in_flight_max));
        let accepting = tokio::spawn(accept_loop(listener, acceptor, handshake_timeout, slots, tx));
        Ok(TlsListener { ready, local, accepting })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    slots: Arc<Semaphore>,
    ready: mpsc::Sender<Ready>,
) {
    loop {
        // A slot before accepting: past the limit, connections wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("HTTPS accept failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await {
                // Fails only when the listener is gone, and the connection with it.
                Ok(Ok(stream)) => drop(ready.send((stream, peer)).await),
                Ok(Err(e)) => tracing::info!("HTTPS: TLS handshake with {peer} failed: {e}"),
                Err(_) => tracing::info!("HTTPS: TLS handshake with {peer} timed out"),
            }
            drop(slot);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task keeps a sender until the listener is dropped, so this is not
            // reached; should it be, wait rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::TlsConnector;

    /// A self-signed certificate for localhost: the acceptor, and a connector that trusts it.
    fn pair() -> (TlsAcceptor, TlsConnector) {
        let key = KeyPair::generate().expect("key");
        let cert =
            CertificateParams::new(vec!["localhost".to_string()]).expect("params").self_signed(&key).expect("cert");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let der: CertificateDer<'static> = cert.der().clone();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(der).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (TlsAcceptor::from(Arc::new(server)), TlsConnector::from(Arc::new(client)))
    }

    /// Connects, finishes the TLS handshake and sends a byte; returns what the server received.
    async fn handshake_through(listener: &mut TlsListener, connector: &TlsConnector) -> u8 {
        let addr = listener.local_addr().expect("addr");
        let client = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            let mut tls = connector.connect(name, tcp).await.expect("client handshake");
            tls.write_all(b"x").await.expect("write");
            tls.flush().await.expect("flush");
            tls
        };
        let server = async {
            let (mut stream, _) = listener.accept().await;
            stream.read_u8().await.expect("read")
        };
        let (_client, byte) = tokio::join!(client, server);
        byte
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_silent_client_does_not_hold_up_the_next_one() {
        let (acceptor, connector) = pair();
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut listener = TlsListener::new(tcp, acceptor, LONG).expect("listener");
        let addr = listener.local_addr().expect("addr");
        // Connects and never starts its handshake.
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let byte = tokio::time::timeout(Duration::from_secs(10), handshake_through(&mut listener, &connector)).await;
        assert_eq!(byte.expect("a second client served while the first is silent"), b'x');
    }

    #[tokio::test]
    async fn past_the_in_flight_limit_a_client_waits_for_a_slot() {
        const LIMIT: usize = 4;
        let (acceptor, connector) = pair();
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let timeout = Duration::from_secs(1);
        let mut listener = TlsListener::with_limit(tcp, acceptor, timeout, LIMIT).expect("listener");
        let addr = listener.local_addr().expect("addr");
        // LIMIT - 1 silent connections leave one slot: a real client gets it at once.
        let mut silent = Vec::new();
        for _ in 0..LIMIT - 1 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let started = tokio::time::Instant::now();
        assert_eq!(handshake_through(&mut listener, &connector).await, b'x');
        assert!(started.elapsed() < timeout, "served at the limit without waiting for a slot");
        // Every slot taken by a silent connection: the next client is served only once their
        // handshakes time out and free the slots.
        for _ in 0..LIMIT {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let started = tokio::time::Instant::now();
        let byte = tokio::time::timeout(LONG, handshake_through(&mut listener, &connector)).await;
        assert_eq!(byte.expect("served once a slot freed"), b'x');
        assert!(started.elapsed() >= timeout / 2, "served before any silent handshake timed out");
    }
}
