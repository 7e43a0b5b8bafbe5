#!/bin/sh
# A worker wrapper for scaling measurements (orchestrator/DESIGN.md,
# "Does scaling out pay off"): every slave runs in a cgroup (v1 `cpu`) of its
# own capped at WORKER_CPU_SHARE of one core, as if each slave had its own
# small machine; the master is left alone. Needs root and a writable
# /sys/fs/cgroup/cpu. Use it through the bench:
#   WORKER_CPU_SHARE=0.25 scripts/bench.sh --worker-bin scripts/cpu-share-worker.sh --slaves 2 ...
# Empty groups stay behind under /sys/fs/cgroup/cpu/rideshare-share/; rmdir them after.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WORKER_REAL_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/worker}
share=${WORKER_CPU_SHARE:-0.25}
if [ "${BOOTSTRAP_MASTER:-}" != 1 ]; then
  g=/sys/fs/cgroup/cpu/rideshare-share/w$$
  mkdir -p "$g"
  echo 100000 > "$g/cpu.cfs_period_us"
  awk -v s="$share" 'BEGIN { printf "%d\n", s * 100000 }' > "$g/cpu.cfs_quota_us"
  echo $$ > "$g/cgroup.procs"
fi
exec "$bin" "$@"
