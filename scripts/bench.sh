#!/usr/bin/env bash
# `make bench`: start RabbitMQ and ZooKeeper, install wrk if missing (Debian's
# package), build release, run the benchmark: db/read, db/write and the full
# path through the load balancer, each next to its ceiling measured in the
# same run. Arguments go to the bench binary, e.g.
#   scripts/bench.sh --quick                 (2 s cells, concurrency 1 and 64)
#   scripts/bench.sh --duration 10 --conc 1,16,64 --lb-conc 1,16,64,256 --slaves 1
#   scripts/bench.sh --only read,lb --no-ceilings
# or the million-row mode (`make bench-million`, bench/results/million.json):
#   scripts/bench.sh million --users 100000 --rides 100000
# Results: a table on stdout and bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[bench] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

scripts/infra.sh up
if ! command -v "${BENCH_WRK:-wrk}" >/dev/null; then
  log "installing wrk from Debian's packages"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null
fi
log "building (release)"
cargo build --release -p orchestrator -p worker -p users-api -p rides-api -p bench
log "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
exec target/release/bench "$@"
