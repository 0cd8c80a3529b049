#!/usr/bin/env bash
# Issue 14's benchmarks in one run, each beside its peer, interleaved (ours, theirs, ours,
# theirs) so machine noise hits both. Prints JSON lines:
#   1. per text-generation family, decode tokens/s at batch 1 and 32 through the engine
#      (benches/families.rs) against HF transformers `generate` on the same model and
#      prompt ids (benches/families_reference.py transformers);
#   2. the ~60M-parameter Llama as GGUF Q4_K_M and Q8_0, batch 1, against llama.cpp on the
#      same files (families_reference.py llama-cpp), with load time and resident memory.
#
#   FERRY_REF_PYTHON=/path/to/venv/bin/python bash benches/families.sh
#
# The venv needs torch (CPU), transformers, gguf and llama-cpp-python (it builds llama.cpp
# from source). Env: ROUNDS [2], ONLY [family,gguf].
set -euo pipefail
cd "$(dirname "$0")/.."
py="${FERRY_REF_PYTHON:-python3}"
models="${FERRY_BENCH_MODELS:-${TMPDIR:-/tmp}/ferry-bench-models}"
only="${ONLY:-family,gguf}"
rounds="${ROUNDS:-2}"
cargo bench -p ferry-benches --bench families --no-run >&2
[ -f "$models/gguf/llama-60m-Q8_0.gguf" ] || "$py" benches/families_reference.py write --models "$models" >&2
ggufs=("$models/gguf/llama-60m-Q4_K_M.gguf" "$models/gguf/llama-60m-Q8_0.gguf")
for round in $(seq 1 "$rounds"); do
  echo "# round $round"
  if [[ $only == *family* ]]; then
    cargo bench -q -p ferry-benches --bench families -- --models "$models" 2>/dev/null
    "$py" benches/families_reference.py transformers --models "$models" 2>/dev/null
  fi
  if [[ $only == *gguf* ]]; then
    cargo bench -q -p ferry-benches --bench families -- --models "$models" --gguf "${ggufs[@]}" 2>/dev/null
    "$py" benches/families_reference.py llama-cpp "${ggufs[@]}" --models "$models" 2>/dev/null
  fi
done
