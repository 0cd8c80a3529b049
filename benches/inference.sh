#!/usr/bin/env bash
# CPU inference, Ferry (candle) beside the reference implementations on PyTorch, in one
# run, interleaved: Rust, Python, Rust, Python. Prints every measurement (JSON lines).
#
#   FERRY_REF_PYTHON=/path/to/venv/bin/python FERRY_MINILM_DIR=/path/to/all-MiniLM-L6-v2 \
#     bash benches/inference.sh
#
# The reference venv needs torch (CPU), transformers and sentence-transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${FERRY_REF_PYTHON:-python3}"
models="${FERRY_BENCH_MODELS:-${TMPDIR:-/tmp}/ferry-bench-models}"
cargo bench -p ferry-benches --bench inference --no-run >/dev/null 2>&1
for round in 1 2; do
  echo "# round $round"
  cargo bench -q -p ferry-benches --bench inference -- --models "$models" 2>/dev/null
  "$py" benches/inference_reference.py --models "$models" 2>/dev/null
done
