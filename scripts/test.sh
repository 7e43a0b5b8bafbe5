#!/usr/bin/env bash
# `make test`: lint, install and start what the tests need, then run every test.
#   1. lint: rustfmt and clippy (warnings are errors), before anything is built
#   2. RabbitMQ, ZooKeeper and nginx from Debian's packages (scripts/infra.sh)
#   3. cfn-lint from PyPI for the ALB template
#   4. release build of the workspace and every image (no registry needed),
#      chromium + chromedriver and prometheus from Debian
#   5. cargo test with the end-to-end tier on (features systest/e2e,
#      orchestrator/e2e and archive/e2e: real broker, ensemble, engine, an
#      S3-compatible server from scripts/s3.sh); a plain `cargo test` runs
#      only the unit tier and needs none of it
#   6. the `make up` (twice) / `make status` / `make down` (twice) smoke test
#   7. a 3-minute `make soak` on the redundant topology (scripts/soak.sh)
#   8. what the run started is stopped (the infra, unless it was up before),
#      and scripts/leftovers.sh fails the run if anything else of it remains
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }
E2E=(--features systest/e2e,orchestrator/e2e,archive/e2e)

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  log "installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi
log "lint: cargo fmt --all --check"
cargo fmt --all --check
log "lint: cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# What runs before the tests (the user's own `make up`, say) is theirs: only
# what is new at the end counts as left behind.
BEFORE=$(mktemp)
scripts/leftovers.sh list > "$BEFORE"
had() { grep -qx "listener 127.0.0.1:$1" "$BEFORE"; }
stop_ours() {
  scripts/s3.sh down || true
  had 5672 || scripts/infra.sh down || true
  had 5781 || scripts/ha.sh down || true
}
trap 'stop_ours; rm -f "$BEFORE"' EXIT

scripts/infra.sh up
# The S3-compatible server of the backup tests (moto, from PyPI).
scripts/s3.sh up
# The browser (page test) and Prometheus (metrics test), from Debian's packages.
scripts/browser-deps.sh
scripts/prometheus-deps.sh
# The partition tests cut links with iptables inside a container's network namespace.
command -v iptables >/dev/null && command -v nsenter >/dev/null || {
  log "installing iptables"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables util-linux >/dev/null
}
command -v cfn-lint >/dev/null || { log "installing cfn-lint"; python3 -m pip install -q cfn-lint; }
log "building"
cargo build --release --workspace --all-targets "${E2E[@]}"
if [ "${CI:-}" = true ] || command -v docker >/dev/null; then
  timeout 20 docker info >/dev/null 2>&1 || { log "error: the Docker engine does not answer"; exit 1; }
  # Every image, built here (no registry): ours and the Debian-based infra
  # images of the compose and swarm deployments; cached by content.
  scripts/build-images.sh all
fi
log "cfn-lint alb-config/alb.yaml"
cfn-lint alb-config/alb.yaml
rm -rf var/test
log "cargo test (unit and end-to-end tiers)"
cargo test --release --workspace --no-fail-fast "${E2E[@]}" -- --test-threads="${TEST_THREADS:-2}"
# The tests' redundant infra (ha_infra) is not needed past this point.
had 5781 || scripts/ha.sh down
log "smoke test of make up / status / down"
scripts/smoke.sh
log "soak: 3 minutes of load and faults on the redundant topology (scripts/soak.sh)"
SOAK_MINUTES=3 scripts/soak.sh
log "stopping what the tests started; checking nothing else remains"
stop_ours
scripts/leftovers.sh check "$BEFORE"
log "all tests passed"
