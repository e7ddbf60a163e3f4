#!/usr/bin/env bash
# Checks the quiz page in a real browser: makes a quiz from two folders of bundled images, opens
# index.html in headless Chromium with `#autotest=RSRS…` (the page presses those keys at load),
# takes the results the page produced from the DOM, and scores them with `raincheck quiz score`.
# Installs chromium (apt) when missing.
#   tools/quiz_browser_check.sh [RAINCHECK_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
rc=${1:-target/debug/raincheck}
[ -x "$rc" ] || cargo build --quiet
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -qq --no-install-recommends chromium >&2
  browser=$(command -v chromium)
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/real" "$tmp/fake"
cp datasets/samples/frames/udacity_*.jpg "$tmp/real/"
"$rc" -q rain datasets/samples/frames --preset heavy --out "$tmp/fake" >/dev/null
"$rc" -q quiz --real "$tmp/real" --fake "$tmp/fake" --n 8 --seed 1 --out "$tmp/quiz" >/dev/null
# Answer "real" to everything: the fooling rate must come out 100%, real accuracy 100%.
"$browser" --headless --disable-gpu --no-sandbox --allow-file-access-from-files \
  --dump-dom "file://$tmp/quiz/index.html#autotest=RRRRRRRR" 2>/dev/null >"$tmp/dom.html"
python3 - "$tmp/dom.html" "$tmp/results.json" <<'PY'
import html, re, sys
dom = open(sys.argv[1]).read()
m = re.search(r'<pre id="results"[^>]*>(.*?)</pre>', dom, re.S)
assert m and m.group(1).strip(), "the page produced no results"
open(sys.argv[2], "w").write(html.unescape(m.group(1)))
PY
"$rc" -q quiz score "$tmp/quiz" "$tmp/results.json" >"$tmp/score.json"
python3 - "$tmp/score.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
fr, ra = s["fooling_rate"], s["real_accuracy"]
assert fr["k"] == fr["n"] == 4 and ra["k"] == ra["n"] == 4, s
print(f"quiz page OK in headless Chromium: 8 answers recorded, fooling rate {fr['rate']:.0%} "
      f"[{fr['ci95'][0]:.2f}, {fr['ci95'][1]:.2f}], real accuracy {ra['rate']:.0%}")
PY
