#!/usr/bin/env bash
# `make test`: install and start what the tests need, then run every test.
#   1. RabbitMQ, ZooKeeper and nginx from Debian's packages (scripts/infra.sh)
#   2. cfn-lint from PyPI for the ALB template
#   3. release build of the workspace and the worker image (no registry needed)
#   4. cargo test (unit + integration against the real broker, ensemble, engine)
#   5. the `make up` / `make status` / `make down` smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }

scripts/infra.sh up
command -v cfn-lint >/dev/null || { log "installing cfn-lint"; python3 -m pip install -q cfn-lint; }
log "building"
cargo build --release --workspace --all-targets
if [ "${CI:-}" = true ] || command -v docker >/dev/null; then
  timeout 20 docker info >/dev/null 2>&1 || { log "error: the Docker engine does not answer"; exit 1; }
  scripts/build-images.sh
fi
log "cfn-lint alb-config/alb.yaml"
cfn-lint alb-config/alb.yaml
rm -rf var/test
log "cargo test"
cargo test --release --workspace -- --test-threads="${TEST_THREADS:-2}"
log "smoke test of make up / status / down"
scripts/smoke.sh
log "all tests passed"
