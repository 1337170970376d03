#!/usr/bin/env bash
# The AMQP clients' own integration suites, run unchanged against the broker on 127.0.0.1:PORT.
#
#   interop/client-suites.sh PORT [HTTP_PORT]
#
# Suites, each installed from its registry by package name (never kept in this repo):
#   amqp091-go  Debian's golang-github-rabbitmq-amqp091-go-dev: *_test.go with the
#               `integration` build tag, built in GOPATH mode with Debian's Go.
#   py-amqp     PyPI sdist of amqp: t/integration/.
#   kombu       PyPI sdist of kombu: t/integration/test_py_amqp.py (the other files there
#               are for Redis, MongoDB, Kafka, SQS and Postgres).
#   amqplib     npm amqplib at the newest version whose package still ships test/ (later
#               ones publish lib/ only), with the devDependency its tests require.
#   lapin       the lapin crate from crates.io: tests/ plus the examples that end by
#               themselves; each panics on any error the broker answers.
#
# The suites dial 127.0.0.1:5672, localhost:5672 or [::1]:5672, some in code that has no
# setting for it. So each runs in a network namespace of its own, where those addresses
# lead to PORT through socat and a unix socket: the tests run exactly as published, and
# ports such as 5671 or 23450, which they expect to be closed, are closed there. Needs root
# (unshare -n). HTTP_PORT is accepted for symmetry with the other interop scripts; no suite
# needs the management API.
#
# Run against a fresh broker: some suites leave queues behind (kombu's priority_requeue_test
# keeps messages and fails its own test on a second run against the same broker, RabbitMQ too).
#
# interop/client-suites.exclude lists the tests not counted, each with its reason. Prints
# one line per suite and ends with `interop-client-suites: N passed, M failed`; the exit
# status is non-zero if any counted test failed or a suite did not finish.
#
# Environment:
#   CLIENT_SUITES               the suites to run (default: all five, in the order above)
#   CLIENT_SUITES_EXCLUDE       the exclusion list (default: interop/client-suites.exclude;
#                               /dev/null gives the raw results, as for a RabbitMQ baseline)
#   WARREN_CLIENT_SUITES_CACHE  where installs and builds are kept between runs
#                               (default: ~/.cache/warren-client-suites)
#   CLIENT_SUITES_AMQPS_PORT    the broker's AMQPS port, and
#   CLIENT_SUITES_CERT_DIR      the certificates it was started with, as interop/make-certs.sh
#                               makes them (its CA, and a client pair it trusts): py-amqp's TLS
#                               cases then run against it through localhost:5671 in the
#                               namespace, with these files as the suite's t/certs/. Without
#                               them those cases are not run (and not counted).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)

# ------------------------------------------------------------ inside the namespace
# client-suites.sh --in-netns SOCK DIR TIMEOUT_S CMD...: bring up lo, bridge 5672 to SOCK,
# then run CMD in DIR with a time limit.
# With TLS_SOCK (not "-"), 5671 leads there the same way.
if [[ ${1:-} == --in-netns ]]; then
    sock=$2 tls_sock=$3 dir=$4 limit_s=$5
    shift 5
    ip link set lo up
    bridges=()
    # bridge PORT SOCK: 127.0.0.1:PORT and [::1]:PORT lead to SOCK; waits until they listen.
    bridge() {
        socat TCP4-LISTEN:"$1",bind=127.0.0.1,reuseaddr,fork UNIX-CONNECT:"$2" </dev/null >/dev/null 2>&1 &
        bridges+=($!)
        socat TCP6-LISTEN:"$1",bind=[::1],ipv6only,reuseaddr,fork UNIX-CONNECT:"$2" </dev/null >/dev/null 2>&1 &
        bridges+=($!)
        for _ in $(seq 1 250); do
            listening=$(ss -ltnH "sport = :$1")
            [[ $listening == *127.0.0.1:$1* && $listening == *"[::1]:$1"* ]] && break
            sleep 0.02
        done
    }
    trap 'kill "${bridges[@]}" 2>/dev/null || true' EXIT
    trap 'exit 143' TERM INT
    bridge 5672 "$sock"
    [[ $tls_sock != - ]] && bridge 5671 "$tls_sock"
    cd "$dir"
    status=0
    timeout -k 10 "$limit_s" "$@" || status=$?
    exit $status
