#!/usr/bin/env bash
# Neoscope's test command (the README's): makes sure the run-time pieces the tests need are
# present (Mesa's software Vulkan/GL for headless screenshots, Python's pip for fetching the
# default model), builds the `cuda` feature, then runs every test of the workspace in release
# mode (the model runs ~85× slower in debug builds). Works on a fresh Debian machine; installs
# with apt-get as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  echo "test.sh: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "test.sh: please install: ${missing[*]} (apt-get install ...)" >&2
    exit 1
  fi
fi

# lavapipe wants a private runtime folder; without one it prints a harmless error.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -d "${XDG_RUNTIME_DIR}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
fi
chmod 700 "$XDG_RUNTIME_DIR" 2>/dev/null || true

# The `cuda` feature must compile although no GPU is here: the toolchain comes from pinned CUDA
# 13.0 wheels (cached under ~/.cache/neoscope), and the GPU tests are built, not run (they run
# on a GPU machine: scripts/gpu-check.sh). NEOSCOPE_SKIP_CUDA_BUILD=1 skips this step.
if [ "${NEOSCOPE_SKIP_CUDA_BUILD:-0}" != 1 ]; then
  (
    # shellcheck source=scripts/cuda-env.sh
    source scripts/cuda-env.sh
    # One invocation, so both share one feature resolution (two would build the kernels twice).
    cargo build --release --features cuda -p neoscope-engine -p neoscope --bin neoscope --test cuda
  )
fi

exec cargo test --release --workspace "$@"
