#!/usr/bin/env bash
# The whole system on one machine, in the background (README "The two commands").
#
#   scripts/stack.sh up      infra, build, worker image (if Docker answers), orchestrator
#                            with one master and one slave, users-api, rides-api, LB
#                            (HA=1: two instances of each service behind the LB)
#   scripts/stack.sh down    stop all of it, workers included
#   scripts/stack.sh status  what runs, where
#   scripts/stack.sh wipe    down, then remove the data: the workers' volumes, the
#                            broker's and ZooKeeper's data, and the local backup
#                            (var/backup; the next `up` starts empty)
#   scripts/stack.sh rollout a running stack upgraded to what is built now, one
#                            part at a time while the others serve: the workers
#                            (the orchestrator's rollout), then each orchestrator,
#                            then each service instance (README "Operating it")
#
# `up` also starts the archiver (README "Backup and restore"): the continuous
# backup of every acknowledged write into BACKUP_URL, by default the directory
# var/backup; BACKUP_URL=off runs none. The orchestrators get BACKUP_URL too,
# so a cluster that lost every volume is rebuilt from it.
#
# `down` keeps the data (as `docker compose down` keeps volumes): the next `up`
# resumes it, the orchestrator opening the newest copy on the workers' volumes.
#
# HA=1 runs the stack on the redundant infra of scripts/ha.sh (a 3-node
# RabbitMQ cluster with quorum queues, a 3-server ZooKeeper ensemble; see
# docs/topologies.md) instead of scripts/infra.sh's single nodes. `up` records
# the topology it started, so `status` and `down` need no HA=1.
#
# `up` and `down` are idempotent: `up` on a running stack leaves every process
# as it is (same pids) and succeeds; `down` on a stopped stack succeeds.
#
# Addresses and settings come from the environment (see README.md). VAR_DIR,
# AMQP_PORT and ZK_PORT are shared with scripts/infra.sh, so a second stack
# (e.g. the smoke test's) can run on infra of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VAR=${VAR_DIR:-$ROOT/var}
RUN=$VAR/run
LOGS=$VAR/log
LB_PORT=${LB_PORT:-8080}
USERS_ADDR=${USERS_ADDR:-127.0.0.1:8081}
RIDES_ADDR=${RIDES_ADDR:-127.0.0.1:8082}
ORCH_ADDR=${ORCH_ADDR:-127.0.0.1:8090}
# HA: a second orchestrator (both serve the data path; one, elected in
# ZooKeeper, supervises the workers).
ORCH2_ADDR=${ORCH2_ADDR:-127.0.0.1:8091}
# The second instance of each service in the HA topology.
USERS2_ADDR=${USERS2_ADDR:-127.0.0.1:8083}
RIDES2_ADDR=${RIDES2_ADDR:-127.0.0.1:8084}
CLUSTER_ID=${CLUSTER_ID:-rideshare}
DEADLINE_SECS=${STACK_DEADLINE_SECS:-120}
# The topology: HA=1 (or what the last `up` recorded) = scripts/ha.sh's infra.
HA=${HA:-}
if [ -z "$HA" ] && [ -f "$RUN/topology" ] && [ "$(cat "$RUN/topology")" = ha ]; then HA=1; fi
[ "$HA" = 0 ] && HA=
# The orchestrator (and through it the workers) use the infra scripts/infra.sh
# (or scripts/ha.sh) starts.
if [ -n "$HA" ]; then
  AMQP_URL=${AMQP_URL:-$(scripts/ha.sh amqp-urls)}
  ZK_ADDR=${ZK_ADDR:-$(scripts/ha.sh zk-addr)}
  AMQP_QUEUE_TYPE=${AMQP_QUEUE_TYPE:-quorum}
else
  AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:${AMQP_PORT:-5672}/%2f?heartbeat=2}
  ZK_ADDR=${ZK_ADDR:-127.0.0.1:${ZK_PORT:-2181}}
  AMQP_QUEUE_TYPE=${AMQP_QUEUE_TYPE:-classic}
fi
# Every instance of each service (comma-separated host:port; the LB gets all).
if [ -n "$HA" ]; then
  USERS_ADDRS=${USERS_ADDRS:-$USERS_ADDR,$USERS2_ADDR}
  RIDES_ADDRS=${RIDES_ADDRS:-$RIDES_ADDR,$RIDES2_ADDR}
else
  USERS_ADDRS=${USERS_ADDRS:-$USERS_ADDR}
  RIDES_ADDRS=${RIDES_ADDRS:-$RIDES_ADDR}
