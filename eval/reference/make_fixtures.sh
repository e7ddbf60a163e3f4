#!/usr/bin/env bash
# Rebuilds eval/reference/fixtures: crops of bundled real frames, noise/blur/rain versions, and
# the reference metric values from scikit-image, and the NIQE fixtures. Needs the .venv of tools/bench.sh (numpy,
# scikit-image, pillow) and a built raincheck.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
rc=${RAINCHECK:-target/debug/raincheck}
out=eval/reference/fixtures
"$py" eval/reference/metrics_reference.py make-inputs "$out"
tmp=$(mktemp -d)
for t in "$out"/target_*.png; do
  name=$(basename "$t" .png); name=${name#target_}
  "$rc" -q rain "$t" --preset heavy --seed 1 --out "$tmp" >/dev/null
  mv "$tmp/target_$name.png" "$out/rain_$name.png"
done
rmdir "$tmp"
"$py" eval/reference/metrics_reference.py score "$out"
"$py" eval/reference/metrics_reference.py variants "$out"
"$py" eval/reference/niqe_reference.py make-inputs "$out/niqe"
"$py" eval/reference/niqe_reference.py score "$out/niqe"