fi

if [[ $# -lt 1 || $# -gt 2 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 PORT [HTTP_PORT]" >&2
    exit 2
fi
PORT=$1

# Versions are pinned so that a change in the results is a change in the broker. amqplib
# 2.2.0 is the last release whose npm package includes test/. py-amqp's tests ask for
# pytest <= 8.0.0.
AMQP_PY_VERSION=5.4.2
KOMBU_VERSION=5.7.0
PYTEST_VERSION=8.0.0
AMQPLIB_VERSION=2.2.0
LAPIN_VERSION=2.5.5

# Per-suite time limits. Against RabbitMQ 3.10 on this 2-core machine the suites take about
# 70 s (amqp091-go, one test alone 62 s), 2 s, 43 s, 18 s and 5 s.
GO_LIMIT_S=240
PY_AMQP_LIMIT_S=90
KOMBU_LIMIT_S=150
AMQPLIB_LIMIT_S=120
LAPIN_LIMIT_S=60

CACHE=${WARREN_CLIENT_SUITES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warren-client-suites}
EXCLUDE=${CLIENT_SUITES_EXCLUDE:-$HERE/client-suites.exclude}
LOGS=$HERE/.build/client-suites
SUITES=${CLIENT_SUITES:-amqp091-go py-amqp kombu amqplib lapin}
SYS_PY=/usr/bin/python3
VENV=$CACHE/venv
GO_PKG=github.com/rabbitmq/amqp091-go
LAPIN_DIR=$CACHE/lapin/lapin-$LAPIN_VERSION
LAPIN_TARGET=$CACHE/lapin/target
# The lapin examples that need a broker and end by themselves.
LAPIN_EXAMPLES=(connection publisher_confirms print-topology restore-topology)

mkdir -p "$CACHE" "$LOGS"
rm -f "$LOGS"/*

TOTAL_PASSED=0
TOTAL_FAILED=0
SOCK=$(mktemp -u /tmp/client-suites.XXXXXX.sock)
AMQPS_PORT=${CLIENT_SUITES_AMQPS_PORT:-}
CERT_DIR=${CLIENT_SUITES_CERT_DIR:-}
TLS_SOCK=-
if [[ -n $AMQPS_PORT && -n $CERT_DIR ]]; then
    TLS_SOCK=$(mktemp -u /tmp/client-suites-tls.XXXXXX.sock)
fi
BRIDGE_PIDS=()
cleanup() {
    ((${#BRIDGE_PIDS[@]})) && kill "${BRIDGE_PIDS[@]}" 2>/dev/null
    rm -f "$SOCK"
    [[ $TLS_SOCK != - ]] && rm -f "$TLS_SOCK"
}
trap cleanup EXIT

# in_netns DIR TIMEOUT_S CMD...: run CMD where 127.0.0.1:5672 and [::1]:5672 are the broker
# (and 5671 its AMQPS port, when there is one).
in_netns() {
    unshare -n "$HERE/client-suites.sh" --in-netns "$SOCK" "$TLS_SOCK" "$@"
}

# ------------------------------------------------------------------ installs

install_debian() {
    bash "$HERE/install.sh" >"$LOGS/install-debian.log" 2>&1 || {
        cat "$LOGS/install-debian.log"
        return 1
    }
}

install_python() {
    local want="amqp==$AMQP_PY_VERSION kombu==$KOMBU_VERSION pytest==$PYTEST_VERSION"
    if [[ $(cat "$VENV/.installed" 2>/dev/null) != "$want" ]]; then
        rm -rf "$VENV"
        "$SYS_PY" -m venv "$VENV"
        # shellcheck disable=SC2086 # $want is a list of requirements
        "$VENV/bin/pip" install -q --disable-pip-version-check $want
        echo "$want" >"$VENV/.installed"
    fi
    local name version
    for name in amqp kombu; do
        version=$AMQP_PY_VERSION
        [[ $name == kombu ]] && version=$KOMBU_VERSION
        [[ -d $CACHE/sdist/$name-$version/t/integration ]] && continue
        mkdir -p "$CACHE/sdist"
        "$VENV/bin/pip" download -q --disable-pip-version-check --no-binary :all: --no-deps \
            -d "$CACHE/sdist" "$name==$version"
        tar -xzf "$CACHE/sdist/$name-$version.tar.gz" -C "$CACHE/sdist"
    done
}

install_amqplib() {
    local npm_dir=$CACHE/npm pkg
    pkg=$npm_dir/node_modules/amqplib/package.json
    if [[ ! -f $pkg || $(node -p "require('$pkg').version") != "$AMQPLIB_VERSION" ]]; then
        mkdir -p "$npm_dir"
        npm install --prefix "$npm_dir" --no-audit --no-fund --silent "amqplib@$AMQPLIB_VERSION"
    fi
    # The tests require the property-testing library named in its devDependencies.
    local claire
    claire=$(node -p "require('$pkg').devDependencies.claire")
    if [[ ! -f $npm_dir/node_modules/claire/package.json ||
        $(node -p "require('$npm_dir/node_modules/claire/package.json').version") != "$claire" ]]; then
        npm install --prefix "$npm_dir" --no-audit --no-fund --silent "amqplib@$AMQPLIB_VERSION" "claire@$claire"
    fi
}

install_lapin() {
    if [[ ! -f $LAPIN_DIR/Cargo.toml ]]; then
        # A throwaway crate that depends on lapin makes cargo fetch its source from crates.io.
        local fetch=$CACHE/lapin/fetch src
        mkdir -p "$fetch/src"
        printf '[package]\nname = "fetch-lapin"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[dependencies]\nlapin = "=%s"\n' \
            "$LAPIN_VERSION" >"$fetch/Cargo.toml"
        : >"$fetch/src/lib.rs"
        (cd "$fetch" && cargo fetch -q)
        src=$(cd "$fetch" && cargo metadata -q --format-version 1 | "$SYS_PY" -c '
import json, os, sys
meta = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "lapin"))')
        rm -rf "$LAPIN_DIR.tmp"
        cp -r "$src" "$LAPIN_DIR.tmp"
        mv "$LAPIN_DIR.tmp" "$LAPIN_DIR"
    fi
    # With its own Cargo.lock; a no-op when already built.
    (cd "$LAPIN_DIR" && CARGO_TARGET_DIR=$LAPIN_TARGET nice cargo build -q --locked --tests --examples)
}

# ------------------------------------------------------------------ counting

# tally SUITE STATUS LIMIT_S SECONDS: count SUITE's results file against the exclusion list.
tally() {
    local suite=$1 status=$2 limit_s=$3 seconds=$4
    local -A excluded=()
    local line id verdict passed=0 failed=0 skipped=0 failed_excluded=0
    while IFS= read -r line; do
        [[ $line =~ ^([a-z0-9-]+)\ (.*[^ ])\ +#\  ]] || continue
        [[ ${BASH_REMATCH[1]} == "$suite" ]] && excluded[${BASH_REMATCH[2]}]=1
    done <"$EXCLUDE"
    while IFS=$'\t' read -r verdict id; do
        if [[ -n ${excluded[$id]:-} ]]; then
            skipped=$((skipped + 1))
            [[ $verdict == FAIL ]] && failed_excluded=$((failed_excluded + 1))
        elif [[ $verdict == PASS ]]; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            echo "FAIL $suite: $id"
        fi
    done <"$LOGS/$suite.results"
    if ((status == 124 || status == 137)); then
        failed=$((failed + 1))
        echo "FAIL $suite: did not finish within $limit_s s"
    elif ((status != 0 && failed == 0 && failed_excluded == 0)); then
        failed=$((failed + 1))
        echo "FAIL $suite: the runner exited with status $status and reported no failing test"
    fi
    if ((passed + failed == 0)); then
        failed=1
        echo "FAIL $suite: ran no test"
    fi
    ((failed == 0)) || echo "  log: $LOGS/$suite.out"
    echo "suite $suite: passed $passed, failed $failed, excluded $((${#excluded[@]})) (${seconds} s)"
    TOTAL_PASSED=$((TOTAL_PASSED + passed))
    TOTAL_FAILED=$((TOTAL_FAILED + failed))
}

# excluded_ids SUITE: the test ids excluded for SUITE, one a line.
excluded_ids() {
    sed -n "s/^$1 \(.*[^ ]\)  *# .*/\1/p" "$EXCLUDE"
}

# ------------------------------------------------------------------ suites
# Each run_X writes the runner's output to $LOGS/X.out and `PASS|FAIL<TAB>id` lines to
# $LOGS/X.results, and returns the runner's exit status.

go_env() {
    env GOENV=off GO111MODULE=off GOFLAGS="" CGO_ENABLED=0 GOPATH=/usr/share/gocode \
        GOCACHE="$CACHE/gocache" "$@"
}

run_amqp091_go() {
    # Go 1.19 has no -skip: run the listed tests minus the excluded ones by name. Excluded
    # tests must not run at all, since goleak checks the whole binary at its end.
    local names pattern status=0
    names=$(go_env go test -tags integration -list . "$GO_PKG" | grep -E '^(Test|Example)' |
        grep -vxF -f <(excluded_ids amqp091-go) || true)
    pattern="^($(paste -sd'|' <<<"$names"))\$"
    in_netns "$LOGS" "$GO_LIMIT_S" env GOENV=off GO111MODULE=off GOFLAGS="" CGO_ENABLED=0 \
        GOPATH=/usr/share/gocode GOCACHE="$CACHE/gocache" \
        go test -tags integration -count=1 -json -timeout "$((GO_LIMIT_S - 10))s" -run "$pattern" "$GO_PKG" \
        >"$LOGS/amqp091-go.out" 2>&1 || status=$?
    "$SYS_PY" "$HERE/suite_results.py" gojson "$LOGS/amqp091-go.out" >"$LOGS/amqp091-go.results"
    return $status
}

# run_pytest SUITE DIR LIMIT_S PATH [PYTEST_ARGS...]: a sdist's tests, once each (the
# flaky-rerun plugin is left out so that a test that fails at first is seen).
run_pytest() {
    local suite=$1 dir=$2 limit_s=$3 path=$4 status=0 id
    shift 4
    local deselect=("$@")
    while IFS= read -r id; do deselect+=(--deselect "$id"); done < <(excluded_ids "$suite")
    in_netns "$dir" "$limit_s" "$VENV/bin/python" -m pytest -p no:rerunfailures -p no:cacheprovider \
        -W ignore -q -rA "${deselect[@]}" "$path" >"$LOGS/$suite.out" 2>&1 || status=$?
    "$SYS_PY" "$HERE/suite_results.py" pytest "$LOGS/$suite.out" >"$LOGS/$suite.results"
    return $status
}

run_py_amqp() {
    local dir=$CACHE/sdist/amqp-$AMQP_PY_VERSION
    rm -rf "$dir/t/certs"
    if [[ $TLS_SOCK != - ]]; then
        mkdir -p "$dir/t/certs"
        cp "$CERT_DIR"/ca_certificate.pem "$CERT_DIR"/client_*.pem "$dir/t/certs/"
        PY_AMQP_DESELECT=()
    else
        echo "py-amqp: no CLIENT_SUITES_AMQPS_PORT and CLIENT_SUITES_CERT_DIR: its TLS cases are not run"
        PY_AMQP_DESELECT=(-k "not tls")
    fi
    run_pytest py-amqp "$dir" "$PY_AMQP_LIMIT_S" t/integration "${PY_AMQP_DESELECT[@]}"
}

run_kombu() {
    run_pytest kombu "$CACHE/sdist/kombu-$KOMBU_VERSION" "$KOMBU_LIMIT_S" t/integration/test_py_amqp.py
}

run_amqplib() {
    # The package's own script gives each test 1 s, which node 20 also applies to each file
    # as a whole; 30 s per test keeps a hang bounded without failing whole files.
    local status=0
    rm -f "$LOGS/amqplib.xml"
    in_netns "$CACHE/npm/node_modules/amqplib" "$AMQPLIB_LIMIT_S" node --test --test-timeout=30000 \
        --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=junit --test-reporter-destination="$LOGS/amqplib.xml" test/ \
        >"$LOGS/amqplib.out" 2>&1 || status=$?
    if [[ -s $LOGS/amqplib.xml ]]; then
        "$SYS_PY" "$HERE/suite_results.py" junit "$LOGS/amqplib.xml" >"$LOGS/amqplib.results"
    else
        : >"$LOGS/amqplib.results"
    fi
    return $status
}

run_lapin() {
    local status=0 example rc
    in_netns "$LAPIN_DIR" "$LAPIN_LIMIT_S" env CARGO_TARGET_DIR="$LAPIN_TARGET" \
        cargo test --offline --locked --test connection --test publisher_confirms \
        >"$LOGS/lapin.out" 2>&1 || status=$?
    "$SYS_PY" "$HERE/suite_results.py" cargo "$LOGS/lapin.out" >"$LOGS/lapin.results"
    for example in "${LAPIN_EXAMPLES[@]}"; do
        rc=0
        echo "== example $example" >>"$LOGS/lapin.out"
        in_netns "$LAPIN_DIR" 30 "$LAPIN_TARGET/debug/examples/$example" >>"$LOGS/lapin.out" 2>&1 || rc=$?
        if ((rc == 0)); then
            printf 'PASS\texample %s\n' "$example" >>"$LOGS/lapin.results"
        else
            printf 'FAIL\texample %s\n' "$example" >>"$LOGS/lapin.results"
            ((rc == 124 || rc == 137)) && status=$rc
        fi
    done
    return $status
}

# ------------------------------------------------------------------ main

echo "client-suites: installing (cache $CACHE)"
install_debian
for suite in $SUITES; do
    case $suite in
    amqp091-go) ;; # Debian's packages, installed above
    py-amqp | kombu) install_python ;;
    amqplib) install_amqplib ;;
    lapin) install_lapin ;;
    *)
        echo "unknown suite $suite" >&2
        exit 2
        ;;
    esac
