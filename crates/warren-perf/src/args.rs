//! The command line: PerfTest's flags for a throughput run (long names, and PerfTest's short
//! letters), plus lavinmqperf-like scenarios as subcommands.
//!
//! Parsing is clap's; [`PerfArgs::validate`] then refuses combinations that cannot mean anything
//! (with a message saying why) so that the run itself never has to guess.

use crate::stamp::STAMP_LEN;
use crate::uri::AmqpUri;
use clap::{Args, Parser, Subcommand, ValueEnum};
use warren_amqp::shortstr::SHORT_STR_MAX;
use warren_amqp::{FieldTable, FieldValue};

pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The largest body: RabbitMQ's default max_message_size (16 MiB), which Warren shares.
pub const SIZE_MAX: u32 = 16 << 20;
/// Most producers, consumers or queues in one run: each producer and consumer is a connection
/// with buffers of its own, and queues are declared one by one.
pub const CONNECTIONS_MAX: u32 = 10_000;
/// Most worker threads: the tool shares the machine with the broker and needs few.
pub const THREADS_MAX: usize = 64;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "warren-perf",
    version,
    about = "Load generator for AMQP 0-9-1 brokers: throughput, latency, loss; connection and queue churn",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    #[command(flatten)]
    pub perf: PerfArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Open and close connections as fast as possible; report connections per second.
    ConnectionChurn(ChurnArgs),
    /// Declare and delete queues on one channel as fast as possible; report queues per second.
    QueueChurn(QueueChurnArgs),
    /// Open N connections with one channel each and hold them; print "ready" on stdout once all
    /// are open.
    IdleConnections(IdleArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// A throughput run.
#[derive(Args, Debug, Clone)]
pub struct PerfArgs {
    /// Broker URI.
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri)]
    pub uri: AmqpUri,
    /// Several broker URIs, comma-separated (PerfTest's --uris), instead of --uri: the nodes of
    /// a cluster. Producer i and consumer i connect to URI i modulo their number; the queues and
    /// bindings are declared through the first.
    #[arg(long, value_parser = parse_uri, value_delimiter = ',', conflicts_with = "uri")]
    pub uris: Vec<AmqpUri>,
    /// Queue arguments, comma-separated key=value pairs (PerfTest's --queue-args), e.g.
    /// x-queue-type=quorum,x-max-length=1000: an integer value is sent as a long, true and
    /// false as booleans, anything else as a string.
    #[arg(long, value_parser = parse_queue_arg, value_delimiter = ',', value_name = "KEY=VALUE,...")]
    pub queue_args: Vec<(String, String)>,
    /// Producers, each on its own connection.
    #[arg(short = 'x', long, default_value_t = 1)]
    pub producers: u32,
    /// Consumers, each on its own connection.
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: u32,
    /// Message body size in bytes (at least 16: the body carries a timestamp and a sequence).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: u32,
    /// Queue name (default: server-named queues, deleted at the end of the run).
    #[arg(short = 'u', long)]
    pub queue: Option<String>,
    /// Spread producers and consumers over N queues, named <queue>-1..N.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Exchange to publish to ("" is the default exchange, routing by queue name).
    #[arg(short = 'e', long, default_value = "")]
    pub exchange: String,
    /// Exchange type, when --exchange names one.
    #[arg(short = 't', long = "type", value_enum, default_value_t = ExchangeKind::Direct)]
    pub kind: ExchangeKind,
    /// Routing key of every publish and binding (default: each queue's name).
    #[arg(short = 'k', long)]
    pub routing_key: Option<String>,
    /// Extra bindings per queue with distinct keys no message matches (direct and topic), to
    /// load the routing table.
    #[arg(long, default_value_t = 0)]
    pub bindings_per_queue: u32,
    /// Consumer prefetch (basic.qos prefetch_count); 0 is unlimited.
    #[arg(short = 'q', long, default_value_t = 0)]
    pub prefetch: u16,
    /// Consume with no_ack (the broker forgets a message once it is sent).
    #[arg(short = 'a', long, conflicts_with = "multi_ack_every")]
    pub auto_ack: bool,
    /// Manual acks with multiple=true every N messages (default: one ack per message).
    #[arg(short = 'A', long, value_name = "N")]
    pub multi_ack_every: Option<u32>,
    /// Publisher confirms with at most N messages outstanding per producer.
    #[arg(short = 'c', long, value_name = "N")]
    pub confirm: Option<u32>,
    /// Persistent messages (delivery_mode 2) and durable queues.
    #[arg(short = 'f', long)]
    pub persistent: bool,
    /// Messages per second per producer; 0 is unlimited.
    #[arg(short = 'r', long, default_value_t = 0, value_name = "MSGS_PER_S")]
    pub rate: u32,
    /// Stop after this many seconds.
    #[arg(short = 'z', long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Messages per producer, then the producer stops.
    #[arg(short = 'C', long, value_name = "N")]
    pub pmessages: Option<u64>,
    /// Messages per consumer, then the consumer stops.
    #[arg(short = 'D', long, value_name = "N")]
    pub cmessages: Option<u64>,
    /// Use the existing queue(s) named by --queue; declare and bind nothing.
    #[arg(long)]
    pub no_declare: bool,
    /// Print one JSON object with the results instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Once producers are done, consumers stop after this many seconds without a delivery.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub drain_timeout: f64,
    /// Runtime threads (1 runs every connection on one thread).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Also report this process's CPU time and peak RSS during the run (the broker's pid).
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri)]
    pub uri: AmqpUri,
    /// Seconds to run.
    #[arg(short = 'z', long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Connections opened and closed concurrently.
    #[arg(short = 'P', long, default_value_t = 1)]
    pub parallel: u32,
    /// Also open a channel on every connection before closing it.
    #[arg(long)]
    pub channel: bool,
    /// Behave like a crashing client: open a channel, declare a server-named exclusive queue,
    /// consume from it, then drop the TCP connection without connection.close.
    #[arg(long)]
    pub abrupt: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct QueueChurnArgs {
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri)]
    pub uri: AmqpUri,
    /// Seconds to run.
    #[arg(short = 'z', long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Declare durable queues (they go through the broker's definitions store).
    #[arg(long)]
    pub durable: bool,
    /// Declare-and-delete cycles per second; 0 is as fast as the broker answers.
    #[arg(short = 'r', long, default_value_t = 0, value_name = "CYCLES_PER_S")]
    pub rate: u32,
    /// First declare this many more queues and keep them until the end (a broker with many
    /// queues, for whoever lists them meanwhile); they are deleted at the end.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub keep: u32,
    /// Print "ready" on stdout once the kept queues are declared and the churn starts.
    #[arg(long)]
    pub announce: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[arg(long, default_value = DEFAULT_URI, value_parser = parse_uri)]
    pub uri: AmqpUri,
    /// Connections to open.
    #[arg(long)]
    pub count: u32,
    /// Hold them this many seconds (default: until SIGINT or SIGTERM).
    #[arg(short = 'z', long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Connections being opened at once.
    #[arg(short = 'P', long, default_value_t = 16)]
    pub parallel: u32,
    #[arg(long)]
    pub quiet: bool,
}

