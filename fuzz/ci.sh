#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 20 s each), starting from the committed
# seeds (real client traffic recorded by capture.py: pika and Go clients) plus the harnesses'
# own seeds. Prints executions per target; exits non-zero on any crash (libFuzzer keeps the
# input under artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")"
per_target=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
# cargo-fuzz passes nightly-only flags; the machine has only the stable toolchain, which accepts
# them when told it is bootstrapping. Without a sanitizer: the code fuzzed forbids unsafe, and
# panics and the harnesses' own checks are what can fail.
export RUSTC_BOOTSTRAP=1
cargo run -q --release --bin write_seeds >/dev/null
targets="frame_decode method_decode content_assembler field_table"
for t in $targets; do
    mkdir -p "corpus/$t"
    if [[ -d "seeds/$t" ]]; then cp -n seeds/$t/* "corpus/$t/" 2>/dev/null || true; fi
    log=$(mktemp)
    if ! cargo fuzz run --release --sanitizer none "$t" "corpus/$t" -- -max_total_time="$per_target" \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz: $t FAILED"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\)/\1/p' "$log" | tail -n 1)
    echo "fuzz: $t ${runs:-?} executions in ${per_target} s, no crash"
    rm -f "$log"
done
