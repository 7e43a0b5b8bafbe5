#!/usr/bin/env bash
# The whole system on a Docker Swarm (docker/stack.yml), workers as Swarm services.
#
#   scripts/swarm.sh up       build the images (scripts/build-images.sh all), make this
#                             engine a one-node swarm if it is in none (and remember that),
#                             deploy the stack, return once a request through the LB is answered
#   scripts/swarm.sh down     remove the stack, the workers' services (label
#                             rideshare.cluster=<CLUSTER_ID>) and the network, keeping every
#                             volume (node-local: the workers' databases, broker, ZooKeeper);
#                             leave the swarm (and remove the docker_gwbridge network its
#                             init made) only if `up` created it
#   scripts/swarm.sh wipe     `down`, then remove those volumes too (the data is gone)
#   scripts/swarm.sh status   the stack's services and the workers' services
#
# Settings: docker/.env holds the defaults, the environment wins (DEPLOY_HOST,
# DEPLOY_PORT, ORCH_PORT, ORCH2_PORT, RABBITMQ_USER, RABBITMQ_PASS, CLUSTER_ID, ...); they are
# exported for `docker stack deploy`, which reads no .env file. Also:
#   SWARM_STACK      stack name (default rideshare)
#   SWARM_ADVERTISE  address for `docker swarm init --advertise-addr` (default 127.0.0.1:
#                    a one-node swarm; give a routable address to join more nodes)
#   DEPLOY_TIMEOUT   seconds `up` waits for the LB to answer (default 240)
#   SKIP_BUILD=1     use the images as they are (fails if one is missing)
#   KEEP_VOLUMES=0   `down` also removes the volumes (as `wipe`)
# More nodes: docs/deployment.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ENV_FILE=$ROOT/docker/.env
STACK_FILE=$ROOT/docker/stack.yml
IMAGES=(rabbitmq zookeeper orchestrator users-api rides-api lb worker)

die() { echo "swarm: $*" >&2; exit 1; }
log() { echo "swarm: $*" >&2; }

# A setting: the environment if set and not blank, else docker/.env, else $2.
setting() {
  local name=$1 default=${2:-} v
  v=$(printenv "$name" 2>/dev/null | tr -d '[:space:]' || true)
  if [[ -z $v && -f $ENV_FILE ]]; then
    v=$(sed -n "s/^[[:space:]]*$name=//p" "$ENV_FILE" | tail -n 1 | tr -d '[:space:]')
  fi
  echo "${v:-$default}"
}

