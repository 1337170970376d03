#!/usr/bin/python3
"""Tiny AMQP housekeeping helper for run.sh, built on pika.

Usage: amqp_admin.py PORT COMMAND [ARGS...]

  purge QUEUE...             purge queues (missing queues are ignored)
  delete-queue QUEUE...      delete queues (missing queues are ignored)
  delete-exchange EXCH...    delete exchanges (missing exchanges are ignored)
  count QUEUE                print the ready-message count (passive declare);
                             exits 3 if the queue does not exist
  wait-count QUEUE N SECS    poll until the ready count equals N; exits 1 on
                             timeout, printing the last count seen

The seed programs cannot clean up after themselves (they run forever and are
killed), so run.sh uses this to reset shared names like "hello" between
checks and to drop the server-named queues they leave behind.  Only plain
AMQP is used, so this works against any broker, not just RabbitMQ.
"""

import sys
import time

import pika
import pika.exceptions as pe


def connect(port):
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        virtual_host="/",
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=5,
        blocked_connection_timeout=10,
    )
    return pika.BlockingConnection(params)


class Admin:
    """Keeps one connection and reopens the channel after a 404 closes it."""

    def __init__(self, port):
        self.conn = connect(port)
        self.ch = self.conn.channel()

    def _run(self, fn):
        try:
            return fn(self.ch)
        except pe.ChannelClosedByBroker as e:
            self.ch = self.conn.channel()
            if e.reply_code == 404:
                return None
            raise

    def count(self, queue):
        ok = self._run(lambda ch: ch.queue_declare(queue, passive=True))
        return None if ok is None else ok.method.message_count

    def close(self):
        try:
            self.conn.close()
        except pe.AMQPError:
            pass


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    cmd, args = sys.argv[2], sys.argv[3:]
    admin = Admin(port)
    try:
        if cmd == "purge":
            for q in args:
                admin._run(lambda ch: ch.queue_purge(q))
        elif cmd == "delete-queue":
            for q in args:
                admin._run(lambda ch: ch.queue_delete(q))
        elif cmd == "delete-exchange":
            for x in args:
                admin._run(lambda ch: ch.exchange_delete(x))
        elif cmd == "count":
            n = admin.count(args[0])
            if n is None:
                print("missing")
                return 3
            print(n)
        elif cmd == "wait-count":
            queue, want, secs = args[0], int(args[1]), float(args[2])
            deadline = time.monotonic() + secs
            while True:
                n = admin.count(queue)
                if n == want:
                    print(n)
                    return 0
                if time.monotonic() >= deadline:
                    print("missing" if n is None else n)
                    return 1
                time.sleep(0.1)
        else:
            sys.exit("amqp_admin.py: unknown command %r" % cmd)
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
