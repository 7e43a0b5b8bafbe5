#!/usr/bin/env bash
# Prometheus (server and promtool) from Debian's `prometheus` package, for the
# metrics tests and for checking ops/prometheus/. Idempotent and quiet: does
# nothing when both binaries are already on PATH. The package's own service is
# kept from starting (policy-rc.d) and stopped/disabled if it started anyway:
# the tests run their own instance, with its own port and storage.
#
#   scripts/prometheus-deps.sh     install if missing; prints nothing on success
set -euo pipefail

log() { printf '[prometheus-deps] %s\n' "$*" >&2; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log "installing prometheus from Debian's packages"
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { [ -z "$created_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT

out=$(mktemp)
cleanup() { rm -f "$out"; [ -z "$created_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d; }
# apt's chatter is shown only when it fails.
quiet() { "$@" >"$out" 2>&1 || { cat "$out" >&2; log "error: $* failed"; exit 1; }; }
quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus

# If the package's service started anyway (systemd ignores policy-rc.d on some
# setups), stop it and keep it from starting at boot. Its pid file names it exactly.
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null || { log "error: prometheus or promtool missing after install"; exit 1; }