STACK=$(setting SWARM_STACK rideshare)
CLUSTER_ID=$(setting CLUSTER_ID rideshare-swarm)
# docker/.env's CLUSTER_ID names the compose deployment; the stack keeps its own
# unless one is given in the environment.
[[ -n $(printenv CLUSTER_ID 2>/dev/null | tr -d '[:space:]' || true) ]] || CLUSTER_ID=rideshare-swarm
DEPLOY_HOST=$(setting DEPLOY_HOST 127.0.0.1)
DEPLOY_PORT=$(setting DEPLOY_PORT 8080)
ORCH_PORT=$(setting ORCH_PORT 8090)
ORCH2_PORT=$(setting ORCH2_PORT 8091)
DEPLOY_TIMEOUT=$(setting DEPLOY_TIMEOUT 240)
ADVERTISE=$(setting SWARM_ADVERTISE 127.0.0.1)
[[ $STACK =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "SWARM_STACK=$STACK: lower-case letters, digits, - and _ only"
[[ $CLUSTER_ID =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "CLUSTER_ID=$CLUSTER_ID: letters, digits, . _ - only"
[[ $DEPLOY_PORT =~ ^[0-9]+$ ]] || die "DEPLOY_PORT=$DEPLOY_PORT is not a port number"
[[ $ORCH_PORT =~ ^[0-9]+$ ]] || die "ORCH_PORT=$ORCH_PORT is not a port number"
[[ $ORCH2_PORT =~ ^[0-9]+$ ]] || die "ORCH2_PORT=$ORCH2_PORT is not a port number"
[[ $DEPLOY_TIMEOUT =~ ^[0-9]+$ ]] || die "DEPLOY_TIMEOUT=$DEPLOY_TIMEOUT is not a number of seconds"
# What `docker stack deploy` substitutes into stack.yml.
for name in RABBITMQ_USER RABBITMQ_PASS ADMIN_TOKEN RUST_LOG LOG_FORMAT SCALE_WINDOW_SECS READS_PER_SLAVE \
  MIN_SLAVES MAX_SLAVES; do
  v=$(setting "$name")
  if [[ -n $v ]]; then export "$name=$v"; fi
done
export CLUSTER_ID DEPLOY_HOST DEPLOY_PORT ORCH_PORT ORCH2_PORT

# The marker that `up` made this engine a swarm (so `down` leaves it).
STATE_DIR=$ROOT/var/swarm
MARK=$STATE_DIR/initialized-by-swarm-sh

command -v docker >/dev/null || die "docker CLI not found"

lb_url() { echo "http://$DEPLOY_HOST:$DEPLOY_PORT"; }
answers() {
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$(lb_url)/api/v1/rides/count" 2>/dev/null)" == 200 ]]
}
swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }
worker_services() { docker service ls -q --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true; }
stack_services() { docker stack services -q "$STACK" 2>/dev/null || true; }
# Every service of the stack runs as many tasks as it asks for (n/n).
all_replicas_running() {
  local replicas
  replicas=$(docker stack services --format '{{.Replicas}}' "$STACK" 2>/dev/null) || return 1
  [[ -n $replicas ]] || return 1
  ! echo "$replicas" | awk -F'[/ ]' '$1 != $2 { bad = 1 } END { exit !bad }'
}

up() {
  if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    local name
    for name in "${IMAGES[@]}"; do
      docker image inspect "rideshare-$name:latest" >/dev/null 2>&1 \
        || die "image rideshare-$name:latest missing (run scripts/build-images.sh all, or unset SKIP_BUILD)"
    done
  else
    scripts/build-images.sh all
  fi
  # Each image by its id: no node tries a registry for it (stack.yml).
  local name var
  for name in "${IMAGES[@]}"; do
    var=IMAGE_$(echo "$name" | tr 'a-z-' 'A-Z_')
    export "$var=$(docker image inspect -f '{{.Id}}' "rideshare-$name:latest")"
  done
  local t0=$SECONDS
  case "$(swarm_state)" in
    active) log "engine already in a swarm: deploying into it (it stays after down)" ;;
    inactive)
      mkdir -p "$STATE_DIR"
      # swarm init creates the docker_gwbridge network and leaving keeps it:
      # remember whether it was there, so that down removes it only if not.
      if docker network inspect docker_gwbridge >/dev/null 2>&1; then echo kept >"$MARK"; else : >"$MARK"; fi
      docker swarm init --advertise-addr "$ADVERTISE" >/dev/null || die "docker swarm init failed"
      log "swarm initialized (one node, advertising $ADVERTISE); down will leave it"
      ;;
    *) die "this engine's swarm state is $(swarm_state): fix it (docker swarm leave --force?) and retry" ;;
  esac
  log "deploying stack $STACK (cluster $CLUSTER_ID)"
  # --resolve-image never: the images are local, no registry is asked.
  docker stack deploy --resolve-image never --prune -c "$STACK_FILE" "$STACK" >/dev/null \
    || die "docker stack deploy failed"
  local deadline=$((t0 + DEPLOY_TIMEOUT))
  # The LB resolves users-api and rides-api (two tasks each) when it starts:
  # once every service runs all its replicas, restart it so that it lists
  # every instance, not only those running when it first started.
  until all_replicas_running; do
    if ((SECONDS >= deadline)); then
      docker stack ps --no-trunc "$STACK" >&2 || true
      die "the stack's services did not all run their replicas within ${DEPLOY_TIMEOUT}s"
    fi
    sleep 0.5
  done
  docker service update --force --detach=false "${STACK}_lb" >/dev/null || die "restarting ${STACK}_lb failed"
  until answers; do
    if ((SECONDS >= deadline)); then
      docker stack ps --no-trunc "$STACK" >&2 || true
      die "no answer from $(lb_url)/api/v1/rides/count within ${DEPLOY_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "up in $((SECONDS - t0))s: $(lb_url) (stack $STACK, cluster $CLUSTER_ID, $(worker_services | wc -l) workers)"
}

