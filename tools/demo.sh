#!/usr/bin/env bash
# The README's first command: runs raincheck's main job on the bundled real footage.
#   1. extracts clear frames from the bundled dashcam clip and adds the bundled stills,
#   2. generates a paired (clean, rainy) dataset with the physical renderer (heavy rain),
#   3. verifies it and writes a Rerun recording of every pair with its rain parameters,
#   4. renders temporally coherent rain onto the whole clip.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --release --locked
rc=target/release/raincheck

work=datasets/generated/demo
out=out/demo
mkdir -p "$work/clear" "$out"
cp -n datasets/samples/frames/*.jpg "$work/clear/"
"$rc" frames datasets/samples/video/solid_white_right.mp4 --every 20 --out "$work/clear"
"$rc" generate --clear "$work/clear" --rain physical:heavy --size 960x540 --seed 7 --out "$work/heavy"
"$rc" dataset verify "$work/heavy"
"$rc" inspect "$work/heavy" --save "$out/dataset.rrd"
"$rc" rain datasets/samples/video/solid_white_right.mp4 --preset heavy --seed 7 --out "$out/rainy_video"

cat <<TXT

Done. What the demo made:
  paired dataset:     $work/heavy   (manifest.jsonl, clean/, rainy/, dataset.toml)
  Rerun recording:    $out/dataset.rrd
  rainy dashcam clip: $out/rainy_video/solid_white_right.mp4
Open the recording in the Rerun viewer (same version as the crate):
  pip install rerun-sdk==0.36.3 && rerun $out/dataset.rrd
TXT
