#!/usr/bin/env bash
# Debian packages that hold real evaluation data and the speech synthesizer. Best effort: without root or apt,
# say so and go on (the tests that need them skip, naming the package).
set -u
pkgs="espeak-ng sox pocketsphinx-testdata trans-de-en"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "sparselm: optional Debian packages missing:$missing (install them with apt-get as root)" >&2
  exit 0
fi
apt-get update -qq >/dev/null 2>&1 || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1 \
  || echo "sparselm: could not install:$missing" >&2
exit 0
