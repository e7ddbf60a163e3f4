#!/usr/bin/env bash
# The bundled stills and every 20th frame of the bundled clip, heavy physical rain, 960x540.
# Rebuilds the dataset tools/demo.sh makes, byte for byte.
set -euo pipefail
cd "$(dirname "$0")/../.."
rc=${RAINCHECK:-target/release/raincheck}
out=${1:-datasets/generated/samples-heavy}
mkdir -p "$out.clear"
cp -n datasets/samples/frames/*.jpg "$out.clear/"
"$rc" frames datasets/samples/video/solid_white_right.mp4 --every 20 --out "$out.clear"
"$rc" generate --clear "$out.clear" --rain physical:heavy --size 960x540 --seed 7 --out "$out"
