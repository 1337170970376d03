#!/usr/bin/env bash
# End-to-end tests of the web UI in Debian's headless Chromium (playwright-core, no browser
# download). Installs what it needs, starts a warren on spare ports, runs the tests and ends
# with "ui-tests: N passed, N failed".
#   bash ui-tests/run.sh                 # uses target/release/warren if built, else builds debug
#   bash ui-tests/run.sh --screenshots   # also writes docs/screenshots/*.png
#   WARREN_BIN=path bash ui-tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

shots=""
if [[ ${1:-} == --screenshots ]]; then shots="$root/docs/screenshots"; fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi
if [[ ! -x /usr/bin/chromium ]]; then
    echo "ui-tests: installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null 2>&1 ||
        { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null; }
fi
(cd ui-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

bin=${WARREN_BIN:-}
target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z $bin ]]; then
    if [[ -x $target/release/warren ]]; then
        bin=$target/release/warren
    else
        cargo build -q -p warren
        bin=$target/debug/warren
    fi
fi

bin=$(realpath "$bin")
data=$(mktemp -d)
out=$(mktemp)
err=$(mktemp)
"$bin" --amqp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$data" >"$out" 2>"$err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data" "$out" "$err"' EXIT
http="" amqp=""
for _ in $(seq 1 400); do
    http=$(sed -n 's/^listening http \(.*\)$/\1/p' "$out")
    amqp=$(sed -n 's/^listening amqp .*:\([0-9]*\)$/\1/p' "$out")
    [[ -n $http && -n $amqp ]] && break
    kill -0 $pid 2>/dev/null || { cat "$err"; echo "ui-tests: broker exited early"; echo "ui-tests: 0 passed, 1 failed"; exit 1; }
    sleep 0.05
done
if [[ -z $http || -z $amqp ]]; then echo "ui-tests: broker did not report its ports"; echo "ui-tests: 0 passed, 1 failed"; exit 1; fi

log=$(mktemp)
status=0
(cd ui-tests && WARREN_HTTP=$http WARREN_AMQP_PORT=$amqp WARREN_BIN=$bin UI_SCREENSHOTS=$shots \
    node --test --test-concurrency=1 --test-reporter=spec tests/) 2>&1 | tee "$log" || status=$?
passed=$(sed -n 's/^. pass \([0-9]*\)$/\1/p' "$log" | tail -n1)
failed=$(sed -n 's/^. fail \([0-9]*\)$/\1/p' "$log" | tail -n1)
rm -f "$log"
if [[ -z $passed ]]; then passed=0; failed=${failed:-1}; status=1; fi
if ((status != 0)); then echo "== broker log (tail)"; tail -n 30 "$err"; fi
echo "ui-tests: $passed passed, ${failed:-0} failed"
exit $status
