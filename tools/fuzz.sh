#!/usr/bin/env bash
# Fuzzes the readers of untrusted files for SECONDS each (default 120): weight files
# (safetensors, PyTorch zip and legacy pickles), images (PNG, JPEG), manifest.jsonl and
# dataset.toml. A stable-toolchain mutation loop (src/fuzz.rs) over real seed files: a panic, a
# hang (> 10 s on one input) or more than 1 GiB live for one input fails the run, with the input
# saved under target/fuzz-findings/TARGET/. Inputs with new outcomes are kept in
# eval/reference/fixtures/fuzz/TARGET/, which every `cargo test` replays; commit the new ones.
#
# Usage: tools/fuzz.sh [SECONDS] [TARGET...]   (targets: weights image manifest dataset-toml)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(weights image manifest dataset-toml)
tools/setup.sh
for t in "${targets[@]}"; do
  RAINCHECK_FUZZ_TARGET=$t RAINCHECK_FUZZ_SECS=$secs RAINCHECK_FUZZ_SEED=${RAINCHECK_FUZZ_SEED:-$RANDOM} \
    cargo test --locked --lib fuzz::tests::fuzz_loop -- --ignored --nocapture --test-threads 1
done
