#!/usr/bin/env bash
# `make bench`: start RabbitMQ and ZooKeeper, build release, run the benchmark.
# Arguments go to the bench binary, e.g.
#   scripts/bench.sh --duration 10 --conc 1,16,64 --slaves 1 --services
# or the million-row mode (`make bench-million`, bench/results/million.json):
#   scripts/bench.sh million --users 100000 --rides 100000
# Results: a table on stdout and bench/results/latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[bench] %s\n' "$*" >&2; }

scripts/infra.sh up
log "building (release)"
cargo build --release -p orchestrator -p worker -p users-api -p rides-api -p bench
log "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
exec target/release/bench "$@"
