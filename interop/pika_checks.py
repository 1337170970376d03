#!/usr/bin/python3
"""Protocol-level interop checks with pika (BlockingConnection).

Usage: pika_checks.py PORT [CHECK_NAME...]

Every check encodes behaviour observed on RabbitMQ 3.10 and prints one line,
`PASS name` or `FAIL name: why`.  The exit status is non-zero if any check
failed.  Checks use their own randomly-suffixed queue/exchange names so they
are independent of each other and of leftovers from earlier runs, and delete
what they create even when they fail.

Error reply texts are compared exactly: clients and operators match on them
(e.g. "inequivalent arg"), so a broker that "behaves like RabbitMQ" has to
produce the same strings, not just the same codes.
"""

import datetime
import decimal
import os
import signal
import sys
import time
import uuid

import pika
import pika.exceptions as pe

PORT = 5672
VHOST = "/"
# Checks of plugins Warren has built in (delayed messages, deduplication); a stock RabbitMQ
# lacks them, so they run only when asked for.
PLUGINS = bool(os.environ.get("INTEROP_PLUGINS"))
CHECK_TIMEOUT = 15  # seconds; a hard backstop, waits below have their own limits
CHECKS = []


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(fn):
    CHECKS.append(fn)
    return fn


def expect(cond, why):
    if not cond:
        raise Fail(why)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise Fail("%s: expected %r, got %r" % (what, expected, actual))


def uniq(kind):
    return "interop.%s.%s" % (kind, uuid.uuid4().hex[:10])


def connect():
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=PORT,
        virtual_host=VHOST,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=5,
        blocked_connection_timeout=10,
    )
    return pika.BlockingConnection(params)


def expect_channel_error(code, text, fn, *args, **kwargs):
    """Run fn, expecting the broker to close the channel with code/text."""
    try:
        fn(*args, **kwargs)
    except pe.ChannelClosedByBroker as e:
        if (e.reply_code, e.reply_text) != (code, text):
            raise Fail(
                "expected channel.close %d %r, got %d %r"
                % (code, text, e.reply_code, e.reply_text)
            )
        return
    raise Fail("expected channel.close %d %r, but the call succeeded" % (code, text))


def wait_until(conn, cond, secs, what):
    """Pump the connection's I/O (which runs consumer callbacks) until cond()."""
    deadline = time.monotonic() + secs
    while not cond():
        if time.monotonic() >= deadline:
            raise Fail("timed out after %ss waiting for %s" % (secs, what))
        conn.process_data_events(time_limit=0.05)


def get_bodies(ch, queue, limit=100):
    """Drain a queue with basic.get (auto-ack) and return the bodies in order."""
    out = []
    for _ in range(limit):
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append(body)
    return out


class Ctx:
    """Per-check resources: connections to close and names to delete."""

    def __init__(self):
        self.conns = []
        self.queues = []
        self.exchanges = []

    def conn(self):
        c = connect()
        self.conns.append(c)
        return c

    def channel(self):
        return self.conn().channel()

    def queue(self, kind="q"):
        name = uniq(kind)
        self.queues.append(name)
        return name

    def exchange(self, kind="x"):
        name = uniq(kind)
        self.exchanges.append(name)
        return name

    def cleanup(self):
        for c in self.conns:
            try:
                if c.is_open:
                    c.close()
            except Exception:
                pass
        if not (self.queues or self.exchanges):
            return
        try:
            c = connect()
        except Exception:
            return
        try:
            for kind, names in (("q", self.queues), ("x", self.exchanges)):
                for name in names:
                    try:
                        ch = c.channel()
                        if kind == "q":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                        ch.close()
                    except pe.ChannelClosedByBroker:
                        pass  # already gone
        finally:
            try:
                c.close()
            except Exception:
                pass


# ---------------------------------------------------------------- declare


