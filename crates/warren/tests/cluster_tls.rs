//! TLS between nodes (`distribution.ssl_options.*`), with three real `warren` processes: two
//! nodes with certificates from the cluster's CA form the cluster over TLS and serve a quorum
//! queue; a third, whose certificate another CA signed, is never let in.

mod common;

use common::cluster::{get, temp_dir, wait_nodes, Cluster, Dirs};
use common::lapin_client::*;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::Path;

/// Writes a CA's certificate (`ca.pem`) and a node certificate for 127.0.0.1 it signed
/// (`node.pem`, `node.key`) into `dir`.
fn pki(dir: &Path) {
    let ca_key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let node = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("node certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("node.pem"), node.pem()).expect("write");
    std::fs::write(dir.join("node.key"), key.serialize_pem()).expect("write");
}

fn tls_conf(dir: &Path) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        "distribution.ssl_options.cacertfile = {}\ndistribution.ssl_options.certfile = {}\n\
         distribution.ssl_options.keyfile = {}\n",
        file("ca.pem"),
        file("node.pem"),
        file("node.key")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_tls_and_a_node_from_another_ca_stays_out() {
    if common::Broker::is_external() {
        eprintln!("skipped: starts Warren processes");
        return;
    }
    let pkis = Dirs(vec![temp_dir("warren-tls-pki"), temp_dir("warren-tls-pki-other")]);
    pki(&pkis.0[0]);
    pki(&pkis.0[1]);
    let cluster = Cluster::start_with(3, "warren-tls", |i| tls_conf(&pkis.0[if i < 2 { 0 } else { 1 }]));
    let names = &cluster.names;
    let h1 = cluster.nodes[0].http();
    let expected = vec![(names[0].clone(), true), (names[1].clone(), true), (names[2].clone(), false)];
    wait_nodes(&h1, "nodes 1 and 2 connected over TLS", &expected).await;
    assert!(cluster.nodes[0].log().contains("(TLS)"), "{}", cluster.nodes[0].log());

    // A quorum queue on all three, served by the two (a majority): a publish through node 2,
    // a get through node 1.
    let c1 = connect_url(&cluster.nodes[0].amqp_url()).await;
    let c2 = connect_url(&cluster.nodes[1].amqp_url()).await;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let ch1 = channel(&c1).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch1.queue_declare("secure", durable, args).await.expect("declare");
    let ch2 = confirm_channel(&c2).await;
    ch2.queue_declare("secure", QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("node 2 has it");
    let confirm = ch2
        .basic_publish("", "secure", BasicPublishOptions::default(), b"sealed", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{confirm:?}");
    let got = ch1.basic_get("secure", BasicGetOptions { no_ack: true }).await.expect("get").expect("a message");
    assert_eq!(&got.delivery.data[..], b"sealed");

    // Node 3 still out, and it says why.
    let (_, nodes) = get(&h1, "/api/nodes").await;
    assert_eq!(nodes[2]["running"], false, "{nodes}");
    common::eventually("node 3 reports the refused TLS", || async {
        cluster.nodes[2].log().lines().any(|l| l.contains("failed to authenticate") && l.contains("TLS"))
    })
    .await;
}
