#!/usr/bin/env bash
# The README's first command: runs raincheck's main job on the bundled real footage.
#   1. extracts clear frames from the bundled dashcam clip and adds the bundled stills,
#   2. generates a paired (clean, rainy) dataset with the physical renderer (heavy rain),
#   3. verifies it and writes a Rerun recording of every pair with its rain parameters,
#   4. renders temporally coherent rain onto the whole clip,
#   5. trains the real-time de-rainer (unet tiny, 2 minutes on the CPU) on the dataset, scores it on
#      the held-out test split against the rainy input, and de-rains the rainy clip with it,
#   6. trains a small CycleGAN clear <-> rainy on the dataset's two halves (about 2 minutes: a
#      pipeline check, far too short to look real), turns the clear clip into a rainy one with it
#      and makes a CycleGAN-rain paired dataset,
#   7. streams the clear clip through the de-rainer with physical rain added on the fly
#      (`stream --add-rain heavy`): a side-by-side video, a Rerun recording with per-frame scores
#      and timings, and the stream's stats as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --release --locked
rc=target/release/raincheck

work=datasets/generated/demo
out=out/demo
mkdir -p "$work/clear" "$out/stream"
cp -n datasets/samples/frames/*.jpg "$work/clear/"
"$rc" frames datasets/samples/video/solid_white_right.mp4 --every 20 --out "$work/clear"
"$rc" generate --clear "$work/clear" --rain physical:heavy --size 960x540 --seed 7 --out "$work/heavy"
"$rc" dataset verify "$work/heavy"
"$rc" inspect "$work/heavy" --save "$out/dataset.rrd"
"$rc" rain datasets/samples/video/solid_white_right.mp4 --preset heavy --seed 7 --out "$out/rainy_video"
rm -rf "$out/unet-tiny"
"$rc" train derain --arch unet --preset tiny --data "$work/heavy" --out "$out/unet-tiny" \
  --steps 2000 --minutes 2 --crop 128 --batch 8 --val-every 250 --val-limit 0 --save "$out/train.rrd"
"$rc" eval --model "$out/unet-tiny" --data "$work/heavy" --split test --report "$out/eval"
"$rc" derain --model "$out/unet-tiny" --input "$out/rainy_video/solid_white_right.mp4" --out "$out/derained_video"
rm -rf "$out/cyclegan" "$work/cyclegan"
"$rc" train cyclegan --data "$work/heavy" --out "$out/cyclegan" --steps 300 --size 64 --ngf 16 \
  --blocks 3 --ndf 32 --batch 2 --lr-g 4e-4 --lr-d 4e-4 --sample-every 50 --checkpoint-every 100 \
  --save "$out/cyclegan.rrd"
"$rc" translate --model "$out/cyclegan" --input datasets/samples/video/solid_white_right.mp4 --out "$out/cyclegan_video"
"$rc" generate --clear "$work/clear" --rain "cyclegan:$out/cyclegan" --size 480x270 --seed 7 --out "$work/cyclegan"
"$rc" stream datasets/samples/video/solid_white_right.mp4 --model "$out/unet-tiny" --add-rain heavy \
  --seed 7 --side-by-side --out "$out/stream/solid_white_right.mp4" --save "$out/stream.rrd" \
  --stats-json "$out/stream/stats.json" --rerun-images-every 5

cat <<TXT

Done. What the demo made:
  paired dataset:     $work/heavy   (manifest.jsonl, clean/, rainy/, dataset.toml)
  Rerun recording:    $out/dataset.rrd
  rainy dashcam clip: $out/rainy_video/solid_white_right.mp4
  de-rainer (run):    $out/unet-tiny   (training curves: $out/train.rrd)
  its test report:    $out/eval/report.md
  de-rained clip:     $out/derained_video/solid_white_right.mp4
  CycleGAN (run):     $out/cyclegan   (losses and samples: $out/cyclegan.rrd, $out/cyclegan/samples/)
  CycleGAN-rain clip: $out/cyclegan_video/solid_white_right.mp4
  CycleGAN dataset:   $work/cyclegan
  stream (rain added, rainy | de-rained): $out/stream/solid_white_right.mp4
      stats: $out/stream/stats.json, recording: $out/stream.rrd
Open the recording in the Rerun viewer (same version as the crate):
  pip install rerun-sdk==0.36.3 && rerun $out/dataset.rrd
TXT