@check
def queue_declare_idempotent(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    first = ch.queue_declare(q, durable=False)
    second = ch.queue_declare(q, durable=False)
    expect_eq(second.method.queue, first.method.queue, "redeclared queue name")
    expect_eq(second.method.message_count, 0, "message_count")
    expect_eq(second.method.consumer_count, 0, "consumer_count")


@check
def queue_redeclare_different_durable_406(ctx):
    conn = ctx.conn()
    ch = conn.channel()
    q = ctx.queue()
    ch.queue_declare(q, durable=False)
    expect_channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in "
        "vhost '/': received 'true' but current is 'false'" % q,
        ch.queue_declare, q, durable=True,
    )
    # A channel error must leave the connection (and other channels) usable.
    expect(conn.is_open, "connection closed by a channel-level error")
    conn.channel().queue_declare(q, passive=True)


@check
def queue_declare_passive_missing_404(ctx):
    ch = ctx.channel()
    q = uniq("missing")
    expect_channel_error(
        404, "NOT_FOUND - no queue '%s' in vhost '/'" % q,
        ch.queue_declare, q, passive=True,
    )


@check
def exchange_declare_passive_missing_404(ctx):
    ch = ctx.channel()
    x = uniq("missing")
    expect_channel_error(
        404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x,
        ch.exchange_declare, x, passive=True,
    )


@check
def exchange_redeclare_different_type_406(ctx):
    ch = ctx.channel()
    x = ctx.exchange()
    ch.exchange_declare(x, "direct")
    ch.exchange_declare(x, "direct")  # idempotent
    expect_channel_error(
        406,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '%s' in "
        "vhost '/': received 'fanout' but current is 'direct'" % x,
        ch.exchange_declare, x, "fanout",
    )


@check
def exchange_declare_reserved_amq_prefix_403(ctx):
    ch = ctx.channel()
    x = "amq.interop-%s" % uuid.uuid4().hex[:10]
    expect_channel_error(
        403,
        "ACCESS_REFUSED - exchange name '%s' contains reserved prefix 'amq.*'" % x,
        ch.exchange_declare, x, "direct",
    )


@check
def publish_to_missing_exchange_404(ctx):
    conn = ctx.conn()
    ch = conn.channel()
    x = uniq("missing")
    # basic.publish has no reply, so the error surfaces on the next sync call.
    ch.basic_publish(x, "k", b"lost")
    expect_channel_error(
        404, "NOT_FOUND - no exchange '%s' in vhost '/'" % x,
        ch.queue_declare, "", exclusive=True,
    )


@check
def server_named_queue(ctx):
    ch = ctx.channel()
    ok = ch.queue_declare("", exclusive=True)
    name = ok.method.queue
    expect(name.startswith("amq.gen-"), "server-named queue %r lacks amq.gen- prefix" % name)
    ch.queue_declare(name, passive=True)


@check
def exclusive_queue_locked_405(ctx):
    owner = ctx.conn()
    q = ctx.queue()
    owner.channel().queue_declare(q, exclusive=True)
    locked = (
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '%s' "
        "in vhost '/'. It could be originally declared on another connection or "
        "the exclusive property value does not match that of the original "
        "declaration." % q
    )
    other = ctx.conn()
    expect_channel_error(405, locked, other.channel().queue_declare, q, exclusive=True)
    expect_channel_error(
        405, locked, other.channel().basic_consume, q, lambda *a: None
    )
    # The exclusive queue dies with its owning connection.
    owner.close()
    expect_channel_error(
        404, "NOT_FOUND - no queue '%s' in vhost '/'" % q,
        other.channel().queue_declare, q, passive=True,
    )


# ---------------------------------------------------------------- get / ack


