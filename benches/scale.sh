#!/usr/bin/env bash
# Scale from zero on `ferry dev`: builds the release executor, then runs the `scale` bench
# (see benches/scale.rs), which prints a markdown table of medians: cold (no executor
# running) against warm, split into launch, model load and first token.
# Usage: benches/scale.sh   Env: ROUNDS [10], BENCH_MODEL [small|tiny].
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ferry-executor >&2
FERRY_EXECUTOR_BIN="$PWD/target/release/ferry-executor" cargo bench -p ferry-benches --bench scale
