#!/usr/bin/env bash
# The engine on a GPU (issue 13): decode tokens/s at 1, 8, 32 and 128 concurrent sequences
# of a ~1B-parameter Llama-shaped model (random bf16 weights, the Llama-3.2-1B layer shape)
# beside HF transformers `generate` on the same card, plus the memory-bandwidth roofline
# fraction at batch 1.
#
# Two steps, as ../shared/GPU.md describes (the GPU machines have no Rust and no network):
#
#   bash benches/gpu.sh build   # here, on a CPU machine: CUDA build of the engine bench
#                               # (nvcc 13.0 from PyPI, a libcuda stub for the link), copied
#                               # with what the run needs into gpu-run/ (ignored by git)
#   bash benches/gpu.sh run     # there, from the repository root with gpu-run/ beside it:
#                               # writes the model, runs Ferry then transformers, prints a table
#
# `run` needs python3 with torch (CUDA 13 wheels) and transformers; it points
# LD_LIBRARY_PATH at PyTorch's nvidia/cu13/lib. Env: JOBS [1,8,32,128], BANDWIDTH_TBS
# (the card's memory bandwidth; default from nvidia-smi's name: H100 3.35, H200 4.8).
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-run
grep -qx "/$out/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$out/" >> .git/info/exclude; }

build() {
  local venv="${CUDA_VENV:-${TMPDIR:-/tmp}/ferry-cuda-venv}"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.* nvidia-curand==10.4.* \
      nvidia-cuda-nvrtc==13.0.*
  fi
  local cu13
  cu13="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
  # The link wants unversioned libraries and a libcuda: symlinks to the wheels' and a stub
  # exporting every driver symbol cudarc declares (the real one comes from the driver).
  local link="$venv/link"
  mkdir -p "$link"
  for lib in cublas cublasLt curand nvrtc cudart; do
    local found
    found="$(ls "$cu13"/lib/lib$lib.so.* 2>/dev/null | head -1 || true)"
    [[ -n $found ]] && ln -sf "$found" "$link/lib$lib.so"
  done
  local cudarc
  cudarc="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* | head -1)"
  grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" | awk '{print $NF}' | sort -u |
    sed 's/.*/int &(void) { return 0; }/' > "$link/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda_stub.c"
  export CUDA_HOME="$cu13" CUDA_PATH="$cu13" CUDA_ROOT="$cu13" PATH="$cu13/bin:$PATH"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
  export LIBRARY_PATH="$link:$cu13/lib:${LIBRARY_PATH:-}"
  export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-target-cuda}"
  local bin
  bin="$(cargo bench -p ferry-benches --features cuda --bench engine --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine" and m.get("executable"):
        print(m["executable"])')"
  [[ -n $bin ]] || { echo "the CUDA build failed: rerun cargo bench -p ferry-benches --features cuda --bench engine --no-run" >&2; exit 1; }
  mkdir -p "$out"
  cp "$bin" "$out/engine"
  cp benches/engine_reference.py benches/inference_sentences.txt "$out/"
  cp "$0" "$out/gpu.sh"
  echo "built $out/engine ($(du -h "$out/engine" | cut -f1)); carry $out/ to the GPU machine and run: bash $out/gpu.sh run" >&2
}

run() {
  local here="$out"
  [[ -x $here/engine ]] || here="$(dirname "$0")"
  local jobs="${JOBS:-1,8,32,128}" models="${TMPDIR:-/tmp}/ferry-gpu-models"
  local nv
  nv="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')"
  # Exactly the CUDA 13 libraries, first: no stray CUDA 12 libcublas.so wins.
  local libs="${TMPDIR:-/tmp}/ferry-cuda-libs"
  mkdir -p "$libs"
  for f in "$nv"/lib*.so*; do ln -sf "$f" "$libs/"; done
  export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
  local card bw
  card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  bw="${BANDWIDTH_TBS:-$(case "$card" in *H200*) echo 4.8 ;; *H100*) echo 3.35 ;; *) echo 0 ;; esac)}"
  local results="${TMPDIR:-/tmp}/ferry-gpu-results.jsonl"
  "$here/engine" --device cuda --shape llama-1b --jobs "$jobs" --models "$models" | tee "$results"
  (cd "$here" && python3 engine_reference.py --device cuda --shape llama-1b --jobs "$jobs" --models "$models") | tee -a "$results"
  python3 - "$results" "$bw" "$card" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
bw, card = float(sys.argv[2]), sys.argv[3]
bytes_per_step = next(r["bytes_per_step"] for r in rows if "bytes_per_step" in r)
ferry = {r["jobs"]: r["tokens_per_s"] for r in rows if r.get("impl") == "ferry-engine"}
hf = {r["jobs"]: r["tokens_per_s"] for r in rows if r.get("impl", "").startswith("hf-")}
print(f"\n{card}, llama-1b shape (bf16, {bytes_per_step / 1e9:.2f} GB of weights per decode step)\n")
print("| concurrent sequences | Ferry engine tok/s | transformers tok/s | Ferry / transformers |")
print("|---:|---:|---:|---:|")
for n in sorted(ferry):
    h = hf.get(n)
    print(f"| {n} | {ferry[n]:.1f} | {h if h else '-'} | {ferry[n] / h:.2f}x |" if h else f"| {n} | {ferry[n]:.1f} | - | - |")
if bw and 1 in ferry:
    roof = bw * 1e12 / bytes_per_step
    print(f"\nbatch 1: {ferry[1]:.1f} tok/s of a {roof:.0f} tok/s memory roofline at {bw} TB/s: {ferry[1] / roof:.1%}")
PY
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: bash benches/gpu.sh build|run" >&2; exit 2 ;;
esac
