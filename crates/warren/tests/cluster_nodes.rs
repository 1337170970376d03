//! Cluster configuration and node liveness with real `warren` processes: three nodes configured
//! as one cluster (`cluster_formation.classic_config.nodes.N`, `WARREN_NODENAME`, a shared
//! `.cookie`) on 127.0.0.1 see each other running through `/api/nodes` and
//! `warrenctl cluster_status`; a node killed is reported down by the others; the same node back
//! with another cookie is never seen running, and with the right one again it is. Bad cluster
//! configuration stops the start with a message naming it, and a node on its own has no cookie
//! and no inter-node listener.

mod common;

use common::cluster::{
    cluster_status, free_port, get, nodes, random_cookie, temp_dir, wait_nodes, write_cookie, Dirs, Node,
    START_FAILURE_WITHIN,
};
use common::{eventually, Broker};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_and_a_lost_node() {
    if Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let cookie = random_cookie();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names: Vec<String> = (1..=3).map(|i| format!("warren{i}@127.0.0.1")).collect();
    let mut conf = String::from(
        "cluster_name = itest\ncluster_formation.peer_discovery_backend = classic_config\n\
         distribution.listener.interface = 127.0.0.1\n",
    );
    for (i, (name, port)) in names.iter().zip(&ports).enumerate() {
        conf.push_str(&format!("cluster_formation.classic_config.nodes.{} = {name}:{port}\n", i + 1));
    }
    let dirs = Dirs((0..3).map(|_| temp_dir("warren-cluster-node")).collect());
    let mut members: Vec<Node> = names
        .iter()
        .zip(&dirs.0)
        .map(|(name, dir)| Node { name: name.clone(), dir: dir.clone(), broker: None })
        .collect();
    for node in &mut members {
        write_cookie(&node.dir, &cookie);
        node.start(&conf);
    }

    // Every node sees all three running.
    let all_up: Vec<(String, bool)> = names.iter().map(|n| (n.clone(), true)).collect();
    for node in &members {
        wait_nodes(&node.http(), "all three running", &all_up).await;
    }
    for node in &members {
        let (_, overview) = get(&node.http(), "/api/overview").await;
        assert_eq!(overview["cluster_name"], "itest", "{overview}");
        assert_eq!(overview["node"], node.name.as_str(), "{overview}");
        let (_, name) = get(&node.http(), "/api/cluster-name").await;
        assert_eq!(name, serde_json::json!({"name": "itest"}));
    }
    // This node with its figures, another with what is known of it; unknown names are 404.
    let first = members[0].http();
    let (status, me) = get(&first, &format!("/api/nodes/{}", names[0])).await;
    assert_eq!((status, me["running"].as_bool(), me["type"].as_str()), (200, Some(true), Some("disc")), "{me}");
    assert!(me["mem_used"].as_u64().is_some() && me["uptime"].as_u64().is_some(), "{me}");
    let (status, other) = get(&first, &format!("/api/nodes/{}", names[1])).await;
    assert_eq!(
        (status, other["name"].as_str(), other["running"].as_bool()),
        (200, Some(names[1].as_str()), Some(true))
    );
    let (status, _) = get(&first, "/api/nodes/nobody@127.0.0.1").await;
    assert_eq!(status, 404);
    let (_, vhost) = get(&first, "/api/vhosts/%2F").await;
    for name in &names {
        assert_eq!(vhost["cluster_state"][name], "running", "{vhost}");
    }

    let status = cluster_status(&first, false);
    assert!(status.contains(&format!("Cluster status of node {} ...", names[0])), "{status}");
    assert!(status.contains("Cluster name: itest"), "{status}");
    let all = names.join("\n");
    assert!(status.contains(&format!("Disk Nodes\n\n{all}\n")), "{status}");
    assert!(status.contains(&format!("Running Nodes\n\n{all}\n")), "{status}");

    // Node 3 is killed: the others report it down, and still list it.
    members[2].kill();
    let third_down: Vec<(String, bool)> = names.iter().enumerate().map(|(i, n)| (n.clone(), i != 2)).collect();
    for node in &members[..2] {
        wait_nodes(&node.http(), "node 3 not running", &third_down).await;
    }
    let doc: Value = serde_json::from_str(&cluster_status(&first, true)).expect("JSON");
    assert_eq!(doc["disk_nodes"], serde_json::json!(names));
    assert_eq!(doc["running_nodes"], serde_json::json!(names[..2]));
    let (_, vhost) = get(&first, "/api/vhosts/%2F").await;
    assert_eq!(vhost["cluster_state"][&names[2]], "nodedown", "{vhost}");

    // Back with another cookie: it starts, but neither side believes the other.
    write_cookie(&members[2].dir, &random_cookie());
    members[2].start(&conf);
    let third = members[2].http();
    eventually("node 3 to log a failed authentication", || async {
        members[2].log().contains("failed to authenticate")
    })
    .await;
    for node in &members[..2] {
        eventually(&format!("{} to log a failed authentication", node.name), || async {
            node.log().contains("failed to authenticate")
        })
        .await;
    }
    // Dials are retried every 100 ms: a second of them, all refused.
    let watch_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < watch_until {
        for node in &members[..2] {
            assert_eq!(nodes(&node.http()).await, third_down, "{} believes node 3", node.name);
        }
        let alone: Vec<(String, bool)> = names.iter().enumerate().map(|(i, n)| (n.clone(), i == 2)).collect();
        assert_eq!(nodes(&third).await, alone, "node 3 believes the others");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // With the cluster's cookie again it is running for everyone.
    members[2].kill();
    write_cookie(&members[2].dir, &cookie);
    members[2].start(&conf);
    for node in &members {
        wait_nodes(&node.http(), "all three running again", &all_up).await;
    }
    let status = cluster_status(&members[1].http(), false);
    assert!(status.contains(&format!("Running Nodes\n\n{all}\n")), "{status}");
    for node in &mut members {
        node.kill();
    }
}

/// Runs `warren` with `conf` (and `env`) on `dir`, which must make it exit at once with a
/// failure; returns its stderr.
fn start_failure(dir: &Path, conf: &str, env: &[(&str, &str)]) -> String {
    let conf_path = dir.join("rabbitmq.conf");
    std::fs::write(&conf_path, conf).expect("write the config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--amqp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--config"])
        .arg(&conf_path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warren");
    let deadline = Instant::now() + START_FAILURE_WITHIN;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren started with {conf:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert!(!status.success(), "exit status {status}: {stderr}");
    stderr
}

#[test]
fn bad_cluster_configuration_stops_the_start_naming_the_problem() {
    if Broker::is_external() {
        return;
    }
    let dirs = Dirs(vec![temp_dir("warren-cluster-conf")]);
    let dir = &dirs.0[0];
    let listed = "cluster_formation.classic_config.nodes.1 = warren1@127.0.0.1:1\n";

    let err = start_failure(dir, "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_consul\n", &[]);
    assert!(err.contains("rabbit_peer_discovery_consul") && err.contains("classic_config"), "{err}");
    assert!(err.contains("rabbitmq.conf:1:"), "{err}");

    let err = start_failure(dir, "cluster_formation.classic_config.nodes.1 = warren1\n", &[]);
    assert!(err.contains("'warren1'") && err.contains("name@host"), "{err}");
    let err = start_failure(dir, "cluster_formation.classic_config.nodes.1 = warren1@127.0.0.1:none\n", &[]);
    assert!(err.contains("'none' is not a port"), "{err}");

    let err = start_failure(dir, listed, &[("WARREN_NODENAME", "warren1@")]);
    assert!(err.contains("WARREN_NODENAME") && err.contains("warren1@"), "{err}");

    // The cookie: open to others, empty, not a file.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let cookie = data.join(".cookie");
    std::fs::write(&cookie, "SECRET").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let err = start_failure(dir, listed, &[("WARREN_NODENAME", "warren1@127.0.0.1")]);
    assert!(err.contains(".cookie") && err.contains("owner only") && err.contains("0644"), "{err}");
    write_cookie(&data, "  \n");
    let err = start_failure(dir, listed, &[("WARREN_NODENAME", "warren1@127.0.0.1")]);
    assert!(err.contains(".cookie") && err.contains("empty"), "{err}");
    std::fs::remove_file(&cookie).expect("remove");
    std::fs::create_dir(&cookie).expect("a directory in its place");
    let err = start_failure(dir, listed, &[("WARREN_NODENAME", "warren1@127.0.0.1")]);
    assert!(err.contains(".cookie") && err.contains("not a regular file"), "{err}");
    std::fs::remove_dir(&cookie).expect("remove");

    // The inter-node port taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let conf = format!(
        "distribution.listener.interface = 127.0.0.1\ncluster_formation.classic_config.nodes.1 = w1@127.0.0.1:{port}\n"
    );
    let err = start_failure(dir, &conf, &[("WARREN_NODENAME", "w1@127.0.0.1")]);
    assert!(err.contains(&format!("cannot listen for other nodes on 127.0.0.1:{port}")), "{err}");
    // The cookie was created for it, owner-only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cookie).expect("created").permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
    }
}