@check
def basic_get_ok_and_empty(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    for body in (b"one", b"two"):
        ch.basic_publish("", q, body)
    m1, _, b1 = ch.basic_get(q)
    expect(m1 is not None, "first basic.get returned get-empty")
    expect_eq(b1, b"one", "first body")
    expect_eq(m1.message_count, 1, "get-ok message_count after first get")
    expect_eq(m1.redelivered, False, "redelivered on first get")
    expect_eq(m1.exchange, "", "get-ok exchange")
    expect_eq(m1.routing_key, q, "get-ok routing_key")
    m2, _, b2 = ch.basic_get(q)
    expect(m2 is not None, "second basic.get returned get-empty")
    expect_eq(b2, b"two", "second body")
    expect_eq(m2.message_count, 0, "get-ok message_count after second get")
    expect_eq(m2.delivery_tag, m1.delivery_tag + 1, "delivery tags are sequential")
    ch.basic_ack(m2.delivery_tag, multiple=True)
    m3, _, _ = ch.basic_get(q)
    expect(m3 is None, "expected get-empty on drained queue")
    expect_eq(ch.queue_declare(q, passive=True).method.message_count, 0,
              "message_count after multiple ack")


@check
def reject_and_nack_requeue(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"again")
    for how in ("reject", "nack"):
        m, _, _ = ch.basic_get(q)
        expect(m is not None, "get-empty before %s" % how)
        if how == "reject":
            ch.basic_reject(m.delivery_tag, requeue=True)
        else:
            ch.basic_nack(m.delivery_tag, requeue=True)
        m2, _, body = ch.basic_get(q)
        expect(m2 is not None, "message lost after %s(requeue=True)" % how)
        expect_eq(body, b"again", "body after %s requeue" % how)
        expect_eq(m2.redelivered, True, "redelivered flag after %s requeue" % how)
        ch.basic_reject(m2.delivery_tag, requeue=True)
    # Without requeue the message is dropped (no DLX configured).
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    expect(ch.basic_get(q)[0] is None, "message still present after reject(requeue=False)")
    ch.basic_publish("", q, b"nack-me")
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    expect(ch.basic_get(q)[0] is None, "message still present after nack(requeue=False)")


@check
def unacked_requeued_on_channel_close(ctx):
    conn = ctx.conn()
    q = ctx.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"held")
    ch2 = conn.channel()
    m, _, _ = ch2.basic_get(q)
    expect(m is not None, "get-empty")
    ch2.close()  # closing with an unacked delivery returns it to the queue
    m, _, body = ch.basic_get(q, auto_ack=True)
    expect(m is not None, "unacked message not requeued on channel close")
    expect_eq(body, b"held", "requeued body")
    expect_eq(m.redelivered, True, "redelivered flag after channel close")


@check
def unknown_delivery_tag_406(ctx):
    ch = ctx.channel()
    ch.basic_ack(42)
    # The ack has no reply; the next synchronous method observes the close.
    expect_channel_error(
        406, "PRECONDITION_FAILED - unknown delivery tag 42",
        ch.queue_declare, "", exclusive=True,
    )


@check
def prefetch_one_fair_dispatch(ctx):
    conn = ctx.conn()
    q = ctx.queue()
    setup = conn.channel()
    setup.queue_declare(q)
    got = {"slow": [], "fast": []}
    chans = {}
    for who in ("slow", "fast"):
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        chans[who] = ch

        def on_msg(c, method, _props, body, who=who):
            got[who].append(body)
            if who == "fast":
                c.basic_ack(method.delivery_tag)

        ch.basic_consume(q, on_msg)
    for i in range(6):
        setup.basic_publish("", q, b"m%d" % i)
    # The slow consumer never acks, so with prefetch 1 it holds exactly one
    # message and the fast one must get all the rest (no round robin).
    wait_until(conn, lambda: len(got["fast"]) >= 5, 5, "fast consumer to get 5")
    expect_eq(len(got["slow"]), 1, "messages held by the non-acking consumer")
    expect_eq(sorted(got["slow"] + got["fast"]), [b"m%d" % i for i in range(6)],
              "all messages delivered exactly once")


# ---------------------------------------------------------------- confirms / tx


