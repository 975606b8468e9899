#!/usr/bin/env bash
# The GPU checks: the CUDA tests (engine/tests/cuda.rs: every family against transformers on the
# GPU, generation, lens, word gradient and training against the CPU) and the benchmark against
# PyTorch on the same GPU (bench/compare_pytorch.py --device cuda).
#
#   scripts/gpu-check.sh            build, test and benchmark here (a machine with Rust and a GPU)
#   scripts/gpu-check.sh pack DIR   build here, no GPU needed; put what `run` needs into DIR
#   scripts/gpu-check.sh run DIR    run the packed checks on a GPU machine without Rust
#
# The toolchain comes from scripts/cuda-env.sh (CUDA 13.0 wheels; CUDA_COMPUTE_CAP, default 90).
# `run` benchmarks NEOSCOPE_BENCH_MODEL if set, else the default model when it is cached, else a
# same-shape random checkpoint written by bench/synth_model.py from DIR/tokenizer.json.
# Results go to $NEOSCOPE_GPU_OUT (default target/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
  local dir="$1"
  # shellcheck source=scripts/cuda-env.sh
  source scripts/cuda-env.sh
  mkdir -p "$dir"
  # The same command as scripts/test.sh's (one feature resolution, so nothing is rebuilt).
  local tests
  tests="$(cargo build --release --features cuda -p neoscope-engine -p neoscope --bin neoscope \
    --test cuda --message-format=json | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')"
  cp target/release/neoscope "$dir/neoscope"
  cp "$tests" "$dir/cuda-tests"
  local gguf="$HOME/.cache/neoscope/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ -f "$gguf" ] && [ ! -f "$dir/tokenizer.json" ]; then
    python3 bench/export_tokenizer.py --gguf "$gguf" --out "$dir/tokenizer.json"
  fi
}

run() {
  local dir="$1"
  local out="${NEOSCOPE_GPU_OUT:-target/gpu-check}"
  mkdir -p "$out"
  # The CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, runtime) from the system or from Python's
  # NVIDIA wheels (PyTorch's), whichever has them.
  if ! ldconfig -p | grep -q 'libcublas.so.13'; then
    local libs
    libs="$(python3 -c 'import glob, site, sys
dirs = site.getsitepackages() + [site.getusersitepackages()] + sys.path
print(":".join(sorted({d for p in dirs for d in glob.glob(p + "/nvidia/cu13/lib") + glob.glob(p + "/nvidia/*/lib")})))')"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if ! ldconfig -p | grep -q 'libcuda.so.1' && [ -d /usr/local/nvidia/lib64 ]; then
    export LD_LIBRARY_PATH="/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  local failed=0
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  echo "== CUDA tests" >&2
  # A failure is reported at the end; the benchmark still runs.
  NEOSCOPE_REPO="$PWD" "$dir/cuda-tests" --test-threads=1 2>&1 | tee "$out/cuda-tests.txt" ||
    failed=1
  local model="${NEOSCOPE_BENCH_MODEL:-}"
  if [ -z "$model" ] && [ ! -f "$HOME/.cache/neoscope/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    model="${TMPDIR:-/tmp}/neoscope-synth-smollm2"
    [ -f "$model/model.safetensors" ] ||
      python3 bench/synth_model.py --tokenizer "$dir/tokenizer.json" --out "$model"
  fi
  echo "== neoscope info on the GPU" >&2
  "$dir/neoscope" --device cuda ${model:+--model "$model"} info | tee "$out/info.txt"
  echo "== benchmark against PyTorch on the GPU" >&2
  python3 bench/compare_pytorch.py --neoscope "$dir/neoscope" --device cuda \
    ${model:+--model "$model"} --rounds "${NEOSCOPE_GPU_ROUNDS:-2}" --out "$out/bench.json" |
    tee "$out/bench.md"
  echo "== the same workloads with bf16 blocks" >&2
  "$dir/neoscope" --device cuda --dtype bf16 ${model:+--model "$model"} bench --json \
    >"$out/bench-bf16.json"
  if [ "$failed" = 1 ]; then
    echo "gpu-check: the CUDA tests failed (see $out/cuda-tests.txt)" >&2
    return 1
  fi
}

case "${1:-}" in
  pack) pack "${2:?usage: gpu-check.sh pack DIR}" ;;
  run) run "${2:?usage: gpu-check.sh run DIR}" ;;
  "")
    pack target/gpu-pack
    run target/gpu-pack
    ;;
  *) echo "usage: gpu-check.sh [pack DIR | run DIR]" >&2; exit 2 ;;
esac
