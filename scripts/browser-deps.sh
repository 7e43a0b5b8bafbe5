#!/usr/bin/env bash
# Installs what the browser test (systest/tests/watch.rs) drives: Debian's
# chromium and chromium-driver. Idempotent and quiet: does nothing when both
# are already on the PATH; otherwise one apt-get update and install.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if have sudo; then SUDO="sudo"; else
    echo "browser-deps: chromium/chromedriver missing and not root (no sudo): install chromium chromium-driver" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null

have chromium && have chromedriver || { echo "browser-deps: chromium or chromedriver still missing after install" >&2; exit 1; }