# Waits (bounded) until `cond` is false.
wait_while() {
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  while "$@"; do
    ((SECONDS < deadline)) || { log "still $what after ${limit}s"; return 1; }
    sleep 0.5
  done
}
has_stack_services() { [[ -n $(stack_services) ]]; }
has_worker_services() { [[ -n $(worker_services) ]]; }
has_network() { docker network inspect "$CLUSTER_ID-net" >/dev/null 2>&1; }
has_task_containers() {
  [[ -n $(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK") ]] \
    || [[ -n $(docker ps -aq --filter "label=rideshare.cluster=$CLUSTER_ID") ]]
}

down() {
  local t0=$SECONDS
  if [[ $(swarm_state) != active ]]; then
    log "this engine is in no swarm: nothing deployed"
    rm -f "$MARK"
    return 0
  fi
  # The orchestrators first, so that no leader replaces the workers removed next.
  docker service rm "${STACK}_orchestrator" "${STACK}_orchestrator-2" >/dev/null 2>&1 || true
  local ids
  ids=$(worker_services)
  if [[ -n $ids ]]; then
    log "removing $(echo "$ids" | wc -l) worker service(s) of cluster $CLUSTER_ID"
    # shellcheck disable=SC2086
    docker service rm $ids >/dev/null
  fi
  docker stack rm "$STACK" >/dev/null 2>&1 || true
  wait_while "stack services" 60 has_stack_services || true
  wait_while "task containers" 60 has_task_containers || true
  # The stack's network goes with the stack, once its tasks are gone.
  if has_network; then
    docker network rm "$CLUSTER_ID-net" >/dev/null 2>&1 || true
    wait_while "network $CLUSTER_ID-net" 30 has_network || true
  fi
  if [[ ${KEEP_VOLUMES:-1} == 0 ]]; then
    local v
    for v in rabbitmq-data zookeeper-data; do
      docker volume rm "${STACK}_$v" >/dev/null 2>&1 || true
    done
    # A removed task's container goes a moment after its service: a volume
    # it still holds is tried again until it is free (bounded).
    local until=$((SECONDS + 60)) left
    while :; do
      left=$(docker volume ls -q --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true)
      for v in $left; do
        docker volume rm "$v" >/dev/null 2>&1 || true
      done
      left=$(docker volume ls -q --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true)
      [[ -z $left ]] && break
      if ((SECONDS >= until)); then
        log "volumes left after 60s, still in use: $(echo $left)"
        docker ps -a --filter "volume=$(echo "$left" | head -n 1)" --format '{{.ID}} {{.Names}} {{.Status}}' >&2 || true
        break
      fi
      sleep 0.5
    done
  fi
  if [[ -f $MARK ]]; then
    docker swarm leave --force >/dev/null || die "docker swarm leave failed"
    if [[ $(cat "$MARK") != kept ]]; then
      # Leaving detaches the ingress sandbox from it a moment later: retry a while.
      local until=$((SECONDS + 20))
      until docker network rm docker_gwbridge >/dev/null 2>&1 || ! docker network inspect docker_gwbridge >/dev/null 2>&1; do
        if ((SECONDS >= until)); then
          log "docker_gwbridge (made by swarm init) left: still in use"
          break
        fi
        sleep 0.5
      done
    fi
    rm -f "$MARK"
    log "left the swarm (swarm.sh had created it)"
  fi
  log "down in $((SECONDS - t0))s (stack $STACK, cluster $CLUSTER_ID)"
}

status() {
  docker stack services "$STACK"
  echo "workers (cluster $CLUSTER_ID):"
  docker service ls --filter "label=rideshare.cluster=$CLUSTER_ID" --format '  {{.Name}}  {{.Replicas}}'
  if answers; then echo "lb: answering on $(lb_url)"; else echo "lb: not answering on $(lb_url)"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  wipe) KEEP_VOLUMES=0 down ;;
  status) status ;;
  -h | --help) sed -n '2,23p' "$0" ;;
  *) die "usage: $0 up|down|wipe|status" ;;
esac