fi
BACKUP_URL=${BACKUP_URL:-file://$VAR/backup}
ARCHIVER_ADDR=${ARCHIVER_ADDR:-127.0.0.1:8095}
export LB_DIR=${LB_DIR:-$VAR/lb} LB_PORT USERS_ADDRS RIDES_ADDRS AMQP_URL ZK_ADDR AMQP_QUEUE_TYPE
if [ -n "$HA" ]; then TOPOLOGY=ha; else TOPOLOGY=single; fi
infra() { if [ -n "$HA" ]; then scripts/ha.sh "$@"; else scripts/infra.sh "$@"; fi; }

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

engine_answers() { command -v docker >/dev/null && timeout 5 docker info >/dev/null 2>&1; }

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# "name host:port" per instance of service $1 (users-api, rides-api) in the
# list $2: the first is named for the service, the next ones <service>-2, ...
instances() {
  local i=0 addr
  for addr in ${2//,/ }; do
    i=$((i + 1))
    if [ $i = 1 ]; then echo "$1 $addr"; else echo "$1-$i $addr"; fi
  done
}

start_bg() { # name, then the command; env comes from the caller
  local name=$1; shift
  if running "$name"; then log "$name already running"; return 0; fi
  setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
  log "$name started (pid $!)"
}

wait_http() { # what, url, [method]
  local end=$((SECONDS + DEADLINE_SECS))
  until curl -fsS -o /dev/null -X "${3:-GET}" ${4:+-H 'content-type: application/json' -d "$4"} "$2" 2>/dev/null; do
    [ $SECONDS -lt $end ] || die "$1 did not answer at $2 within ${DEADLINE_SECS}s (see $LOGS)"
    sleep 0.2
  done
}

# name:address of every orchestrator of the topology.
orchestrators() { echo "orchestrator:$ORCH_ADDR"; if [ -n "$HA" ]; then echo "orchestrator-2:$ORCH2_ADDR"; fi; }
orchestrator_urls() { orchestrators | sed 's|^[^:]*:|http://|' | paste -sd, -; }

start_archiver() {
  [ "$BACKUP_URL" != off ] || return 0
  case $BACKUP_URL in file://*) mkdir -p "${BACKUP_URL#file://}" ;; esac
  BACKUP_URL=$BACKUP_URL ARCHIVER_ADDR=$ARCHIVER_ADDR ARCHIVER_WORK_DIR=$VAR/archiver \
    start_bg archiver target/release/archiver
  wait_http archiver "http://$ARCHIVER_ADDR/health"
}

start_orchestrators() { # runtime
  local o name addr
  # With several orchestrators, every strong read takes its floor from the
  # master (READ_FLOOR=master, see orchestrator/src/read_floor.rs).
  local floor=local; [ -z "$HA" ] || floor=master
  for o in $(orchestrators); do
    name=${o%%:*} addr=${o#*:}
    (
      # No BACKUP_URL at all when it is off.
      if [ "$BACKUP_URL" = off ]; then unset BACKUP_URL; else export BACKUP_URL; fi
      WORKER_RUNTIME=$1 ORCH_ADDR=$addr CLUSTER_ID=$CLUSTER_ID READ_FLOOR=${READ_FLOOR:-$floor} \
        WORKER_BIN=${WORKER_BIN:-$ROOT/target/release/worker} WORKER_DATA_DIR=${WORKER_DATA_DIR:-$VAR/workers} \
        start_bg "$name" target/release/orchestrator
    )
  done
  for o in $(orchestrators); do
    name=${o%%:*} addr=${o#*:}
    wait_http "$name" "http://$addr/health"
    wait_http "a slave (caught up) through $name" "http://$addr/api/v1/db/read" POST '{"table":"users","count":true}'
  done
}

up() {
  mkdir -p "$RUN" "$LOGS"
  if [ -f "$RUN/topology" ] && [ "$(cat "$RUN/topology")" != "$TOPOLOGY" ] && running orchestrator; then
    die "a $(cat "$RUN/topology") stack runs: scripts/stack.sh down first"
  fi
  infra up
  echo "$TOPOLOGY" > "$RUN/topology"
  log "building release binaries"
  cargo build --release -q -p orchestrator -p worker -p users-api -p rides-api -p archiver
  local runtime=${WORKER_RUNTIME:-}
  if [ -z "$runtime" ]; then
    if engine_answers; then runtime=docker; else runtime=process; fi
  fi
  if [ "$runtime" = docker ] && [ -z "${SKIP_IMAGES:-}" ]; then scripts/build-images.sh; fi
  echo "$runtime" > "$RUN/runtime"
  start_orchestrators "$runtime"
  start_archiver
  local name addr
  while read -r name addr; do
    USERS_ADDR=$addr ORCHESTRATOR_URL=${ORCHESTRATOR_URL:-$(orchestrator_urls)} start_bg "$name" target/release/users-api
  done < <(instances users-api "$USERS_ADDRS")
  while read -r name addr; do
    RIDES_ADDR=$addr ORCHESTRATOR_URL=${ORCHESTRATOR_URL:-$(orchestrator_urls)} LB_URL=${LB_URL:-http://127.0.0.1:$LB_PORT} \
      RIDES_PUBLIC_URL=${RIDES_PUBLIC_URL:-http://$addr} start_bg "$name" target/release/rides-api
  done < <(instances rides-api "$RIDES_ADDRS")
  while read -r name addr; do wait_http "$name" "http://$addr/health"; done \
    < <(instances users-api "$USERS_ADDRS"; instances rides-api "$RIDES_ADDRS")
  scripts/lb.sh start
  wait_http "load balancer" "http://127.0.0.1:$LB_PORT/api/v1/rides/count"
  log "up: clients use http://127.0.0.1:$LB_PORT (runtime $runtime)"
}

stop_pid() { # name
  running "$1" || { rm -f "$RUN/$1.pid"; return 0; }
  local pid; pid=$(cat "$RUN/$1.pid")
  kill "$pid" 2>/dev/null || true
  local end=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $end ] || { kill -9 "$pid" 2>/dev/null || true; break; }
    sleep 0.1
  done
  rm -f "$RUN/$1.pid"
  log "$1 stopped"
}

stop_workers() {
  # Containers and processes of this cluster, found by label / environment.
  if command -v docker >/dev/null; then
    local ids; ids=$(timeout 10 docker ps -aq --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true)
    [ -z "$ids" ] || { docker rm -f $ids >/dev/null; log "worker containers removed"; }
  fi
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "RIDESHARE_CLUSTER=$CLUSTER_ID"; then
      kill -9 "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

down() {
  scripts/lb.sh stop || true
  # Every service instance with a pid file, whatever the topology that started it.
  local f
  for f in "$RUN"/users-api*.pid "$RUN"/rides-api*.pid; do
    [ -e "$f" ] && stop_pid "$(basename "$f" .pid)"
  done
  stop_pid orchestrator
  stop_pid orchestrator-2
  stop_pid archiver
  stop_workers
  infra down
  rm -f "$RUN/topology"
}

status() {
  if [ -n "$HA" ]; then echo "topology   ha: scripts/ha.sh, $AMQP_QUEUE_TYPE queues"; else echo "topology   single node: scripts/infra.sh"; fi
  infra status
  local n o role
  for o in $(orchestrators); do
    n=${o%%:*}
    if running "$n"; then
      # The leader answers the status; a follower sends it there (307).
      case $(curl -s -o /dev/null -w '%{http_code}' -m 5 "http://${o#*:}/api/v1/status") in
        200) role=leader ;; 307) role=follower ;; *) role="no leader known" ;;
      esac
      echo "$(printf '%-15s' "$n") up    pid $(cat "$RUN/$n.pid")  http://${o#*:}  $role"
    else
      echo "$(printf '%-15s' "$n") down"
    fi
  done
  local addr
  while read -r n addr; do
    if running "$n"; then echo "$(printf '%-15s' "$n") up    pid $(cat "$RUN/$n.pid")  http://$addr"; else echo "$(printf '%-15s' "$n") down  http://$addr"; fi
  done < <(instances users-api "$USERS_ADDRS"; instances rides-api "$RIDES_ADDRS")
  if running archiver; then
    echo "archiver        up    pid $(cat "$RUN/archiver.pid")  http://$ARCHIVER_ADDR  into $BACKUP_URL"
  elif [ "$BACKUP_URL" = off ]; then
    echo "archiver        off   (BACKUP_URL=off)"
  else
    echo "archiver        down"
  fi
  if scripts/lb.sh status >/dev/null 2>&1; then echo "lb          up    http://127.0.0.1:$LB_PORT (access log $LB_DIR/logs/access.log)"; else echo "lb          down"; fi
  if running orchestrator || running orchestrator-2; then
    echo "workers    $(curl -fsSL -m 5 "http://$ORCH_ADDR/api/v1/worker/list" 2>/dev/null || echo '(no answer)')"
  fi
}

# `wipe`: the explicit way to throw the data away (never part of `down`).
wipe() {
  down
  if command -v docker >/dev/null && timeout 5 docker info >/dev/null 2>&1; then
    local vols; vols=$(docker volume ls -q --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true)
    [ -z "$vols" ] || { docker volume rm $vols >/dev/null; log "worker volumes removed: $(echo $vols | wc -w)"; }
  fi
  # The redundant infra's data goes too: its servers are stopped first (they
  # may run for something else than this stack, e.g. the tests' ha_infra).
  HA_DIR=${HA_DIR:-$ROOT/var/ha} scripts/ha.sh down >/dev/null 2>&1 || true
  # The local backup goes with the data it backs up: a new cluster's history
  # is not archived over an old one's. A BACKUP_URL elsewhere is left as it is.
  rm -rf "${WORKER_DATA_DIR:-$VAR/workers}" "$VAR/zookeeper" "$VAR/rabbitmq" "${HA_DIR:-$ROOT/var/ha}" \
    "$VAR/backup" "$VAR/archiver"
  log "wiped: workers' data, RabbitMQ and ZooKeeper data, the local backup ($VAR/backup)"
}

# `revive`: (re)start every stack process that is not running, as a process
# supervisor would (the nemesis of `make soak` uses it): `up` with the infra
# and the build left as they are; run it with the environment `up` had.
revive() {
  [ -f "$RUN/topology" ] || die "no stack to revive here ($RUN): scripts/stack.sh up first"
  infra() { :; }
  cargo() { :; }
  up
}

# `rollout` (`make rollout`): the running stack upgraded to the binaries (and
# worker image) built now, with no request failing. The workers first, by the
# orchestrator's rollout (docs/api.md §6.3) to a copy of the new worker named
# by its content (process runtime: var/bin/worker-<sha>; Docker: the image
# tagged with its id); then each orchestrator and each service instance in
# turn: SIGTERM (it finishes the requests in flight and closes; the services
# and the LB use the other instance meanwhile), the new binary started on
# the same address, and the next one only once it serves.
rollout() {
  [ -f "$RUN/topology" ] && running orchestrator || die "no stack runs here ($RUN): scripts/stack.sh up first"
  local t0=$SECONDS runtime image
  runtime=$(cat "$RUN/runtime" 2>/dev/null || echo process)
  log "rollout: building"
  # The same packages as `up` (one feature resolution: nothing rebuilt for
  # nothing), the CLI apart.
  cargo build --release -q -p orchestrator -p worker -p users-api -p rides-api -p archiver
  cargo build --release -q -p ctl
  t0=$SECONDS
  if [ "$runtime" = docker ]; then
    scripts/build-images.sh worker
    image=rideshare-worker:$(docker image inspect -f '{{.Id}}' rideshare-worker:latest | sed 's/^sha256://' | cut -c1-12)
    docker tag rideshare-worker:latest "$image"
  else
    mkdir -p "$VAR/bin"
    image=$VAR/bin/worker-$(sha256sum target/release/worker | cut -c1-12)
    [ -x "$image" ] || cp target/release/worker "$image"
  fi
  log "rollout: the workers to $image"
  ORCHESTRATOR_URL=http://$ORCH_ADDR target/release/rideshare-ctl rollout --worker-image "$image"
  log "rollout: workers done in $((SECONDS - t0)) s"
  local name o addr t parts=()
  for o in $(orchestrators); do parts+=("${o%%:*} ${o#*:}"); done
  while read -r name addr; do parts+=("$name $addr"); done \
    < <(instances users-api "$USERS_ADDRS"; instances rides-api "$RIDES_ADDRS")
  for o in "${parts[@]}"; do
    read -r name addr <<< "$o"
    t=$SECONDS
    stop_pid "$name"
    # `revive` starts what is not running (this one) and waits until all serve.
    ( SKIP_IMAGES=1 revive ) 2>&1 | { grep -v 'already running' || true; } >&2
    case $name in
      users-api*) wait_lb_uses "$addr" "/api/v1/users?username=rollout-probe" ;;
      rides-api*) wait_lb_uses "$addr" "/api/v1/rides/count" ;;
    esac
    log "rollout: $name restarted on the new binary in $((SECONDS - t)) s"
  done
  log "rollout: done in $((SECONDS - t0)) s after the build (workers, ${#parts[@]} processes)"
}

# Until the LB has answered a request through the instance at $1 again:
# nginx leaves an instance it saw fail out for its fail_timeout, and stopping
# the other instance before that would leave it none. Requests through the
# LB (GET $2), one every 0.2 s, until its access log shows one served by $1.
wait_lb_uses() {
  local addr=$1 path=$2 log=$LB_DIR/logs/access.log from end=$((SECONDS + DEADLINE_SECS))
  from=$(wc -l < "$log")
  # grep reads it all (not -q): a pipe closed early would fail under pipefail.
  until tail -n +"$((from + 1))" "$log" | grep " 2[0-9][0-9] uri=.* upstream=$addr time=" >/dev/null; do
    [ $SECONDS -lt $end ] || die "the LB did not send a request to $addr within ${DEADLINE_SECS}s (see $log)"
    curl -s -o /dev/null -m 5 "http://127.0.0.1:$LB_PORT$path" || true
    sleep 0.2
  done
}

case "${1:-}" in
  rollout) rollout ;;
  revive) revive ;;
  up) up ;;
  down) down ;;
  status) status ;;
  wipe) wipe ;;
  *) echo "usage: $0 up|down|status|wipe|rollout|revive" >&2; exit 2 ;;
esac