done

# listen SOCK PORT: SOCK leads to the broker's 127.0.0.1:PORT.
listen() {
    socat UNIX-LISTEN:"$1",fork TCP:127.0.0.1:"$2" </dev/null >/dev/null 2>&1 &
    BRIDGE_PIDS+=($!)
    for _ in $(seq 1 250); do
        [[ -S $1 ]] && break
        sleep 0.02
    done
}
listen "$SOCK" "$PORT"
[[ $TLS_SOCK != - ]] && listen "$TLS_SOCK" "$AMQPS_PORT"

for suite in $SUITES; do
    started=$SECONDS
    status=0
    case $suite in
    amqp091-go) run_amqp091_go || status=$? ;;
    py-amqp) run_py_amqp || status=$? ;;
    kombu) run_kombu || status=$? ;;
    amqplib) run_amqplib || status=$? ;;
    lapin) run_lapin || status=$? ;;
    esac
    limit_var=$(tr 'a-z-' 'A-Z_' <<<"$suite" | sed 's/AMQP091_GO/GO/')_LIMIT_S
    tally "$suite" "$status" "${!limit_var}" $((SECONDS - started))
done

echo "interop-client-suites: $TOTAL_PASSED passed, $TOTAL_FAILED failed"
((TOTAL_FAILED == 0))