fn parse_uri(s: &str) -> Result<AmqpUri, String> {
    AmqpUri::parse(s)
}

fn parse_queue_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s}: a queue argument is KEY=VALUE")),
    }
}

fn check_seconds(name: &str, s: f64) -> Result<(), String> {
    // A year bounds it so that Duration::from_secs_f64 never panics.
    if s.is_finite() && s > 0.0 && s <= 365.0 * 86400.0 {
        Ok(())
    } else {
        Err(format!("{name} must be a number of seconds above 0, got {s}"))
    }
}

impl PerfArgs {
    /// The URI the queues and bindings are declared through: the first of `--uris`, else `--uri`.
    pub fn setup_uri(&self) -> &AmqpUri {
        self.uris.first().unwrap_or(&self.uri)
    }

    /// The URI producer or consumer `i` connects to.
    pub fn uri_for(&self, i: usize) -> &AmqpUri {
        if self.uris.is_empty() {
            &self.uri
        } else {
            &self.uris[i % self.uris.len()]
        }
    }

    /// `--queue-args` as a field table: integers as longs, true and false as booleans, the
    /// rest as strings.
    pub fn queue_arguments(&self) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in &self.queue_args {
            let value = if let Ok(n) = v.parse::<i64>() {
                FieldValue::I64(n)
            } else if v == "true" || v == "false" {
                FieldValue::Bool(v == "true")
            } else {
                FieldValue::from(v.as_str())
            };
            t.insert(k.as_str(), value);
        }
        t
    }

    /// Refuses combinations that cannot mean anything.
    pub fn validate(&self) -> Result<(), String> {
        if (self.size as usize) < STAMP_LEN {
            return Err(format!(
                "--size {} is too small: a body carries a {STAMP_LEN}-byte timestamp and sequence",
                self.size
            ));
        }
        if self.size > SIZE_MAX {
            return Err(format!("--size {} is over the 16 MiB brokers accept", self.size));
        }
        for (name, n) in [("--producers", self.producers), ("--consumers", self.consumers), ("--queues", self.queues)] {
            if n > CONNECTIONS_MAX {
                return Err(format!("{name} {n} is over the limit of {CONNECTIONS_MAX}"));
            }
        }
        if self.producers == 0 && self.consumers == 0 {
            return Err("nothing to do: --producers and --consumers are both 0".into());
        }
        if self.queues == 0 {
            return Err("--queues must be at least 1".into());
        }
        if self.confirm == Some(0) {
            return Err("--confirm needs at least 1 outstanding message".into());
        }
        if self.multi_ack_every == Some(0) {
            return Err("--multi-ack-every must be at least 1".into());
        }
        if let Some(c) = self.pmessages {
            if c > u32::MAX as u64 {
                return Err(format!("--pmessages {c} is over {} (sequence numbers are 32-bit)", u32::MAX));
            }
        }
        if let Some(d) = self.duration {
            check_seconds("--duration", d)?;
        }
        check_seconds("--drain-timeout", self.drain_timeout)?;
        if self.threads == 0 || self.threads > THREADS_MAX {
            return Err(format!("--threads must be from 1 to {THREADS_MAX}"));
        }
        if self.exchange.is_empty() {
            if self.routing_key.is_some() {
                return Err("--routing-key needs --exchange: the default exchange routes by queue name".into());
            }
            if self.bindings_per_queue > 0 {
                return Err("--bindings-per-queue needs --exchange: the default exchange has no bindings".into());
            }
        }
        if self.bindings_per_queue > 0 && !matches!(self.kind, ExchangeKind::Direct | ExchangeKind::Topic) {
            return Err("--bindings-per-queue applies to direct and topic exchanges only".into());
        }
        let suffix = if self.queues > 1 { format!("-{}", self.queues).len() } else { 0 };
        for (name, value, extra) in [
            ("--queue", self.queue.as_deref(), suffix),
            ("--exchange", Some(self.exchange.as_str()), 0),
            ("--routing-key", self.routing_key.as_deref(), 0),
        ] {
            if value.is_some_and(|v| v.len() + extra > SHORT_STR_MAX) {
                return Err(format!(
                    "{name} is longer than the {SHORT_STR_MAX} bytes AMQP allows (with any -N suffix)"
                ));
            }
        }
        if self.no_declare && self.queue.is_none() {
            return Err("--no-declare needs --queue to name the existing queue".into());
        }
        if self.no_declare && !self.queue_args.is_empty() {
            return Err("--queue-args needs a declare: --no-declare declares nothing".into());
        }
        for (k, _) in &self.queue_args {
            if k.len() > SHORT_STR_MAX {
                return Err(format!("--queue-args: the key {k:.20}... is longer than {SHORT_STR_MAX} bytes"));
            }
        }
        Ok(())
    }
}

