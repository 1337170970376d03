//! Settings and limits the core enforces. Defaults are RabbitMQ's.

/// RabbitMQ's default largest message body: 16 MiB (it allows raising it to 512 MiB).
pub const MAX_MESSAGE_SIZE_DEFAULT: u64 = 16 * 1024 * 1024;
/// RabbitMQ's default consumer acknowledgement timeout: 30 minutes.
pub const CONSUMER_TIMEOUT_MS_DEFAULT: u64 = 30 * 60 * 1000;
/// RabbitMQ's default highest channel number per connection.
pub const CHANNEL_MAX_DEFAULT: u16 = 2047;
/// A failed login is answered after this long.
pub const AUTH_FAILURE_DELAY_MS_DEFAULT: u64 = 1000;
/// RabbitMQ's default handshake timeout: 10 s.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How long one write to a client may take before the connection is given up (RabbitMQ's
/// `tcp_listen_options.send_timeout`, 15 s): a client that stops reading must not keep its
/// connection, its unacked messages and its buffers forever.
pub const SEND_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// RabbitMQ's default frame_max.
pub const FRAME_MAX_DEFAULT: u32 = 131_072;
/// RabbitMQ's default heartbeat, seconds.
pub const HEARTBEAT_DEFAULT_S: u16 = 60;
/// Deliveries to a connection stop while this many bytes wait to be written to its socket, so
/// a slow consumer that acks automatically cannot make the broker buffer without bound. 4 MiB
/// is a few round trips of 64 KiB socket buffers at full speed.
pub const CONNECTION_OUTBOUND_MAX_BYTES: usize = 1024 * 1024;

use crate::auth::{CertLoginFrom, Mechanism, DEFAULT_MECHANISMS};

#[derive(Debug, Clone)]
pub struct Config {
    pub max_message_size: u64,
    /// None disables the consumer acknowledgement timeout.
    pub consumer_timeout_ms: Option<u64>,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat_s: u16,
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// Users that may only connect from the loopback interface (RabbitMQ: loopback_users).
    pub loopback_users: Vec<String>,
    /// How long a client has from TCP connect to connection.open (RabbitMQ: handshake_timeout).
    pub handshake_timeout_ms: u64,
    /// How long one write to a client may block (RabbitMQ: tcp_listen_options.send_timeout).
    pub send_timeout_ms: u64,
    /// Client connections the node accepts at once (RabbitMQ: connection_max); `None`: no limit.
    pub connection_max: Option<u32>,
    /// Consumers one channel may hold (RabbitMQ: consumer_max_per_channel); `None`: no limit.
    pub consumer_max_per_channel: Option<u32>,
    /// Unacknowledged deliveries one channel may hold (Warren's `unacked_max_per_channel`):
    /// consumers get no more until some are settled, and basic.get past it closes the channel
    /// with 406. Bounds the memory a client that never acks can pin. `None`: no limit.
    pub unacked_max_per_channel: Option<u32>,
    /// How many connections may do data-plane work at once (Warren's
    /// `data_plane_parallelism`): above 1, whole publishes are handled with the broker shared,
    /// each holding its own session and one queue at a time, and that many heavy publishers
    /// less one (at least one) take their turns together. 1 holds the whole broker for every batch (one owner, as
    /// before); 0, the default, is the number of cores.
    pub data_plane_parallelism: usize,
    /// How long a failed login waits before it is answered, so passwords cannot be tried at
    /// speed (Warren's `auth_failure_delay`, ms).
    pub auth_failure_delay_ms: u64,
    /// The SASL mechanisms offered in connection.start, in this order (RabbitMQ:
    /// `auth_mechanisms.N`); EXTERNAL only to TLS clients with a verified certificate.
    pub auth_mechanisms: Vec<Mechanism>,
    /// Where EXTERNAL reads the user name in the client certificate (`ssl_cert_login_from`).
    pub ssl_cert_login_from: CertLoginFrom,
    /// With `ssl_cert_login_from = subject_alternative_name`: which one
    /// (`ssl_cert_login_san_type`, `ssl_cert_login_san_index`).
    pub ssl_cert_login_san: crate::auth::SanSelector,
    /// The seed of the broker's randomness (generated queue names and consumer tags, password
    /// salts): an input like time, so a test or a simulation can replay a run exactly.
    /// `Config::default()` draws a random one.
    pub seed: u64,
}

/// The default cap on a channel's unacknowledged deliveries: far above any prefetch a client
/// sets for throughput (prefetch counts stop at 65,535 per consumer), low enough that a client
/// which never acks cannot pin an unbounded number of messages in memory.
pub const UNACKED_MAX_PER_CHANNEL_DEFAULT: u32 = 100_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: MAX_MESSAGE_SIZE_DEFAULT,
            consumer_timeout_ms: Some(CONSUMER_TIMEOUT_MS_DEFAULT),
            channel_max: CHANNEL_MAX_DEFAULT,
            frame_max: FRAME_MAX_DEFAULT,
            heartbeat_s: HEARTBEAT_DEFAULT_S,
            default_user: "guest".into(),
            default_pass: "guest".into(),
            default_vhost: "/".into(),
            loopback_users: vec!["guest".into()],
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            send_timeout_ms: SEND_TIMEOUT_MS_DEFAULT,
            connection_max: None,
            consumer_max_per_channel: None,
            unacked_max_per_channel: Some(UNACKED_MAX_PER_CHANNEL_DEFAULT),
            data_plane_parallelism: 0,
            auth_failure_delay_ms: AUTH_FAILURE_DELAY_MS_DEFAULT,
            auth_mechanisms: DEFAULT_MECHANISMS.to_vec(),
            ssl_cert_login_from: CertLoginFrom::default(),
            ssl_cert_login_san: Default::default(),
            seed: fastrand::u64(..),
        }
    }
}
