#!/usr/bin/env bash
# Source this file to get a CUDA 13.0 toolchain for `cargo build --features cuda` without a
# system CUDA install and without a GPU: the compiler (nvcc, cicc, ptxas), headers and the
# libraries the build links against come from NVIDIA's pinned wheels on PyPI, unpacked once into
# a cache folder that is reused by every later build.
#
#   source scripts/cuda-env.sh && cargo build --release --features cuda
#
# Why 13.0: a driver runs PTX of its own CUDA version or older, and the CUDA 13 drivers in use
# (R580) are 13.0; PTX from a newer nvcc would not load there. cudarc 0.19 knows 13.0 by name.
# CUDA_COMPUTE_CAP defaults to 90 (Hopper: H100/H200); set it for another GPU (80 = A100,
# 89 = L4/RTX 40xx, 120 = RTX 50xx). The generic kernels are PTX and JIT-compile on newer GPUs.
#
# The build links libcuda (the driver), which no wheel ships; like the CUDA toolkit's own
# lib/stubs/libcuda.so, a stub with the driver's soname and the entry points cudarc declares is
# compiled here for the linker only. At run time the real driver is loaded.

_neoscope_cuda_setup() {
  local version=13.0.88
  local root="${NEOSCOPE_CUDA_CACHE:-$HOME/.cache/neoscope/cuda-$version}"
  local home="$root/nvidia/cu13"
  local wheels=(
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88"
    "nvidia-curand==10.4.0.35" "nvidia-cublas==13.0.2.14"
  )
  if [ ! -f "$root/.complete" ]; then
    echo "cuda-env: fetching the CUDA $version toolchain wheels into $root" >&2
    rm -rf "$root.tmp" && mkdir -p "$root.tmp/whl" || return 1
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$root.tmp/whl" "${wheels[@]}" ||
      return 1
    local w
    for w in "$root.tmp"/whl/*.whl; do
      python3 -m zipfile -e "$w" "$root.tmp" || return 1
    done
    rm -rf "$root.tmp/whl"
    chmod +x "$root.tmp"/nvidia/cu13/bin/* "$root.tmp"/nvidia/cu13/nvvm/bin/* 2>/dev/null
    # The linker looks for unversioned names.
    local lib
    for lib in "$root.tmp"/nvidia/cu13/lib/lib*.so.*; do
      local base="${lib%%.so.*}.so"
      [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
    done
    rm -rf "$root" && mv "$root.tmp" "$root" && touch "$root/.complete" || return 1
  fi
  export CUDA_HOME="$home" CUDA_PATH="$home"
  export PATH="$home/bin:$home/nvvm/bin:$PATH"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export LIBRARY_PATH="$home/lib:$home/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
  _neoscope_cuda_stub "$home" || return 1
}

# libcuda.so for the linker: every cu* entry point that cudarc's driver bindings name, as empty
# functions, under the driver's soname libcuda.so.1. Rebuilt when cudarc's version changes.
_neoscope_cuda_stub() {
  local home="$1"
  local manifest
  manifest="$(cargo metadata --format-version 1 --features cuda --manifest-path \
    "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml" 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')" ||
    { echo "cuda-env: cudarc is not among the dependencies" >&2; return 1; }
  local src
  src="$(dirname "$manifest")/src/driver/sys/mod.rs"
  local stub="$home/lib/stubs/libcuda.so"
  local tag
  tag="$(dirname "$manifest")"
  if [ -f "$stub" ] && [ "$(cat "$stub.from" 2>/dev/null)" = "$tag" ]; then
    return 0
  fi
  mkdir -p "$home/lib/stubs"
  grep -o 'load::<_F>("cu[A-Za-z0-9_]*")' "$src" | sed 's/.*("\(.*\)")/void \1(void) {}/' |
    sort -u >"$home/lib/stubs/libcuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$home/lib/stubs/libcuda.c" || return 1
  echo "$tag" >"$stub.from"
}

_neoscope_cuda_setup
