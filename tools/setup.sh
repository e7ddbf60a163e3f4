#!/usr/bin/env bash
# Installs what raincheck needs to build and run on Debian 12, and only what is missing.
# Idempotent: a second run changes nothing. Needs root (or sudo) for apt packages.
set -euo pipefail

need_apt=()
# Debian packages: OpenCV (videoio/imgproc for the `video` feature), clang for the opencv crate's
# binding generator, pkg-config to find OpenCV, Python for the reference scripts, DejaVu Sans for
# the text of the study report's charts, cmake and nasm to build the bundled libjpeg-turbo.
for pkg in libopencv-dev clang libclang-dev pkg-config python3 fonts-dejavu-core cmake nasm; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    need_apt+=("$pkg")
  fi
done

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
echo "setup: ok" >&2
