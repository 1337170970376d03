//! Publishes handled in parallel (`data_plane_parallelism` above 1): connections publishing at
//! once to queues that deliver to one channel must still give that channel consecutive
//! delivery tags in the order it receives them, never more unacked deliveries than its
//! prefetch, and every message exactly once.

mod common;

use common::lapin_client::*;
use common::raw::{self, RawConnection};
use common::{unique, within, Broker};
use lapin::options::QueueDeclareOptions;
use std::collections::BTreeMap;

const BASIC_QOS: raw::Method = (60, 10);
const BASIC_QOS_OK: raw::Method = (60, 11);
const BASIC_DELIVER: raw::Method = (60, 60);
const BASIC_ACK: raw::Method = (60, 80);

/// (delivery tag, routing key) of a basic.deliver's arguments.
fn parse_deliver(args: &[u8]) -> (u64, String) {
    let tag_len = usize::from(args[0]);
    let at = 1 + tag_len;
    let delivery_tag = u64::from_be_bytes(args[at..at + 8].try_into().expect("delivery tag"));
    let at = at + 8 + 1;
    let exchange_len = usize::from(args[at]);
    let at = at + 1 + exchange_len;
    let key_len = usize::from(args[at]);
    let routing_key = String::from_utf8(args[at + 1..at + 1 + key_len].to_vec()).expect("routing key");
    (delivery_tag, routing_key)
}

#[tokio::test]
async fn parallel_publishers_keep_one_channels_tags_in_order_and_its_prefetch() {
    const QUEUES: usize = 4;
    const PER_QUEUE: usize = 2_000;
    const PREFETCH: u64 = 10;
    let Some(broker) = Broker::start_with_config("data_plane_parallelism = 4") else { return };
    let setup = connect(&broker).await;
    let ch = channel(&setup).await;
    let queues: Vec<String> = (0..QUEUES).map(|i| unique(&format!("parallel-{i}"))).collect();
    for q in &queues {
        declare(&ch, q, QueueDeclareOptions { auto_delete: true, ..Default::default() }).await;
    }

    // One channel consumes every queue, with manual acks and a channel-wide prefetch: the
    // queues, fed by different publishers at once, deliver to it at once.
    let mut consumer = RawConnection::open(&broker).await;
    consumer.open_channel(1).await;
    let mut qos = 0u32.to_be_bytes().to_vec();
    qos.extend(u16::try_from(PREFETCH).expect("prefetch").to_be_bytes());
    qos.push(1);
    consumer.send_method(1, BASIC_QOS, &qos).await;
    consumer.expect_method(1, BASIC_QOS_OK).await;
    for (i, q) in queues.iter().enumerate() {
        consumer.consume(1, q, &format!("c{i}")).await;
    }

    let publishers: Vec<_> = queues
        .iter()
        .map(|q| {
            let (url, q) = (broker.amqp_url(), q.clone());
            tokio::spawn(async move {
                let conn = connect_url(&url).await;
                let ch = channel(&conn).await;
                for n in 0..PER_QUEUE {
                    publish(&ch, "", &q, format!("{q}/{n}").as_bytes()).await;
                }
                // Published: the last confirm-less publish is flushed before the close.
                within("close", conn.close(200, "done")).await.expect("close");
            })
        })
        .collect();

    let mut per_queue: BTreeMap<String, usize> = BTreeMap::new();
    let (mut last_tag, mut acked) = (0u64, 0u64);
    while last_tag < (QUEUES * PER_QUEUE) as u64 {
        let (channel, method, args) = consumer.next_method().await;
        assert_eq!((channel, method), (1, BASIC_DELIVER), "only deliveries on channel 1");
        let (tag, key) = parse_deliver(&args);
        assert_eq!(tag, last_tag + 1, "delivery tags reach the client consecutive and in order");
        last_tag = tag;
        assert!(tag - acked <= PREFETCH, "{} unacked deliveries with a prefetch of {PREFETCH}", tag - acked);
        *per_queue.entry(key).or_default() += 1;
        if tag - acked == PREFETCH {
            // Everything so far, at once (multiple): the queues go on delivering.
            let mut ack = tag.to_be_bytes().to_vec();
            ack.push(1);
            consumer.send_method(1, BASIC_ACK, &ack).await;
            acked = tag;
        }
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    let expected: BTreeMap<String, usize> = queues.iter().map(|q| (q.clone(), PER_QUEUE)).collect();
    assert_eq!(per_queue, expected, "every message exactly once");
    // Nothing more is in flight: a queue declared passively reports none ready.
    for q in &queues {
        let info = declare_passive(&ch, q).await.expect("queue still there");
        assert_eq!(info.message_count(), 0, "queue {q} drained");
    }
}