impl ChurnArgs {
    pub fn validate(&self) -> Result<(), String> {
        check_seconds("--duration", self.duration)?;
        if self.parallel == 0 || self.parallel > CONNECTIONS_MAX {
            return Err(format!("--parallel must be from 1 to {CONNECTIONS_MAX}"));
        }
        Ok(())
    }
}

impl QueueChurnArgs {
    pub fn validate(&self) -> Result<(), String> {
        check_seconds("--duration", self.duration)
    }
}

impl IdleArgs {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(d) = self.duration {
            check_seconds("--duration", d)?;
        }
        if self.parallel == 0 || self.parallel > CONNECTIONS_MAX {
            return Err(format!("--parallel must be from 1 to {CONNECTIONS_MAX}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("warren-perf").chain(args.iter().copied()))
    }

    fn perf(args: &[&str]) -> PerfArgs {
        let c = cli(args).expect("parses");
        assert!(c.scenario.is_none());
        c.perf
    }

    #[test]
    fn defaults() {
        let p = perf(&[]);
        assert_eq!(p.uri.address(), "127.0.0.1:5672");
        assert_eq!(p.uri.vhost, "/");
        assert_eq!((p.producers, p.consumers, p.size, p.queues), (1, 1, 16, 1));
        assert_eq!(p.exchange, "");
        assert_eq!(p.kind, ExchangeKind::Direct);
        assert_eq!((p.prefetch, p.auto_ack, p.multi_ack_every, p.confirm), (0, false, None, None));
        assert_eq!((p.rate, p.duration, p.pmessages, p.cmessages), (0, None, None, None));
        assert!(!p.persistent && !p.no_declare && !p.json && !p.quiet);
        assert_eq!(p.threads, 1);
        p.validate().expect("defaults are valid");
    }

    #[test]
    fn perftest_short_flags() {
        let p = perf(&[
            "-x", "2", "-y", "3", "-s", "1024", "-u", "q", "-e", "ex", "-t", "topic", "-k", "a.b", "-q", "100", "-A",
            "10", "-c", "100", "-f", "-r", "500", "-z", "5", "-C", "1000", "-D", "2000",
        ]);
        assert_eq!((p.producers, p.consumers, p.size), (2, 3, 1024));
        assert_eq!(p.queue.as_deref(), Some("q"));
        assert_eq!((p.exchange.as_str(), p.kind), ("ex", ExchangeKind::Topic));
        assert_eq!(p.routing_key.as_deref(), Some("a.b"));
        assert_eq!((p.prefetch, p.multi_ack_every, p.confirm), (100, Some(10), Some(100)));
        assert!(p.persistent);
        assert_eq!((p.rate, p.duration, p.pmessages, p.cmessages), (500, Some(5.0), Some(1000), Some(2000)));
        p.validate().expect("valid");
        assert!(perf(&["-a"]).auto_ack);
    }

    #[test]
    fn long_flags() {
        let p = perf(&[
            "--uri",
            "amqp://u:p@h:5690/v",
            "--producers",
            "4",
            "--queues",
            "10",
            "--bindings-per-queue",
            "10",
            "--exchange",
            "t",
            "--type",
            "topic",
            "--no-declare",
            "--queue",
            "bench",
            "--json",
            "--quiet",
            "--threads",
            "2",
        ]);
        assert_eq!(p.uri.port, 5690);
        assert_eq!((p.producers, p.queues, p.bindings_per_queue), (4, 10, 10));
        assert!(p.no_declare && p.json && p.quiet);
        p.validate().expect("valid");
    }

    #[test]
    fn several_uris_and_queue_arguments() {
        let p = perf(&[
            "--uris",
            "amqp://h:1/%2f,amqp://h:2/%2f,amqp://h:3/%2f",
            "--queue-args",
            "x-queue-type=quorum,x-max-length=10,x-single-active-consumer=true",
        ]);
        p.validate().expect("valid");
        assert_eq!(p.setup_uri().port, 1);
        assert_eq!([0, 1, 2, 3, 4].map(|i| p.uri_for(i).port), [1, 2, 3, 1, 2]);
        let t = p.queue_arguments();
        assert_eq!(t.get("x-queue-type").and_then(|v| v.as_str()), Some("quorum"));
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(t.get("x-single-active-consumer"), Some(&FieldValue::Bool(true)));
        let one = perf(&["--uri", "amqp://h:9/%2f"]);
        assert_eq!((one.setup_uri().port, one.uri_for(5).port), (9, 9));
        assert!(one.queue_arguments().is_empty());
        assert!(cli(&["--uri", "amqp://h:1", "--uris", "amqp://h:2"]).is_err(), "--uri and --uris conflict");
        assert!(cli(&["--queue-args", "novalue"]).is_err());
        let err = perf(&["-u", "q", "--no-declare", "--queue-args", "a=b"]).validate().expect_err("invalid");
        assert!(err.contains("--no-declare"), "{err}");
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        let bad = |args: &[&str], why: &str| {
            let err = perf(args).validate().expect_err("invalid");
            assert!(err.contains(why), "{args:?}: {err}");
        };
        bad(&["-s", "15"], "too small");
        perf(&["-s", "16"]).validate().expect("16 bytes is the minimum");
        bad(&["-s", &(SIZE_MAX + 1).to_string()], "16 MiB");
        perf(&["-s", &SIZE_MAX.to_string()]).validate().expect("16 MiB is the maximum");
        bad(&["-x", "0", "-y", "0"], "nothing to do");
        bad(&["-k", "key"], "needs --exchange");
        bad(&["--bindings-per-queue", "3"], "needs --exchange");
        bad(&["-e", "x", "-t", "fanout", "--bindings-per-queue", "3"], "direct and topic");
        bad(&["--no-declare"], "needs --queue");
        bad(&["-c", "0"], "at least 1");
        bad(&["-A", "0"], "at least 1");
        bad(&["-z", "0"], "above 0");
        bad(&["-C", "4294967296"], "32-bit");
        perf(&["-C", "4294967295"]).validate().expect("u32::MAX messages is fine");
        bad(&["--queues", "0"], "at least 1");
        bad(&["-x", &(CONNECTIONS_MAX + 1).to_string()], "limit");
        bad(&["--threads", "0"], "--threads");
        let long = "q".repeat(255);
        perf(&["-u", &long]).validate().expect("255 bytes is a short string");
        bad(&["-u", &long, "--queues", "2"], "longer than");
        bad(&["-e", &"e".repeat(256)], "longer than");
        assert!(cli(&["-a", "-A", "5"]).is_err(), "auto-ack and multi-ack conflict");
        assert!(cli(&["-t", "x-custom"]).is_err(), "unknown exchange type");
        assert!(cli(&["--uri", "amqps://h"]).is_err());
    }

    #[test]
    fn scenarios() {
        match cli(&["connection-churn", "--uri", "amqp://h:1/%2f", "-z", "2", "-P", "4"]).expect("parses").scenario {
            Some(Scenario::ConnectionChurn(a)) => {
                assert_eq!((a.duration, a.parallel, a.uri.port), (2.0, 4, 1));
                a.validate().expect("valid");
            }
            other => panic!("{other:?}"),
        }
        match cli(&["queue-churn", "--durable"]).expect("parses").scenario {
            Some(Scenario::QueueChurn(a)) => assert!(a.durable),
            other => panic!("{other:?}"),
        }
        match cli(&["idle-connections", "--count", "1000"]).expect("parses").scenario {
            Some(Scenario::IdleConnections(a)) => {
                assert_eq!((a.count, a.duration), (1000, None));
                a.validate().expect("valid");
            }
            other => panic!("{other:?}"),
        }
        assert!(cli(&["idle-connections"]).is_err(), "--count is required");
        assert!(cli(&["-x", "2", "queue-churn"]).is_err(), "run flags and scenarios do not mix");
    }
}
