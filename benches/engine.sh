#!/usr/bin/env bash
# Issue 13's benchmarks in one run, each beside its baseline, interleaved (ours, theirs,
# ours, theirs) so machine noise hits both. Prints JSON lines:
#   1. the engine alone (benches/engine.rs) against HF transformers `generate` with the
#      same prompts in one padded batch (benches/engine_reference.py), 1/8/32 jobs;
#   2. through `ferry dev` (benches/dev_engine.rs): 1/8/32 concurrent jobs with batching
#      on and off (--max-batch-sequences 1), inter-token latency at 32;
#   3. MiniLM sentences/s at batch 1 and 32 (benches/inference.rs) against
#      sentence-transformers and ONNX Runtime (benches/inference_reference.py).
#
#   FERRY_REF_PYTHON=/path/to/venv/bin/python FERRY_MINILM_DIR=/path/to/all-MiniLM-L6-v2 \
#     bash benches/engine.sh
#
# The venv needs torch (CPU), transformers, sentence-transformers, onnxruntime, onnx and
# onnxscript. Env: ROUNDS [2], ONLY [engine,dev,minilm].
set -euo pipefail
cd "$(dirname "$0")/.."
py="${FERRY_REF_PYTHON:-python3}"
models="${FERRY_BENCH_MODELS:-${TMPDIR:-/tmp}/ferry-bench-models}"
only="${ONLY:-engine,dev,minilm}"
rounds="${ROUNDS:-2}"
cargo build --release -p ferry-executor >&2
cargo bench -p ferry-benches --bench engine --bench dev_engine --bench inference --no-run >&2
for round in $(seq 1 "$rounds"); do
  echo "# round $round"
  if [[ $only == *engine* ]]; then
    cargo bench -q -p ferry-benches --bench engine -- --models "$models" 2>/dev/null
    "$py" benches/engine_reference.py --models "$models" 2>/dev/null
  fi
  if [[ $only == *dev* ]]; then
    FERRY_EXECUTOR_BIN="$PWD/target/release/ferry-executor" cargo bench -q -p ferry-benches --bench dev_engine 2>/dev/null
  fi
  if [[ $only == *minilm* ]]; then
    cargo bench -q -p ferry-benches --bench inference -- minilm 2>/dev/null
    "$py" benches/inference_reference.py minilm onnx --models "$models" 2>/dev/null
  fi
done
