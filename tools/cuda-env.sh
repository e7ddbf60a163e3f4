# shellcheck shell=bash
# Sets up a CUDA toolkit from PyPI wheels (no GPU, no system CUDA needed) so that
#   source tools/cuda-env.sh && cargo check --features cuda
# works on a plain Debian 12 machine, and `cargo build --features cuda` links.
# Source it (exports env vars) or run it (`bash tools/cuda-env.sh` prints `export ...` lines).
# Idempotent: a second run only re-exports.
#
# Knobs (env): RAINCHECK_CUDA_VENV (venv dir, default ~/.cache/raincheck/cuda-venv-VERSION, outside
#   the repo, so CI machines keep it between runs),
#   RAINCHECK_CUDA_TOOLKIT (cuda-toolkit wheel version, default 13.0.2: the oldest CUDA 13, whose
#   PTX (ISA 9.0) every driver >= 580 can JIT; newer toolkits emit PTX that driver 580 refuses;
#   cudarc 0.19.10 knows <= 13.4),
#   CUDA_COMPUTE_CAP (default 90 = H100/H200; no GPU is visible here so it must be given).
#
# What it does:
#  1. python3 venv + `pip install -c tools/cuda-constraints.txt cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.0.2`
#     (~0.7 GB download, 1.2 GB installed; everything lands in <venv>/lib/python3.*/site-packages/nvidia/cu13).
#     The constraints file pins every nvidia-* wheel (the metapackage leaves nvvm and crt unpinned);
#     another RAINCHECK_CUDA_TOOLKIT is installed unpinned, with a warning.
#  2. Unversioned lib*.so symlinks (the wheels ship only lib*.so.13) so `-lcublas` etc. resolve at link time.
#  3. A link-time-only stub libcuda.so (soname libcuda.so.1) in cu13/lib/stubs: the driver library is not
#     on PyPI, and cudarc (feature dynamic-linking, as candle 0.11 sets it) links -lcuda. At run time the
#     real driver's libcuda.so.1 is used; the stub is never on the loader path.
#  4. Exports PATH (nvcc), CUDA_HOME/CUDA_PATH/CUDA_ROOT (cudarc link search, cudaforge nvcc lookup),
#     CUDARC_CUDA_VERSION, CUDA_COMPUTE_CAP, CUDAFORGE_THREADS.

_raincheck_cuda_env() {
  local tk="${RAINCHECK_CUDA_TOOLKIT:-13.0.2}"
  local venv="${RAINCHECK_CUDA_VENV:-$HOME/.cache/raincheck/cuda-venv-$tk}"
  local spec="cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==${tk}"
  local here constraints=()
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  if grep -qx "cuda-toolkit==$tk" "$here/cuda-constraints.txt" 2>/dev/null; then
    constraints=(-c "$here/cuda-constraints.txt")
  else
    echo "cuda-env: warning: no pins for cuda-toolkit $tk in tools/cuda-constraints.txt; its nvidia-* wheels are unpinned" >&2
  fi
  local stamp="$venv/.raincheck-cuda-$tk-$(cksum < "$here/cuda-constraints.txt" | cut -d' ' -f1)"

  # Debian packages: a C++ host compiler for nvcc, python3-venv for the venv.
  local need=() pkg
  for pkg in g++ python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "cuda-env: installing Debian packages: ${need[*]}" >&2
    $sudo apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
      return 1
  fi

  if [ ! -f "$stamp" ]; then
    echo "cuda-env: installing $spec into $venv (~0.7 GB download)" >&2
    { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } || return 1
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off "${constraints[@]}" "$spec" >&2 || return 1
  fi

  local cu
  cu="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')" || return 1
  [ -x "$cu/bin/nvcc" ] || { echo "cuda-env: no nvcc under $cu" >&2; return 1; }

  if [ ! -f "$stamp" ]; then
    # 2. unversioned symlinks for the linker
    local f base
    for f in "$cu"/lib/lib*.so.*; do
      base="${f%%.so.*}.so"
      [ -e "$base" ] || ln -s "$(basename "$f")" "$base"
    done
    # 3. stub libcuda.so: one empty function per driver API name in cuda.h (+ cudarc's list when present)
    mkdir -p "$cu/lib/stubs"
    local tmp; tmp="$(mktemp -d)"
    {
      gcc -E -P -I"$cu/include" "$cu/include/cuda.h"
      gcc -E -P -D__CUDA_API_VERSION_INTERNAL -I"$cu/include" "$cu/include/cuda.h"
      cat "$cu/include/cuda.h"
      echo "cuProfilerInitialize( cuProfilerStart( cuProfilerStop("
      cat "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null || true
    } | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' | sort -u |
      sed 's/.*/void &(void) {}/' > "$tmp/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$tmp/stub.c" || return 1
    rm -rf "$tmp"
    touch "$stamp"
  fi

  export PATH="$cu/bin:$PATH"
  export CUDA_HOME="$cu" CUDA_PATH="$cu" CUDA_ROOT="$cu"
  export CUDARC_CUDA_VERSION="$(echo "$tk" | awk -F. '{printf "%d0%d0", $1, $2}')"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
  # To run a cuda build here (it still needs a real driver's libcuda.so.1): LD_LIBRARY_PATH=$CUDA_HOME/lib
  local v
  for v in PATH CUDA_HOME CUDA_PATH CUDA_ROOT CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP CUDAFORGE_THREADS; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
}

if (return 0 2>/dev/null); then
  _raincheck_cuda_env >&2 || { echo "cuda-env: FAILED" >&2; return 1; }
else
  set -euo pipefail
  _raincheck_cuda_env
fi
