#!/usr/bin/env bash
# The README's first command: runs raincheck's main job on the bundled real footage.
#   1. takes clear images: frames of the bundled dashcam clip and the bundled stills,
#   2. runs the study (`raincheck study --budget tiny`): overlay-rain pairs from the physical
#      renderer, a CycleGAN clear <-> rainy and CycleGAN-rain pairs from held-out images, unet and
#      vit trained on each kind of rain, every model scored on every test set (report.md, charts,
#      study.json, study.rrd),
#   3. logs the overlay pairs with their rain parameters to Rerun, renders temporally coherent
#      rain onto the whole clip, and turns the clear clip into a rainy one with the study's CycleGAN,
#   4. streams the clear clip through the study's unet (trained on overlay rain) with heavy rain
#      added on the fly (`stream --add-rain heavy`): a side-by-side video, per-frame scores and
#      timings in Rerun, the stream's stats as JSON.
# Rerunning it reuses the finished study (it resumes an interrupted one).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo build --release --locked
rc=target/release/raincheck
clip=datasets/samples/video/solid_white_right.mp4

work=datasets/generated/demo
out=out/demo
mkdir -p "$work/clear" "$out/stream"
cp -n datasets/samples/frames/*.jpg "$work/clear/"
"$rc" frames "$clip" --every 4 --out "$work/clear"
"$rc" study --clear "$work/clear" --out "$out/study" --budget tiny --seed 7
"$rc" inspect "$out/study/data/overlay" --save "$out/dataset.rrd"
"$rc" rain "$clip" --preset heavy --seed 7 --out "$out/rainy_video"
"$rc" translate --model "$out/study/runs/cyclegan" --input "$clip" --out "$out/cyclegan_video"
"$rc" stream "$clip" --model "$out/study/runs/unet-overlay" --add-rain heavy --seed 7 \
  --side-by-side --out "$out/stream/solid_white_right.mp4" --save "$out/stream.rrd" \
  --stats-json "$out/stream/stats.json" --rerun-images-every 5

cat <<TXT

Done. What the demo made:
  the study's report:  $out/study/report.md   (every cell: $out/study/study.json)
  its recording:       $out/study/study.rrd
  paired datasets:     $out/study/data/overlay, $out/study/data/cyclegan
  trained models:      $out/study/runs/{unet,vit}-{overlay,cyclegan}, $out/study/runs/cyclegan
  pairs + parameters:  $out/dataset.rrd
  rainy clip:          $out/rainy_video/solid_white_right.mp4 (physical rain)
                       $out/cyclegan_video/solid_white_right.mp4 (the study's CycleGAN)
  stream (rain added, rainy | de-rained): $out/stream/solid_white_right.mp4
      stats: $out/stream/stats.json, recording: $out/stream.rrd
Open a recording in the Rerun viewer (the version matching the crate):
  pip install rerun-sdk==0.36.3 && rerun $out/stream.rrd
TXT
