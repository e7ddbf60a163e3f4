#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the whole test suite on CPU
# (the application and the kernel crate crates/raincheck-nn),
# and checks that the crate still builds without its default `video` feature (no OpenCV) and
# type-checks with `cuda` (nvcc and headers from PyPI wheels, tools/cuda-env.sh; no GPU needed;
# RAINCHECK_SKIP_CUDA_CHECK=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo check --locked --workspace --no-default-features --all-targets
if [ "${RAINCHECK_SKIP_CUDA_CHECK:-0}" != 1 ]; then
  # In a subshell: the CUDA variables stay out of the test run.
  (source tools/cuda-env.sh && cargo check --locked --features cuda --all-targets)
fi
cargo test --locked --workspace "$@"
