#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the whole test suite on CPU,
# and checks that the crate still builds without its default `video` feature (no OpenCV).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo check --locked --no-default-features --all-targets
cargo test --locked "$@"
