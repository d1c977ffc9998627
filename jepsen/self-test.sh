#!/usr/bin/env bash
# The power-fault self-test of micro-jepsen: a `micro` whose flushes and
# fsyncs are no-ops (the `no-fsync` feature of micro-raft, used only here)
# must LOSE acknowledged writes under correlated power failures, and the
# harness must say so (exit 0); then the normal build must PASS the same
# faults. Needs root and /dev/fuse. Extra arguments go to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
seconds="${SELF_TEST_SECONDS:-60}"

cargo build --locked -p micro-cli --bin micro --features no-fsync
cp "$target/debug/micro" "$target/debug/micro-nofsync"
cargo build --locked -p micro-cli --bin micro -p micro-jepsen --bins

echo "== no-fsync build: expected to lose acknowledged writes"
"$target/debug/micro-jepsen" --micro "$target/debug/micro-nofsync" \
    --nemesis power --expect-lost-writes --seconds "$seconds" --final-reads 200 "$@"

echo "== normal build: expected to PASS"
"$target/debug/micro-jepsen" --nemesis power,kill --seconds "$seconds" "$@"