/// The TCP ports process `pid` listens on (Linux: its socket inodes among /proc/net/tcp{,6}).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?.to_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (hex ip:port), st field 3 (0A: listening), inode field 9.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports
}

#[tokio::test]
async fn a_node_on_its_own_has_no_cookie_and_no_inter_node_port() {
    if Broker::is_external() {
        return;
    }
    let dirs = Dirs(vec![temp_dir("warren-single")]);
    let broker = Broker::start_in_with_env(&dirs.0[0], None, &[("WARREN_NODENAME", "solo@127.0.0.1")]);
    let http = broker.http_addr().expect("HTTP");
    assert_eq!(nodes(&http).await, vec![("solo@127.0.0.1".to_owned(), true)]);
    let (_, overview) = get(&http, "/api/overview").await;
    assert_eq!(
        (overview["node"].as_str(), overview["cluster_name"].as_str()),
        (Some("solo@127.0.0.1"), Some("solo@127.0.0.1"))
    );
    // Every place a node is named.
    let client = reqwest::Client::new();
    let put = client
        .put(format!("http://{http}/api/queues/%2F/solo-q"))
        .basic_auth("guest", Some("guest"))
        .json(&serde_json::json!({"durable": true}))
        .send()
        .await
        .expect("PUT");
    assert!(put.status().is_success());
    let (_, queue) = get(&http, "/api/queues/%2F/solo-q").await;
    assert_eq!(queue["node"], "solo@127.0.0.1", "{queue}");
    let metrics = client.get(format!("http://{http}/metrics")).send().await.expect("GET").text().await.expect("body");
    assert!(
        metrics
            .contains(r#"rabbitmq_identity_info{rabbitmq_node="solo@127.0.0.1",rabbitmq_cluster="solo@127.0.0.1"} 1"#),
        "{metrics}"
    );
    let status = cluster_status(&http, false);
    assert!(status.contains("Cluster name: solo@127.0.0.1\n\nDisk Nodes\n\nsolo@127.0.0.1\n"), "{status}");

    assert!(!dirs.0[0].join(".cookie").exists(), "a single node made a cookie");
    let pid = broker.pid().expect("spawned");
    let amqp = broker.port();
    let http_port: u16 = http.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
    assert_eq!(listening_ports(pid), BTreeSet::from([amqp, http_port]), "only the AMQP and HTTP listeners");
}
