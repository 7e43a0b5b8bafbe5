#!/usr/bin/env bash
# `make soak` (`SOAK_MINUTES=N make soak`): the redundant stack (HA=1: a
# 3-node RabbitMQ cluster, a 3-server ZooKeeper ensemble, process workers)
# brought up in isolation from everything else on this machine - its own
# VAR_DIR, HA_DIR, broker and ZooKeeper ports, LB/service/orchestrator ports
# and cluster id - then target/release/soak (load through the LB, a nemesis
# injecting one fault at a time, then `scripts/stack.sh rollout` of every
# part under the load, during which no request may fail; a checker over the
# recorded history; soak/),
# its report (also in var/soak-report.txt), and the stack torn down whatever
# happens.
#
# Exit status: the soak's (non-zero when a write was lost or applied twice,
# a read was stale, or fewer than SOAK_MIN_FAULTS faults were injected).
# Every other SOAK_* setting: target/release/soak --help.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf '[soak] %s\n' "$*" >&2; }

# Nothing inherited may point this stack at other infra or ports.
unset AMQP_URL ZK_ADDR AMQP_PORT ZK_PORT AMQP_QUEUE_TYPE LB_DIR LB_URL ORCHESTRATOR_URL RIDES_PUBLIC_URL \
  WORKER_BIN WORKER_DATA_DIR ZK_ROOT USERS_ADDRS RIDES_ADDRS
export HA=1 VAR_DIR=$ROOT/var/soak
export HA_DIR=$VAR_DIR/ha HA_AMQP_BASE=5880 HA_ZK_BASE=2580
export LB_PORT=18080 USERS_ADDR=127.0.0.1:18081 RIDES_ADDR=127.0.0.1:18082 ORCH_ADDR=127.0.0.1:18090 ORCH2_ADDR=127.0.0.1:18091
# The second instance of each service where the topology runs two.
export USERS2_ADDR=127.0.0.1:18083 RIDES2_ADDR=127.0.0.1:18084
export CLUSTER_ID=soak WORKER_RUNTIME=process
# The autoscaler follows the soak's reads; a bound keeps it to this machine's size.
export MAX_SLAVES=${SOAK_MAX_SLAVES:-3}
export SOAK_LB_URL=http://127.0.0.1:$LB_PORT SOAK_ORCHESTRATORS=${SOAK_ORCHESTRATORS:-http://$ORCH_ADDR,http://$ORCH2_ADDR}
export RUST_LOG=${RUST_LOG:-info,lapin=warn,zookeeper_client=warn}

cargo build --release -q -p soak
# The CLI the closing rollout drives (built apart: `stack.sh up` builds the
# servers with their own feature resolution).
cargo build --release -q -p ctl
teardown() { log "tearing the soak stack down"; scripts/stack.sh down || true; }
trap teardown EXIT
# What a killed earlier run may have left, then a fresh stack.
scripts/stack.sh down >/dev/null 2>&1 || true
rm -rf "$VAR_DIR"
scripts/stack.sh up
log "soak for ${SOAK_MINUTES:-3} minutes (logs in $VAR_DIR/log)"
set +e
target/release/soak | tee "$ROOT/var/soak-report.txt"
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
