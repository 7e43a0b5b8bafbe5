#!/usr/bin/env bash
# `make up` on default ports, a client call through the load balancer,
# `make status`, `make down`, and nothing of ours left running.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[smoke] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; make -s down >/dev/null 2>&1 || true; echo "smoke: 0 passed, 1 failed"; exit 1; }

make -s up || fail "make up"
status=$(make -s status) || fail "make status"
echo "$status"
for part in rabbitmq zookeeper orchestrator users-api rides-api lb; do
  echo "$status" | grep -E "^$part[ -]" | grep -q " up" || fail "$part not shown up in make status"
done
echo "$status" | grep -Eq '^workers +\[[0-9]+, *[0-9]+\]' || fail "make status does not show one master and one slave"
user="smoke$RANDOM"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT http://127.0.0.1:8080/api/v1/users \
  -H 'content-type: application/json' -d "{\"username\":\"$user\",\"password\":\"$(printf 'a%.0s' {1..40})\"}")
[ "$code" = 201 ] || fail "PUT /api/v1/users through the load balancer answered $code"
# Everything this stack started: its pid files, the LB's, the infra's, and
# the workers of its cluster (process runtime) — all must be gone after down.
ours=$(cat var/run/*.pid var/lb/nginx.pid var/rabbitmq/rabbitmq.pid var/zookeeper/zk.pid 2>/dev/null | tr '\n' ' ')
for p in /proc/[0-9]*; do
  if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "RIDESHARE_CLUSTER=rideshare"; then ours="$ours ${p#/proc/}"; fi
done
[ -n "$ours" ] || fail "found no pids of the running stack"
make -s down || fail "make down"
left=""
for pid in $ours; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
[ -z "$left" ] || fail "processes left after make down:$left"
if command -v docker >/dev/null; then
  [ -z "$(docker ps -q --filter label=rideshare.cluster=rideshare)" ] || fail "worker containers left after make down"
fi
echo "smoke: 1 passed, 0 failed"
