#!/usr/bin/env bash
# Issue 16's CLIP benchmark: image embeddings per second at batch 1 and 32, Ferry
# (benches/clip.rs) beside HF transformers (benches/clip_reference.py) on the same
# ViT-B/32-shaped random model and the same 32 JPEGs, interleaved by round. JSON lines.
#
#   FERRY_REF_PYTHON=/path/to/venv/bin/python bash benches/clip.sh
#
# The venv needs torch (CPU), transformers and Pillow (torchvision optional: transformers
# uses it for preprocessing when present). Env: ROUNDS [2].
set -euo pipefail
cd "$(dirname "$0")/.."
py="${FERRY_REF_PYTHON:-python3}"
models="${FERRY_BENCH_MODELS:-${TMPDIR:-/tmp}/ferry-bench-models}"
rounds="${ROUNDS:-2}"
cargo bench -p ferry-benches --bench clip --no-run >&2
[ -f "$models/clip-b32/model.safetensors" ] || "$py" benches/clip_reference.py write --models "$models" >&2
for round in $(seq 1 "$rounds"); do
  echo "# round $round"
  cargo bench -q -p ferry-benches --bench clip -- --models "$models" 2>/dev/null
  "$py" benches/clip_reference.py transformers --models "$models" 2>/dev/null
done
