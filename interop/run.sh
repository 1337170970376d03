#!/usr/bin/env bash
# Interop suite: drive a broker on 127.0.0.1:PORT with real clients in other
# languages and check it behaves the way RabbitMQ does.
#
#   interop/run.sh PORT
#
# Part 1 builds the seed tutorial's ten Go programs (verbatim except for the
# broker address) and checks what a tutorial reader would see.  Part 2 runs
# protocol-level checks with pika.  Every check prints `PASS name` or
# `FAIL name: why`; the last line is `interop: N passed, N failed` and the exit
# status is non-zero if anything failed.
#
# Environment:
#   WARREN_SEED  path to the seed document (default: ../../shared/seeds/... from here)
#   GO           Go toolchain (default: /usr/bin/go, Debian's Go 1.19)
#
# Needs: interop/install.sh (golang-go, golang-github-rabbitmq-amqp091-go-dev,
# python3-pika).  Logs of the last run are kept in interop/.build/logs/.
set -euo pipefail

if [[ $# -ne 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT" >&2
    exit 2
fi
PORT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
SEED=${WARREN_SEED:-$(dirname "$0")/../../shared/seeds/000_906baf0792b56439.txt}
# Debian's python3 has python3-pika; a pyenv/venv python3 on PATH would not.
PY=/usr/bin/python3
GO=${GO:-/usr/bin/go}
[[ -x $GO ]] || GO=go
BUILD=$HERE/.build
BIN=$BUILD/bin
LOGS=$BUILD/logs
# Unique per run, so bodies from earlier (possibly aborted) runs that are
# still sitting in shared queues can never satisfy this run's checks.
TAG="r$$x$RANDOM"

# The Go programs print through the standard `log` package: a fixed
# "YYYY/MM/DD HH:MM:SS " prefix, then the message.
READY='[*] waiting for messages, to exit press ctrl+c'

PASSED=0
FAILED=0
FINISHED=0
BG_PIDS=()

pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }

summary() {
    FINISHED=1
    if ((FAILED)); then echo "logs: $LOGS"; fi
    echo "interop: $PASSED passed, $FAILED failed"
}

cleanup() {
    local rc=$? pid
    for pid in "${BG_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        { wait "$pid"; } 2>/dev/null || true
    done
    # An unexpected error (set -e) must still yield a failure and the summary.
    if ((!FINISHED)); then
        fail harness "run.sh aborted with status $rc before finishing"
        summary
        ((rc)) || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
# Turn signals into a normal exit so the EXIT trap reaps the background jobs.
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ------------------------------------------------------------------ helpers

# bg LOG CMD...: start CMD in the background with its output in LOG; the pid
# is left in BG_PID and remembered for cleanup.
bg() {
    local log=$1
    shift
    : >"$log" # exists before the job starts, for pollers racing with it
    "$@" >"$log" 2>&1 &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

# stop PID [SIGNAL]: signal a background job and reap it.  A Go program dies
# on SIGTERM without running defers, i.e. like ctrl+c: the broker sees the TCP
# connection drop without a connection.close.
stop() {
    local pid keep=()
    kill -s "${2:-TERM}" "$1" 2>/dev/null || true
    { wait "$1"; } 2>/dev/null || true
    # Forget the reaped pid: the EXIT trap must never signal a recycled one.
    for pid in "${BG_PIDS[@]}"; do
        [[ $pid == "$1" ]] || keep+=("$pid")
    done
    BG_PIDS=("${keep[@]}")
}

# msgs LOG: the log messages with the timestamp prefix removed.
msgs() {
    sed -E 's#^[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} ##' "$1"
}

# count LOG MSG: how many log lines are exactly MSG.
count() {
    msgs "$1" | grep -cxF -- "$2" || true
}

# received LOG: the bodies printed by the pub/sub, routing and topic
# receivers (`log.Printf(" [x] %s", d.Body)`), one per line.
received() {
    msgs "$1" | sed -n 's/^ \[x\] //p'
}

# last_words LOG: a one-line hint of why a Go program failed.
last_words() {
    local hint
    hint=$(grep -m1 -E 'panic|ailed|refused|Exception|closed' "$1" 2>/dev/null || true)
    [[ -n $hint ]] || hint=$(tail -n1 "$1" 2>/dev/null || true)
    echo "${hint:-no output}"
}

# wait_msg LOG MSG N SECS [PID]: poll until LOG has at least N lines that are
# exactly MSG.  Gives up early if PID has exited.  Sets REASON on failure.
wait_msg() {
    local log=$1 msg=$2 n=$3 secs=$4 pid=${5:-} deadline
    deadline=$(($(date +%s%N) + secs * 1000000000))
    while (($(count "$log" "$msg") < n)); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            REASON="$(basename "$log" .log) exited before logging '$msg': $(last_words "$log")"
            return 1
        fi
        if (($(date +%s%N) >= deadline)); then
            REASON="timed out after ${secs}s waiting for '$msg' x$n in $(basename "$log") (have $(count "$log" "$msg"))"
            return 1
        fi
        sleep 0.05
    done
}

# start_consumer NAME CMD...: start a seed consumer, wait until it reports
# "[*] waiting for messages" (printed after Consume returned, so the broker has
# registered the consumer).  Sets BG_PID, or REASON and returns 1.
start_consumer() {
    local name=$1
    shift
    bg "$LOGS/$name.log" "$@"
    wait_msg "$LOGS/$name.log" "$READY" 1 10 "$BG_PID"
}

# send NAME ARGS...: run a seed producer in the foreground; it must exit 0.
send() {
    local name=$1 out
    shift
    if ! out=$(timeout 10 "$BIN/$name" "$@" 2>&1); then
        REASON="$name $* failed: $(grep -m1 -E 'panic|ailed' <<<"$out" || echo "${out:-no output}")"
        return 1
    fi
    echo "$out" >>"$LOGS/senders.log"
}

# admin CMD ARGS...: queue/exchange housekeeping over AMQP (amqp_admin.py).
admin() {
    timeout 20 "$PY" "$HERE/amqp_admin.py" "$PORT" "$@"
}

# tidy CMD ARGS...: admin for purges/deletes.  These are plain AMQP calls
# RabbitMQ always accepts, so a refusal is reported as a failure, but the
# suite carries on.
tidy() {
    local out
    if ! out=$(admin "$@" 2>&1); then
        fail "housekeeping.$1" "amqp_admin.py $* failed: $(tail -n1 <<<"$out")"
    fi
}

# drop_queues NAME...: delete the non-empty names among NAME (an empty name
# would mean "the channel's last declared queue" to the broker).
drop_queues() {
    local q names=()
    for q in "$@"; do
        [[ -z $q ]] || names+=("$q")
    done
    ((${#names[@]} == 0)) || tidy delete-queue "${names[@]}"
}

# queue_of LOG: the server-named queue a routing/topic receiver logged.
queue_of() {
    msgs "$1" | sed -n 's/^Binding queue \([^ ]*\) to exchange .*/\1/p' | head -n1
}

# expect_received NAME LOG EXPECTED...: the receiver got exactly EXPECTED, in
# order, each once.
expect_received() {
    local name=$1 log=$2 got want
    shift 2
    got=$(received "$log" | paste -sd'|' -)
    want=$(printf '%s\n' "$@" | paste -sd'|' -)
    if [[ $got == "$want" ]]; then
        pass "$name"
    else
        fail "$name" "expected [$want], got [$got]"
    fi
}

# ------------------------------------------------------------------ part 1: seed programs

build_seed() {
    local out
    if [[ ! -f $SEED ]]; then
        REASON="seed document not found at $SEED (set WARREN_SEED)"
        return 1
    fi
    if ! out=$("$PY" "$HERE/extract_seed.py" "$SEED" "$BUILD" "$PORT" 2>&1); then
        REASON="extract_seed.py: $out"
        return 1
    fi
    local name
    for name in hello_send hello_receive task_send worker logs_send logs_receive \
        direct_send direct_receive topic_send topic_receive; do
        # GOPATH mode against Debian's packaged amqp091-go: no module proxy,
        # no network.  CGO off so a machine without gcc can build `net`.
        if ! out=$(cd "$BUILD" && GOENV=off GO111MODULE=off GOFLAGS="" CGO_ENABLED=0 \
            GOPATH=/usr/share/gocode GOCACHE="$BUILD/gocache" \
            timeout 300 "$GO" build -o "$BIN/$name" "./$name" 2>&1); then
            REASON="go build $name: $(head -n3 <<<"$out" | paste -sd' ' -)"
            return 1
        fi
    done
}

seed_hello() {
    local pid
    tidy purge hello
    # Published before any consumer exists: the queue must hold it.
    if ! send hello_send; then
        fail seed.hello.send "$REASON"
        return
    fi
    if [[ $(count "$LOGS/senders.log" '[x] sent Hello World! ') -ge 1 ]]; then
        pass seed.hello.send
    else
        fail seed.hello.send "hello_send did not log '[x] sent Hello World!'"
    fi

    if ! start_consumer hello_receive "$BIN/hello_receive"; then
        fail seed.hello.receive-queued "$REASON"
        return
    fi
    pid=$BG_PID
    if wait_msg "$LOGS/hello_receive.log" 'received a message:Hello World!' 1 10 "$pid"; then
        pass seed.hello.receive-queued
    else
        fail seed.hello.receive-queued "$REASON"
    fi
    # Published while the consumer is attached: pushed to it live.
    if send hello_send &&
        wait_msg "$LOGS/hello_receive.log" 'received a message:Hello World!' 2 10 "$pid"; then
        pass seed.hello.receive-live
    else
        fail seed.hello.receive-live "$REASON"
    fi
    stop "$pid"
    # The receiver uses auto-ack: nothing may be left behind in the queue.
    local left
    left=$(admin count hello || true)
    if [[ $left == 0 ]]; then
        pass seed.hello.auto-ack-drains
    else
        fail seed.hello.auto-ack-drains "queue hello holds '$left' messages after auto-ack consumption"
    fi
}

seed_work_queues() {
    local a b c task n_a n_b total
    tidy purge hello
    if ! start_consumer worker_a "$BIN/worker"; then
        fail seed.work.round-robin "$REASON"
        return
    fi
    a=$BG_PID
    if ! start_consumer worker_b "$BIN/worker"; then
        fail seed.work.round-robin "$REASON"
        return
    fi
    b=$BG_PID

    # Without basic.qos RabbitMQ pushes to consumers strictly in turn, so four
    # one-second tasks are split two and two, each done exactly once.
    local tasks=("rr1-$TAG." "rr2-$TAG." "rr3-$TAG." "rr4-$TAG.")
    for task in "${tasks[@]}"; do
        if ! send task_send "$task"; then
            fail seed.work.round-robin "$REASON"
            return
        fi
    done
    if wait_msg "$LOGS/worker_a.log" Done 2 15 "$a" && wait_msg "$LOGS/worker_b.log" Done 2 15 "$b"; then
        REASON=""
        for task in "${tasks[@]}"; do
            total=$(($(count "$LOGS/worker_a.log" "received a message:$task") +
                $(count "$LOGS/worker_b.log" "received a message:$task")))
            ((total == 1)) || REASON+="task '$task' processed $total times; "
        done
        n_a=$(msgs "$LOGS/worker_a.log" | grep -c '^received a message:' || true)
        n_b=$(msgs "$LOGS/worker_b.log" | grep -c '^received a message:' || true)
        ((n_a == 2 && n_b == 2)) || REASON+="split is $n_a/$n_b, expected 2/2"
        if [[ -z $REASON ]]; then
            pass seed.work.round-robin
        else
            fail seed.work.round-robin "$REASON"
        fi
    else
        fail seed.work.round-robin "$REASON (worker_a $(count "$LOGS/worker_a.log" Done) done, worker_b $(count "$LOGS/worker_b.log" Done) done)"
    fi

    # Redelivery: worker A takes a long task and dies (kill -9) before acking;
    # the broker must hand the same message to the other worker.
    stop "$b"
    local slow="slow-$TAG......"
    if ! send task_send "$slow" ||
        ! wait_msg "$LOGS/worker_a.log" "received a message:$slow" 1 10 "$a"; then
        fail seed.work.redeliver-on-kill "$REASON"
        return
    fi
    if ! start_consumer worker_c "$BIN/worker"; then
        fail seed.work.redeliver-on-kill "$REASON"
        return
    fi
    c=$BG_PID
    stop "$a" KILL
    if [[ $(count "$LOGS/worker_a.log" Done) -ne 2 ]]; then
        # A finished the task before it was killed; the check would be vacuous.
        fail seed.work.redeliver-on-kill "worker_a completed the slow task before being killed"
    elif wait_msg "$LOGS/worker_c.log" "received a message:$slow" 1 10 "$c"; then
        pass seed.work.redeliver-on-kill
    else
        fail seed.work.redeliver-on-kill "$REASON"
    fi
    stop "$c"
    tidy purge hello
}

seed_pubsub() {
    local r1 r2 msg="ps-$TAG"
    # Drop bindings left by receivers of earlier runs (their queues outlive
    # them), so fan-out goes only to this run's queues.
    tidy delete-exchange logs
    if ! start_consumer logs_receive_1 "$BIN/logs_receive"; then
        fail seed.pubsub.fanout "$REASON"
        return
    fi
    r1=$BG_PID
    if ! start_consumer logs_receive_2 "$BIN/logs_receive"; then
        fail seed.pubsub.fanout "$REASON"
        return
    fi
    r2=$BG_PID
    if send logs_send "$msg" &&
        wait_msg "$LOGS/logs_receive_1.log" " [x] $msg" 1 10 "$r1" &&
        wait_msg "$LOGS/logs_receive_2.log" " [x] $msg" 1 10 "$r2"; then
        # Fan out once more to make sure neither got a duplicate meanwhile.
        if send logs_send "$msg-2" &&
            wait_msg "$LOGS/logs_receive_1.log" " [x] $msg-2" 1 10 "$r1" &&
            wait_msg "$LOGS/logs_receive_2.log" " [x] $msg-2" 1 10 "$r2"; then
            expect_received seed.pubsub.fanout-receiver-1 "$LOGS/logs_receive_1.log" "$msg" "$msg-2"
            expect_received seed.pubsub.fanout-receiver-2 "$LOGS/logs_receive_2.log" "$msg" "$msg-2"
        else
            fail seed.pubsub.fanout "$REASON"
        fi
    else
        fail seed.pubsub.fanout "$REASON"
    fi
    stop "$r1"
    stop "$r2"
    # logs_receive never logs its queue's name, so its (non-exclusive) queues
    # cannot be deleted; unbinding them keeps later runs unaffected.
    tidy delete-exchange logs
}

seed_routing() {
    local r1 r2 q1 q2 left
    tidy delete-exchange logs_direct
    if ! start_consumer direct_receive_error "$BIN/direct_receive" error; then
        fail seed.routing "$REASON"
        return
    fi
    r1=$BG_PID
    if ! start_consumer direct_receive_info_warning "$BIN/direct_receive" info warning; then
        fail seed.routing "$REASON"
        return
    fi
    r2=$BG_PID
    q1=$(queue_of "$LOGS/direct_receive_error.log")
    q2=$(queue_of "$LOGS/direct_receive_info_warning.log")

    # direct_send's body is all its args ("<severity> <text>").  The order
    # puts each receiver's last expected message after every message it must
    # not get, so once that arrives any misrouted one would have too.
    local s
    for s in "debug d-$TAG" "error e1-$TAG" "warning w-$TAG" "info i-$TAG" "error e2-$TAG"; do
        # shellcheck disable=SC2086 # split "<severity> <text>" into two args
        if ! send direct_send $s; then
            fail seed.routing "$REASON"
            stop "$r1"
            stop "$r2"
            return
        fi
    done
    if wait_msg "$LOGS/direct_receive_error.log" " [x] error e2-$TAG" 1 10 "$r1" &&
        wait_msg "$LOGS/direct_receive_info_warning.log" " [x] info i-$TAG" 1 10 "$r2"; then
        expect_received seed.routing.error-only "$LOGS/direct_receive_error.log" \
            "error e1-$TAG" "error e2-$TAG"
        expect_received seed.routing.info-warning "$LOGS/direct_receive_info_warning.log" \
            "warning w-$TAG" "info i-$TAG"
    else
        fail seed.routing "$REASON"
    fi
    stop "$r1"
    stop "$r2"

    # The seed declares its server-named queue non-exclusive and never acks
    # (autoAck=false, no d.Ack): after the consumer dies the queue must still
    # exist, holding the two requeued messages.
    if [[ -z $q1 ]]; then
        fail seed.routing.queue-outlives-consumer "direct_receive did not log its queue name"
    elif left=$(admin wait-count "$q1" 2 10); then
        pass seed.routing.queue-outlives-consumer
    else
        fail seed.routing.queue-outlives-consumer "queue $q1 has '$left' ready messages after its consumer died, expected 2"
    fi
    drop_queues "$q1" "$q2"
    tidy delete-exchange logs_direct
}

seed_topics() {
    local r1 r2 q1 q2 k
    tidy delete-exchange logs_topic
    if ! start_consumer topic_receive_orange "$BIN/topic_receive" '*.orange.*'; then
        fail seed.topics "$REASON"
        return
    fi
    r1=$BG_PID
    if ! start_consumer topic_receive_lazy_rabbit "$BIN/topic_receive" 'lazy.#' '*.*.rabbit'; then
        fail seed.topics "$REASON"
        stop "$r1"
        return
    fi
    r2=$BG_PID
    q1=$(queue_of "$LOGS/topic_receive_orange.log")
    q2=$(queue_of "$LOGS/topic_receive_lazy_rabbit.log")

    # Keys matching nothing go first and a key both receivers match goes
    # last, so its arrival proves nothing else is still in flight.
    # `*` is exactly one word, `#` zero or more; a queue matched by two of its
    # bindings (lazy.pink.rabbit) still gets the message once.
    local keys=(quick.brown.fox orange quick.orange.male.rabbit
        quick.orange.rabbit lazy.orange.elephant quick.orange.fox lazy.brown.fox
        lazy.pink.rabbit lazy.orange.male.rabbit lazy sync.orange.rabbit)
    for k in "${keys[@]}"; do
        if ! send topic_send "$k" "t-$TAG"; then
            fail seed.topics "$REASON"
            stop "$r1"
            stop "$r2"
            return
        fi
    done
    if wait_msg "$LOGS/topic_receive_orange.log" " [x] sync.orange.rabbit t-$TAG" 1 10 "$r1" &&
        wait_msg "$LOGS/topic_receive_lazy_rabbit.log" " [x] sync.orange.rabbit t-$TAG" 1 10 "$r2"; then
        expect_received 'seed.topics.*.orange.*' "$LOGS/topic_receive_orange.log" \
            "quick.orange.rabbit t-$TAG" "lazy.orange.elephant t-$TAG" \
            "quick.orange.fox t-$TAG" "sync.orange.rabbit t-$TAG"
        expect_received 'seed.topics.lazy.#+*.*.rabbit' "$LOGS/topic_receive_lazy_rabbit.log" \
            "quick.orange.rabbit t-$TAG" "lazy.orange.elephant t-$TAG" \
            "lazy.brown.fox t-$TAG" "lazy.pink.rabbit t-$TAG" \
            "lazy.orange.male.rabbit t-$TAG" "lazy t-$TAG" "sync.orange.rabbit t-$TAG"
    else
        fail seed.topics "$REASON"
    fi
    stop "$r1"
    stop "$r2"
    drop_queues "$q1" "$q2"
    tidy delete-exchange logs_topic
}

# ------------------------------------------------------------------ part 2: pika

pika_suite() {
    local rc=0 line
    timeout 120 "$PY" "$HERE/pika_checks.py" "$PORT" >"$LOGS/pika.log" 2>&1 || rc=$?
    while IFS= read -r line; do
        case $line in
        PASS\ *) pass "${line#PASS }" ;;
        SKIP\ *) echo "$line" ;;
        FAIL\ *)
            line=${line#FAIL }
            fail "${line%%: *}" "${line#*: }"
            ;;
        esac
    done <"$LOGS/pika.log"
    # A crash or timeout of the script itself is a failure of its own.
    if ((rc != 0)) && ! grep -q '^FAIL ' "$LOGS/pika.log"; then
        fail pika "pika_checks.py exited with status $rc: $(tail -n1 "$LOGS/pika.log")"
    fi
}

# ------------------------------------------------------------------ main

rm -rf "$LOGS"
mkdir -p "$LOGS" "$BIN"
: >"$LOGS/senders.log"

if ! "$PY" -c 'import pika' 2>/dev/null; then
    fail setup.pika "$PY cannot import pika (run interop/install.sh)"
    summary
    exit 1
fi

# shellcheck disable=SC2016 # $1 is expanded by the inner bash
if ! timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PORT" 2>/dev/null; then
    fail broker.reachable "nothing accepts TCP connections on 127.0.0.1:$PORT"
    summary
    exit 1
fi

# A broker that accepts TCP but never completes the AMQP handshake would
# otherwise make every check below sit out its own timeout.
if ! out=$(admin count amq.interop.handshake-probe 2>&1) && [[ $out != missing ]]; then
    fail broker.amqp-handshake "guest/guest on vhost / failed: $(tail -n1 <<<"$out")"
    summary
    exit 1
fi

if build_seed; then
    pass seed.build
    seed_hello
    seed_work_queues
    seed_pubsub
    seed_routing
    seed_topics
else
    fail seed.build "$REASON"
fi

pika_suite

summary
((FAILED == 0))
