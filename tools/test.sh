#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo test --locked "$@"
