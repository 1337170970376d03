//! Black-box runs of the real `warren-perf` binary against the real `warren` broker.
//!
//! The broker is another package's binary, so it is found as `target/debug/warren` of the
//! workspace (or `$WARREN_BIN`); build it first with `cargo build -p warren`. When it is absent,
//! every test here says so on stderr and passes without running, rather than building it from
//! inside `cargo test` (which holds the build lock).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Longest wait for the broker to print its listening address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

fn broker_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("WARREN_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/warren");
    path.exists().then_some(path)
}

/// A `warren` process on ephemeral ports with a fresh data directory; killed on drop.
struct Broker {
    child: Child,
    data_dir: PathBuf,
    uri: String,
}

impl Broker {
    fn start() -> Option<Broker> {
        let Some(bin) = broker_binary() else {
            eprintln!(
                "SKIPPED: no broker binary at target/debug/warren; run `cargo build -p warren` (or set WARREN_BIN) \
                 to run the warren-perf integration tests"
            );
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "warren-perf-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = Command::new(&bin)
            .args(["--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the broker starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening amqp ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx.recv_timeout(STARTUP_TIMEOUT).expect("the broker prints its AMQP address");
        Some(Broker { child, data_dir, uri: format!("amqp://guest:guest@{addr}/%2f") })
    }

    /// Runs warren-perf against this broker; a scenario name comes first, then the URI.
    fn perf(&self, args: &[&str]) -> Output {
        let scenario = args.first().filter(|a| !a.starts_with('-'));
        let rest = if scenario.is_some() { &args[1..] } else { args };
        Command::new(env!("CARGO_BIN_EXE_warren-perf"))
            .args(scenario)
            .args(["--uri", &self.uri, "--quiet"])
            .args(rest)
            .output()
            .expect("warren-perf runs")
    }

    /// Runs warren-perf with `--json`, expects success, returns the summary.
    fn perf_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.perf(&[args, &["--json"]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "warren-perf {args:?} failed: {stderr}");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {stderr}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn count(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is a count in {v}"))
}

#[test]
fn transient_run_with_confirms_loses_and_duplicates_nothing() {
    let Some(broker) = Broker::start() else { return };
    let v = broker.perf_json(&["-x", "1", "-y", "1", "-C", "20000", "-D", "20000", "-c", "100"]);
    assert_eq!(count(&v, "published"), 20000, "{v}");
    assert_eq!(count(&v, "confirmed"), 20000, "{v}");
    assert_eq!(count(&v, "consumed"), 20000, "{v}");
    assert_eq!(count(&v, "lost"), 0, "{v}");
    assert_eq!(count(&v, "duplicated"), 0, "{v}");
    assert_eq!(count(&v, "latency_samples"), 20000, "{v}");
    assert!(v["consume_msgs_per_s"].as_f64().is_some_and(|r| r > 0.0), "{v}");
    assert!(v["latency_p99_us"].as_f64().is_some_and(|p| p > 0.0), "{v}");
    assert!(v["error"].is_null(), "{v}");
}

#[test]
fn persistent_run_with_confirms_prefetch_and_manual_acks() {
    let Some(broker) = Broker::start() else { return };
    let v = broker
        .perf_json(&["-x", "2", "-y", "2", "-s", "1024", "-f", "-c", "100", "-q", "100", "-C", "3000", "-D", "3000"]);
    assert_eq!(count(&v, "published"), 6000, "{v}");
    assert_eq!(count(&v, "confirmed"), 6000, "{v}");
    assert_eq!(count(&v, "consumed"), 6000, "{v}");
    assert_eq!(count(&v, "lost"), 0, "{v}");
    // Deliveries prefetched past -D by the consumer that finishes first are requeued and
    // redelivered to the other one: redelivered, not duplicated.
    assert_eq!(count(&v, "duplicated"), 0, "{v}");
    assert_eq!(v["persistent"], true);
    let mb = v["consume_mb_per_s"].as_f64().expect("a rate");
    let msgs = v["consume_msgs_per_s"].as_f64().expect("a rate");
    assert!((mb - msgs * 1024.0 / 1e6).abs() < 1e-6, "MB/s counts 1 KiB bodies: {v}");
}

/// `multiple` acks are only safe when deliveries arrive in delivery-tag order (Warren once wrote
/// deliveries freed by a consumer's own ack ahead of earlier ones: 406 unknown delivery tag).
#[test]
fn multi_ack_with_confirms_and_prefetch() {
    let Some(broker) = Broker::start() else { return };
    for _ in 0..5 {
        let v = broker.perf_json(&["-s", "1024", "-c", "100", "-q", "100", "-A", "10", "-C", "3000", "-D", "3000"]);
        assert_eq!(count(&v, "consumed"), 3000, "{v}");
        assert_eq!(count(&v, "reordered"), 0, "{v}");
    }
}

#[test]
fn fanout_delivers_every_message_to_every_queue() {
    let Some(broker) = Broker::start() else { return };
    let v = broker.perf_json(&[
        "-e",
        "perf-fanout",
        "-t",
        "fanout",
        "--queues",
        "3",
        "-x",
        "1",
        "-y",
        "3",
        "-C",
        "2000",
        "-a",
    ]);
    assert_eq!(count(&v, "published"), 2000, "{v}");
    assert_eq!(count(&v, "consumed"), 6000, "{v}");
    assert_eq!(count(&v, "lost"), 0, "{v}");
    assert_eq!(count(&v, "duplicated"), 0, "{v}");
}

#[test]
fn topic_with_extra_bindings_routes_each_producer_to_its_queue() {
    let Some(broker) = Broker::start() else { return };
    let v = broker.perf_json(&[
        "-e",
        "perf-topic",
        "-t",
        "topic",
        "--queues",
        "2",
        "--bindings-per-queue",
        "5",
        "-x",
        "2",
        "-y",
        "2",
        "-C",
        "2000",
        "-q",
        "50",
    ]);
    assert_eq!(count(&v, "consumed"), 4000, "{v}");
    assert_eq!(count(&v, "lost"), 0, "{v}");
    assert_eq!(count(&v, "foreign"), 0, "{v}");
}

#[test]
fn a_broker_error_is_reported_with_its_reply_code_and_fails_the_run() {
    let Some(broker) = Broker::start() else { return };
    let out = broker.perf(&["--no-declare", "-u", "no-such-queue", "-x", "0", "-y", "1", "-z", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("404"), "the reply code is printed: {stderr}");
    assert!(stderr.contains("no-such-queue"), "the reply text is printed: {stderr}");
}

#[test]
fn queue_arguments_reach_the_broker_and_several_uris_share_the_run() {
    let Some(broker) = Broker::start() else { return };
    // A negative length limit is refused (406): the argument went out with the declare.
    let out = broker.perf(&["-u", "qa-bad", "-x", "1", "-y", "0", "-C", "1", "--queue-args", "x-max-length=-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("406") && stderr.contains("x-max-length"), "{stderr}");
    // Two URIs (the same broker twice): producers and consumers connect to them in turn.
    let uris = format!("{0},{0}", broker.uri);
    let out = Command::new(env!("CARGO_BIN_EXE_warren-perf"))
        .args(["--uris", &uris, "--quiet", "--json", "-x", "2", "-y", "2", "-c", "10", "-C", "500", "-D", "500"])
        .args(["-u", "qa-uris", "--queue-args", "x-max-length=100000,x-queue-mode=default"])
        .output()
        .expect("warren-perf runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(count(&v, "confirmed"), 1000, "{v}");
    assert_eq!(count(&v, "consumed"), 1000, "{v}");
    assert_eq!(count(&v, "lost"), 0, "{v}");
}

#[test]
fn scenarios_run_and_report() {
    let Some(broker) = Broker::start() else { return };
    let v = broker.perf_json(&["connection-churn", "-z", "0.5", "-P", "2", "--channel"]);
    assert!(count(&v, "connections") > 0, "{v}");
    let v = broker.perf_json(&["queue-churn", "-z", "0.5", "--durable"]);
    assert!(count(&v, "queues") > 0, "{v}");
    let out = broker.perf(&["idle-connections", "--count", "50", "-z", "0.2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");
}
