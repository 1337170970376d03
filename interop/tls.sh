#!/usr/bin/env bash
# AMQPS with a real client: pika over TLS (Python's ssl, verifying the server against a CA made
# here with openssl) against a release Warren started with a TLS listener on a spare port.
# Prints "interop-tls: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
pid=""
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Warren interop CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
cat >"$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:0
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.cacertfile = $dir/ca.pem
CONF
./target/release/warren --amqp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$dir/data" \
    --config "$dir/rabbitmq.conf" >"$dir/out" 2>"$dir/err" &
pid=$!
port=""
for _ in $(seq 1 200); do
    port=$(sed -n 's/^listening amqps 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$dir/out")
    [[ -n $port ]] && break
    kill -0 $pid 2>/dev/null || { cat "$dir/err"; break; }
    sleep 0.05
done
passed=0
failed=0
if [[ -n $port ]] && /usr/bin/python3 - "$port" "$dir/ca.pem" <<'PY'
import ssl, sys, pika
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
params = pika.ConnectionParameters(host="localhost", port=port, ssl_options=pika.SSLOptions(ctx, "localhost"),
                                   credentials=pika.PlainCredentials("guest", "guest"))
conn = pika.BlockingConnection(params)
ch = conn.channel()
q = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", q, b"over tls")
# Same channel: the broker handles the publish before the get.
method, props, body = ch.basic_get(q, auto_ack=True)
assert body == b"over tls", body
conn.close()
PY
then
    echo "PASS pika.amqps"
    passed=1
else
    echo "FAIL pika.amqps"
    failed=1
fi
echo "interop-tls: $passed passed, $failed failed"
((failed == 0))