@check
def publisher_confirms(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"confirmed")  # raises NackError if nacked
    expect_eq(ch.queue_declare(q, passive=True).method.message_count, 1,
              "message_count after confirmed publish")
    # Unroutable but not mandatory: silently dropped, still confirmed.
    ch.basic_publish("", uniq("nowhere"), b"dropped")
    try:
        ch.basic_publish("", uniq("nowhere"), b"returned", mandatory=True)
    except pe.UnroutableError as e:
        expect_eq(len(e.messages), 1, "returned messages")
        ret = e.messages[0].method
        expect_eq((ret.reply_code, ret.reply_text), (312, "NO_ROUTE"), "basic.return reply")
        expect_eq(e.messages[0].body, b"returned", "returned body")
    else:
        raise Fail("mandatory publish to an unroutable key did not raise UnroutableError")
    ch.basic_publish("", q, b"still-works")
    expect_eq(ch.queue_declare(q, passive=True).method.message_count, 2,
              "message_count after second confirmed publish")


@check
def transactions(ctx):
    conn = ctx.conn()
    q = ctx.queue()
    tx = conn.channel()
    tx.queue_declare(q)
    peek = conn.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"committed")
    expect(peek.basic_get(q)[0] is None, "uncommitted publish visible to basic.get")
    tx.tx_commit()
    tx.basic_publish("", q, b"rolled-back")
    tx.tx_rollback()
    tx.basic_publish("", q, b"committed-2")
    tx.tx_commit()
    expect_eq(get_bodies(peek, q), [b"committed", b"committed-2"], "bodies after tx")


@check
def tx_commit_without_select_406(ctx):
    ch = ctx.channel()
    expect_channel_error(
        406, "PRECONDITION_FAILED - channel is not transactional", ch.tx_commit
    )


# ---------------------------------------------------------------- routing


@check
def headers_exchange(ctx):
    ch = ctx.channel()
    x = ctx.exchange()
    ch.exchange_declare(x, "headers")
    q_all, q_any = ctx.queue("all"), ctx.queue("any")
    for q, mode in ((q_all, "all"), (q_any, "any")):
        ch.queue_declare(q)
        ch.queue_bind(q, x, arguments={"x-match": mode, "format": "pdf", "type": "report"})
    cases = [
        (b"both", {"format": "pdf", "type": "report"}),
        (b"both-extra", {"format": "pdf", "type": "report", "other": 1}),
        (b"one", {"format": "pdf"}),
        (b"one-wrong", {"format": "pdf", "type": "log"}),
        (b"none", {"format": "zip"}),
        (b"no-headers", None),
    ]
    for body, headers in cases:
        ch.basic_publish(x, "ignored", body, pika.BasicProperties(headers=headers))
    expect_eq(get_bodies(ch, q_all), [b"both", b"both-extra"], "x-match=all queue")
    expect_eq(get_bodies(ch, q_any), [b"both", b"both-extra", b"one", b"one-wrong"],
              "x-match=any queue")


@check
def exchange_to_exchange_binding(ctx):
    ch = ctx.channel()
    src, dst = ctx.exchange("src"), ctx.exchange("dst")
    ch.exchange_declare(src, "direct")
    ch.exchange_declare(dst, "fanout")
    q = ctx.queue()
    ch.queue_declare(q)
    ch.queue_bind(q, dst)
    ch.exchange_bind(destination=dst, source=src, routing_key="k")
    ch.basic_publish(src, "k", b"via-e2e")
    ch.basic_publish(src, "other", b"not-bound-key")
    ch.exchange_unbind(destination=dst, source=src, routing_key="k")
    ch.basic_publish(src, "k", b"after-unbind")
    expect_eq(get_bodies(ch, q), [b"via-e2e"], "bodies routed through e2e binding")


