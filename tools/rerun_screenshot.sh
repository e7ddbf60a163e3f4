#!/usr/bin/env bash
# A screenshot of a raincheck recording in the real Rerun viewer (its layout as a person sees
# it), without a display or GPU: Xvfb and Mesa's software rendering. Installs what is missing:
# xvfb and Mesa (apt), the viewer of the pinned SDK version (rerun-sdk 0.36.3, pip, in
# ~/.cache/raincheck/rerun-venv).
#   tools/rerun_screenshot.sh FILE.rrd OUT.png [WIDTHxHEIGHT]
set -euo pipefail
rrd=$1 out=$2 size=${3:-1600x1000}
venv=${RAINCHECK_RERUN_VENV:-$HOME/.cache/raincheck/rerun-venv}
if [ ! -x "$venv/bin/rerun" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "rerun-sdk==0.36.3"
fi
if ! command -v xvfb-run >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    xvfb xauth mesa-vulkan-drivers libgl1-mesa-dri >&2
fi
rm -f "$out"
# The viewer may exit non-zero while shutting down after it saved the screenshot: the file
# decides.
timeout 180 xvfb-run -a -s "-screen 0 ${size}x24" "$venv/bin/rerun" "$rrd" \
  --screenshot-to "$out" --window-size "$size" >/dev/null 2>&1 || true
[ -s "$out" ] || { echo "no screenshot was written (run the command above by hand to see why)" >&2; exit 1; }
echo "$out"
