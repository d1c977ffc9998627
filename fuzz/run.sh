#!/usr/bin/env bash
# Runs every fuzz target for RUNS executions each (default 1,000,000).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Not run by CI: it takes minutes. Usage: fuzz/run.sh [RUNS] [TARGET...]
#
# Built without a sanitizer (`-s none`): the code under test is safe Rust,
# and what we look for (panics, stack overflows, runaway allocation, hangs)
# libFuzzer catches by itself; it runs many times faster. Findings land in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
runs=${1:-1000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(gateway_transcode config_paths raft_decode)
fi
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t: $runs runs"
    cargo +nightly fuzz run -s none --fuzz-dir . "$t" "corpus/$t" -- \
        -runs="$runs" -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -timeout=10 -print_final_stats=1
done