@check
def topic_exchange_matching(ctx):
    ch = ctx.channel()
    x = ctx.exchange()
    ch.exchange_declare(x, "topic")
    patterns = ["*.orange.*", "lazy.#", "#", "a.*.#.z", "#.end"]
    queues = {}
    for p in patterns:
        queues[p] = ctx.queue()
        ch.queue_declare(queues[p])
        ch.queue_bind(queues[p], x, routing_key=p)
    keys = ["quick.orange.rabbit", "lazy", "lazy.a.b", "orange", "a.b.z",
            "a.b.c.d.z", "a.z", "end", "x.end", ".orange.", "lazy."]
    for k in keys:
        ch.basic_publish(x, k, k.encode())
    expected = {
        "*.orange.*": ["quick.orange.rabbit", ".orange."],
        "lazy.#": ["lazy", "lazy.a.b", "lazy."],
        "#": keys,
        "a.*.#.z": ["a.b.z", "a.b.c.d.z"],
        "#.end": ["end", "x.end"],
    }
    for p in patterns:
        expect_eq(get_bodies(ch, queues[p]), [k.encode() for k in expected[p]],
                  "keys matching %r" % p)


@check
def queue_purge_count(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, b"p%d" % i)
    ok = ch.queue_purge(q)
    expect_eq(ok.method.message_count, 3, "purge-ok message_count")
    expect_eq(ch.queue_declare(q, passive=True).method.message_count, 0,
              "message_count after purge")


@check
def queue_delete_if_empty_406(ctx):
    conn = ctx.conn()
    q = ctx.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"keep-me")
    expect_channel_error(
        406, "PRECONDITION_FAILED - queue '%s' in vhost '/' not empty" % q,
        ch.queue_delete, q, if_empty=True,
    )
    ok = conn.channel().queue_delete(q)
    expect_eq(ok.method.message_count, 1, "delete-ok message_count")


# ---------------------------------------------------------------- properties


@check
def basic_properties_round_trip(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    headers = {
        "str": "hello",
        "int": 42,
        "negative": -7,
        "big": 2 ** 40,
        "true": True,
        "false": False,
        "nested": {"inner": "value", "n": 1, "deeper": {"ok": True}},
        "array": [1, "two", False, {"k": "v"}, [3]],
        "void": None,
        "bytes": b"\x00\x01binary",
        "decimal": decimal.Decimal("3.14"),
        "when": datetime.datetime(2020, 1, 2, 3, 4, 5),
    }
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-123",
        reply_to="reply.queue",
        message_id="msg-456",
        timestamp=1700000000,
        type="order.created",
        user_id="guest",
        app_id="interop",
    )
    ch.basic_publish("", q, b'{"a": 1}', sent)
    m, got, body = ch.basic_get(q, auto_ack=True)
    expect(m is not None, "get-empty")
    expect_eq(body, b'{"a": 1}', "body")
    for field in ("content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "message_id", "timestamp", "type",
                  "user_id", "app_id", "expiration", "cluster_id"):
        expect_eq(getattr(got, field), getattr(sent, field), field)
    expect_eq(got.headers, headers, "headers")


@check
def user_id_mismatch_406(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="mallory"))
    expect_channel_error(
        406,
        "PRECONDITION_FAILED - user_id property set to 'mallory' but "
        "authenticated user was 'guest'",
        ch.queue_declare, q, passive=True,
    )


# ---------------------------------------------------------------- consumers


