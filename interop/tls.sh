#!/usr/bin/env bash
# TLS with a real client: pika over AMQPS (Python's ssl, verifying the server against a CA made
# here with openssl) against a release Warren started with a TLS listener on a spare port, once
# with PLAIN and once with EXTERNAL (a client certificate from the same CA whose CN names a
# user that the definitions create). WARREN_BIN picks another binary.
# Prints "interop-tls: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${WARREN_BIN:-./target/release/warren}
dir=$(mktemp -d)
pid=""
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
client=warren-interop-client
bash interop/make-certs.sh "$dir" "$client"
# The client's user has no password: EXTERNAL is its only way in.
cat >"$dir/definitions.json" <<JSON
{"users": [{"name": "$client", "tags": ""}],
 "permissions": [{"user": "$client", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]}
JSON
cat >"$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:0
ssl_options.certfile = $dir/server_certificate.pem
ssl_options.keyfile = $dir/server_key.pem
ssl_options.cacertfile = $dir/ca_certificate.pem
ssl_options.verify = verify_peer
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
load_definitions = $dir/definitions.json
CONF
"$bin" --amqp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$dir/data" \
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
# check NAME MODE: a publish and a get through an exclusive queue; MODE is plain (guest's
# password, no client certificate) or external (the client certificate, no password).
check() {
    if [[ -n $port ]] && /usr/bin/python3 - "$port" "$dir" "$2" <<'PY'
import ssl, sys, pika
port, d, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=f"{d}/ca_certificate.pem")
if mode == "external":
    ctx.load_cert_chain(f"{d}/client_certificate.pem", f"{d}/client_key.pem")
    credentials = pika.credentials.ExternalCredentials()
else:
    credentials = pika.PlainCredentials("guest", "guest")
params = pika.ConnectionParameters(host="localhost", port=port, ssl_options=pika.SSLOptions(ctx, "localhost"),
                                   credentials=credentials)
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
        echo "PASS $1"
        passed=$((passed + 1))
    else
        echo "FAIL $1"
        failed=$((failed + 1))
    fi
}
check pika.amqps plain
check pika.amqps.external external
echo "interop-tls: $passed passed, $failed failed"
((failed == 0))
