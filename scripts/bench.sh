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
# Results: a table on stdout and bench/results/latest.json; with no arguments
# also the redundant topology's db/read and db/write (bench/results/ha.json)
# and both side by side.
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
cargo build --release -p orchestrator -p worker -p users-api -p rides-api -p archiver -p bench
log "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
if [ $# -gt 0 ]; then exec target/release/bench "$@"; fi

# Plain `make bench`: the single-node figures with their ceilings, then the
# redundant topology's db/read and db/write (3-node RabbitMQ with quorum
# queues, 3-server ZooKeeper, 2 orchestrators with READ_FLOOR=master), then
# the two side by side: what redundancy costs.
target/release/bench
log "the redundant topology (scripts/ha.sh)"
target/release/bench --ha --orchestrators 2 --only read,write --no-ceilings \
  --label "ha: 3 rabbitmq nodes (quorum queues), 3 zookeeper servers, 2 orchestrators (READ_FLOOR=master)" \
  --out bench/results/ha.json
python3 - bench/results/latest.json bench/results/ha.json <<'PY'
import json, sys
single, ha = (json.load(open(p)) for p in sys.argv[1:3])
def cells(r):
    return {(c["scenario"], c["client"], c["concurrency"]): c for c in r["cells"] if c["scenario"].startswith("db/")}
s, h = cells(single), cells(ha)
print("\nwhat redundancy costs (same machine, one run after the other):")
print(f"{'cell':<34} {'single node /s':>15} {'p99 ms':>7} {'redundant /s':>13} {'p99 ms':>7} {'ratio':>6}")
for k in sorted(set(s) & set(h)):
    a, b = s[k], h[k]
    print(f"{k[0] + ' @' + str(k[2]):<34} {a['per_sec']:>15,.0f} {a['p99_ms']:>7.1f} {b['per_sec']:>13,.0f} {b['p99_ms']:>7.1f} {b['per_sec'] / max(a['per_sec'], 1e-9):>6.2f}")
PY