@check
def direct_reply_to_rpc(ctx):
    client = ctx.conn()
    server = ctx.conn()
    requests = ctx.queue("rpc")
    srv = server.channel()
    srv.queue_declare(requests)
    cli = client.channel()
    replies = []
    # Must consume (auto-ack) on the pseudo-queue before publishing with it.
    cli.basic_consume("amq.rabbitmq.reply-to",
                      lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
    cli.basic_publish("", requests, b"ping", pika.BasicProperties(
        reply_to="amq.rabbitmq.reply-to", correlation_id="rpc-1"))

    deadline = time.monotonic() + 5
    while True:
        m, props, body = srv.basic_get(requests, auto_ack=True)
        if m is not None:
            break
        expect(time.monotonic() < deadline, "request never reached the responder")
        time.sleep(0.02)
    expect_eq(body, b"ping", "request body")
    expect(props.reply_to.startswith("amq.rabbitmq.reply-to."),
           "reply_to not rewritten to a per-channel address: %r" % props.reply_to)
    srv.basic_publish("", props.reply_to, b"pong",
                      pika.BasicProperties(correlation_id=props.correlation_id))
    wait_until(client, lambda: replies, 5, "the RPC reply")
    expect_eq(replies[0][1], b"pong", "reply body")
    expect_eq(replies[0][0].correlation_id, "rpc-1", "reply correlation_id")


@check
def direct_reply_to_requires_consumer_406(ctx):
    ch = ctx.channel()
    q = ctx.queue()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    expect_channel_error(
        406, "PRECONDITION_FAILED - fast reply consumer does not exist",
        ch.queue_declare, q, passive=True,
    )


@check
def consumer_cancel_on_queue_delete(ctx):
    conn = ctx.conn()
    q = ctx.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    ctx.conn().channel().queue_delete(q)
    wait_until(conn, lambda: cancelled, 5, "basic.cancel from the broker")
    expect_eq(cancelled, [tag], "cancelled consumer tags")
    expect_eq(ch.consumer_tags, [], "consumer tags left on channel")
    expect(ch.is_open, "channel closed instead of consumer cancelled")


@check
def basic_cancel_by_client(ctx):
    conn = ctx.conn()
    q = ctx.queue()
    ch = conn.channel()
    ch.queue_declare(q)
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    expect_eq(ch.queue_declare(q, passive=True).method.consumer_count, 1, "consumer_count")
    ch.basic_cancel(tag)
    expect_eq(ch.queue_declare(q, passive=True).method.consumer_count, 0,
              "consumer_count after cancel")
    ch.basic_publish("", q, b"after-cancel")
    conn.process_data_events(time_limit=0.1)  # let a stray delivery show up
    expect_eq(got, [], "deliveries after cancel")
    # (Not queue.declare's message_count: on RabbitMQ it can lag behind an
    # unconfirmed publish; basic.get is ordered after it.)
    expect_eq(get_bodies(ch, q), [b"after-cancel"], "message stays queued after cancel")


# ---------------------------------------------------------------- driver


# ------------------------------------------------- queue features (issue 4)


def confirm_channel(ctx):
    ch = ctx.channel()
    ch.confirm_delivery()
    return ch


@check
def ttl_expiry_dead_letters_with_x_death(ctx):
    ch = confirm_channel(ctx)
    dlx, dead, q = ctx.exchange("dlx"), ctx.queue("dead"), ctx.queue("ttl")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    ch.queue_declare(q, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"old")
    got = []

    def arrived():
        method, props, body = ch.basic_get(dead, auto_ack=True)
        if method is not None:
            got.append((props, body))
        return bool(got)

    wait_until(ctx.conns[0], arrived, 5, "the expired message in the dead-letter queue")
    props, body = got[0]
    expect_eq(body, b"old", "dead-lettered body")
    death = props.headers["x-death"][0]
    expect_eq(death["reason"], "expired", "x-death reason")
    expect_eq(death["queue"], q, "x-death queue")
    expect_eq(death["count"], 1, "x-death count")
    expect_eq(get_bodies(ch, q), [], "the expired message left its queue")


@check
def max_length_drops_the_oldest(ctx):
    ch = confirm_channel(ctx)
    q = ctx.queue("maxlen")
    ch.queue_declare(q, arguments={"x-max-length": 2})
    for b in (b"p1", b"p2", b"p3"):
        ch.basic_publish("", q, b)
    expect_eq(get_bodies(ch, q), [b"p2", b"p3"], "bodies kept under x-max-length 2")


@check
def priority_queue_delivers_highest_first(ctx):
    ch = confirm_channel(ctx)
    q = ctx.queue("prio")
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    for prio, b in ((1, b"low"), (9, b"high"), (5, b"mid"), (9, b"high2")):
        ch.basic_publish("", q, b, pika.BasicProperties(priority=prio))
    expect_eq(get_bodies(ch, q), [b"high", b"high2", b"mid", b"low"], "priority order")


@check
def alternate_exchange_takes_unroutable(ctx):
    ch = confirm_channel(ctx)
    ae, main, q = ctx.exchange("ae"), ctx.exchange("main"), ctx.queue("unrouted")
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(q)
    ch.queue_bind(q, ae)
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    ch.basic_publish(main, "no-binding", b"stray", mandatory=True)
    expect_eq(get_bodies(ch, q), [b"stray"], "bodies in the alternate exchange's queue")


# Plugins RabbitMQ users install and Warren has built in; run with INTEROP_PLUGINS=1.


@check
def plugin_delayed_message_exchange(ctx):
    if not PLUGINS:
        raise Skip("set INTEROP_PLUGINS=1 (a stock RabbitMQ lacks this plugin)")
    ch = confirm_channel(ctx)
    x, q = ctx.exchange("delayed"), ctx.queue("delayed")
    ch.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    sent = time.monotonic()
    ch.basic_publish(x, "k", b"later", pika.BasicProperties(headers={"x-delay": 300}))
    expect_eq(get_bodies(ch, q), [], "nothing before the delay")
    got = []
    wait_until(ctx.conns[0], lambda: got.extend(get_bodies(ch, q)) or bool(got), 5, "the delayed message")
    expect_eq(got, [b"later"], "delayed bodies")
    expect(time.monotonic() - sent >= 0.3, "delivered before its delay")


@check
def plugin_message_deduplication(ctx):
    if not PLUGINS:
        raise Skip("set INTEROP_PLUGINS=1 (a stock RabbitMQ lacks this plugin)")
    ch = confirm_channel(ctx)
    x, q = ctx.exchange("dedup"), ctx.queue("dedup")
    ch.exchange_declare(x, "x-message-deduplication", arguments={"x-cache-size": 10})
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    for b in (b"a", b"b"):
        ch.basic_publish(x, "", b, pika.BasicProperties(headers={"x-deduplication-header": "same"}))
    expect_eq(get_bodies(ch, q), [b"a"], "bodies after deduplication")


def _on_alarm(_signum, _frame):
    raise Fail("check exceeded %ss" % CHECK_TIMEOUT)


def main():
    global PORT
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        sys.exit("usage: pika_checks.py PORT [CHECK_NAME...]")
    PORT = int(sys.argv[1])
    only = set(sys.argv[2:])
    unknown = only - {fn.__name__ for fn in CHECKS}
    if unknown:
        sys.exit("pika_checks.py: unknown checks: %s" % ", ".join(sorted(unknown)))
    signal.signal(signal.SIGALRM, _on_alarm)
    # One up-front handshake, so an unreachable or hung broker costs one
    # timeout instead of one per check.
    try:
        connect().close()
    except Exception as e:
        print("FAIL pika.connect: %s: %s" % (type(e).__name__, str(e) or repr(e)), flush=True)
        return 1
    failed = 0
    for fn in CHECKS:
        name = fn.__name__
        if only and name not in only:
            continue
        ctx = Ctx()
        signal.alarm(CHECK_TIMEOUT)
        try:
            fn(ctx)
            print("PASS pika.%s" % name, flush=True)
        except Skip as e:
            print("SKIP pika.%s: %s" % (name, e), flush=True)
        except Fail as e:
            failed += 1
            print("FAIL pika.%s: %s" % (name, e), flush=True)
        except Exception as e:  # a broker bug may surface as any client error
            failed += 1
            print("FAIL pika.%s: %s: %s" % (name, type(e).__name__, str(e) or repr(e)),
                  flush=True)
        finally:
            signal.alarm(CHECK_TIMEOUT)  # bound the cleanup too
            try:
                ctx.cleanup()
            except Fail:
                pass
            signal.alarm(0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
