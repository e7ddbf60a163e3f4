#!/usr/bin/env bash
# Makes real run folders with untrained weights (one training step on a tiny dataset from the
# bundled stills), for speed measurements, where weights do not matter.
#   tools/untrained_runs.sh RAINCHECK_BIN RUNS_DIR "unet:tiny vit:tiny ..."
# Existing run folders are kept. Each gets RUNS_DIR/ARCH-PRESET/{config.json,model.safetensors}
# (checkpoints are dropped: they are not needed to run a model).
set -euo pipefail
cd "$(dirname "$0")/.."
rc=$1 runs=$2 models=$3
data="$runs/.data"
mkdir -p "$runs"
for m in $models; do
  arch=${m%%:*} preset=${m##*:}
  [ -f "$runs/$arch-$preset/model.safetensors" ] && continue
  if [ ! -f "$data/dataset.toml" ]; then
    "$rc" --quiet generate --clear datasets/samples/frames --out "$data" --size 192x108 \
      --split 0.5,0.5,0 >/dev/null
  fi
  "$rc" --quiet train derain --arch "$arch" --preset "$preset" --data "$data" \
    --out "$runs/$arch-$preset" --steps 1 --batch 1 --crop 64 >/dev/null
  rm -rf "$runs/$arch-$preset/checkpoints"
done
rm -rf "$data"
