#!/usr/bin/env bash
# The whole system in containers on this Docker host (docker/compose.yml).
#
#   scripts/deploy.sh up       build the images (scripts/build-images.sh all), start
#                              everything, return once a request through the LB is answered
#   scripts/deploy.sh down     stop it; remove the worker containers the orchestrator
#                              started (label rideshare.cluster=<CLUSTER_ID>) and the network;
#                              every volume is kept (the workers' databases, the broker's and
#                              ZooKeeper's data): the next `up` resumes the same data
#   scripts/deploy.sh wipe     `down`, then remove those volumes too (the data is gone)
#   scripts/deploy.sh status   the services, their health, and the workers
#
# Settings: docker/.env holds the defaults, the environment wins (DEPLOY_HOST,
# DEPLOY_PORT, ORCH_PORT, ORCH2_PORT, RABBITMQ_USER, RABBITMQ_PASS, CLUSTER_ID, ...).
# Also:
#   DEPLOY_PROJECT   compose project name (default rideshare)
#   DEPLOY_TIMEOUT   seconds `up` waits for the LB to answer (default 180)
#   SKIP_BUILD=1     use the images as they are (fails if one is missing)
#   KEEP_VOLUMES=0   `down` also removes the volumes (as `wipe`)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ENV_FILE=$ROOT/docker/.env
COMPOSE_FILE=$ROOT/docker/compose.yml
IMAGES=(rabbitmq zookeeper orchestrator users-api rides-api lb worker)

die() { echo "deploy: $*" >&2; exit 1; }
log() { echo "deploy: $*" >&2; }

# A setting: the environment if set and not blank, else docker/.env, else $2.
setting() {
  local name=$1 default=${2:-} v
  v=$(printenv "$name" 2>/dev/null | tr -d '[:space:]' || true)
  if [[ -z $v && -f $ENV_FILE ]]; then
    v=$(sed -n "s/^[[:space:]]*$name=//p" "$ENV_FILE" | tail -n 1 | tr -d '[:space:]')
  fi
  echo "${v:-$default}"
}

PROJECT=$(setting DEPLOY_PROJECT rideshare)
CLUSTER_ID=$(setting CLUSTER_ID rideshare-deploy)
DEPLOY_HOST=$(setting DEPLOY_HOST 127.0.0.1)
DEPLOY_PORT=$(setting DEPLOY_PORT 8080)
DEPLOY_TIMEOUT=$(setting DEPLOY_TIMEOUT 180)
[[ $PROJECT =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "DEPLOY_PROJECT=$PROJECT: lower-case letters, digits, - and _ only"
[[ $CLUSTER_ID =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "CLUSTER_ID=$CLUSTER_ID: letters, digits, . _ - only"
[[ $DEPLOY_PORT =~ ^[0-9]+$ ]] || die "DEPLOY_PORT=$DEPLOY_PORT is not a port number"
[[ $DEPLOY_TIMEOUT =~ ^[0-9]+$ ]] || die "DEPLOY_TIMEOUT=$DEPLOY_TIMEOUT is not a number of seconds"
# compose reads these (the environment wins over --env-file); keep the ones
# this script decided on consistent with what compose will use.
export CLUSTER_ID DEPLOY_HOST DEPLOY_PORT

command -v docker >/dev/null || die "docker CLI not found"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "neither 'docker compose' nor docker-compose is installed (apt-get install docker-compose)"
fi
compose() { "${COMPOSE[@]}" --ansi never -p "$PROJECT" --env-file "$ENV_FILE" -f "$COMPOSE_FILE" "$@"; }

lb_url() { echo "http://$DEPLOY_HOST:$DEPLOY_PORT"; }

# The system answers: a read through the LB, rides-api and the orchestrator
# reaches a worker.
answers() {
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$(lb_url)/api/v1/rides/count" 2>/dev/null)" == 200 ]]
}

workers() { docker ps -aq --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true; }

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
  local t0=$SECONDS
  log "starting project $PROJECT (cluster $CLUSTER_ID) with ${COMPOSE[*]}"
  # `up` itself waits for each service_healthy dependency in turn.
  if ! timeout "$DEPLOY_TIMEOUT" "${COMPOSE[@]}" --ansi never -p "$PROJECT" --env-file "$ENV_FILE" \
    -f "$COMPOSE_FILE" up -d --remove-orphans; then
    compose ps >&2 || true
    compose logs --tail 20 >&2 || true
    die "compose up failed (project $PROJECT)"
  fi
  local deadline=$((t0 + DEPLOY_TIMEOUT))
  until answers; do
    if ((SECONDS >= deadline)); then
      compose ps >&2 || true
      compose logs --tail 20 >&2 || true
      die "no answer from $(lb_url)/api/v1/rides/count within ${DEPLOY_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "up in $((SECONDS - t0))s: $(lb_url) (project $PROJECT, cluster $CLUSTER_ID, $(workers | wc -l) workers)"
}

down() {
  local t0=$SECONDS
  # The orchestrators first, so that no leader replaces the workers removed next.
  compose stop -t 10 orchestrator orchestrator-2 >/dev/null 2>&1 || true
  local ids
  ids=$(workers)
  if [[ -n $ids ]]; then
    log "removing $(echo "$ids" | wc -l) worker container(s) of cluster $CLUSTER_ID"
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null
  fi
  local volumes=()
  [[ ${KEEP_VOLUMES:-1} != 0 ]] || volumes=(-v)
  compose down --remove-orphans "${volumes[@]}" -t 10
  # down removes the network unless something still uses it.
  if docker network inspect "$CLUSTER_ID-net" >/dev/null 2>&1; then
    docker network rm "$CLUSTER_ID-net" >/dev/null || die "network $CLUSTER_ID-net is still in use"
  fi
  log "down in $((SECONDS - t0))s (project $PROJECT, cluster $CLUSTER_ID)"
}

# The explicit way to throw the data away: down, then every volume.
wipe() {
  KEEP_VOLUMES=0 down
  local vols
  vols=$(docker volume ls -q --filter "label=rideshare.cluster=$CLUSTER_ID" 2>/dev/null || true)
  if [[ -n $vols ]]; then
    # shellcheck disable=SC2086
    docker volume rm $vols >/dev/null
    log "removed $(echo "$vols" | wc -l) worker volume(s) of cluster $CLUSTER_ID"
  fi
}

status() {
  compose ps
  echo "workers (cluster $CLUSTER_ID):"
  docker ps -a --filter "label=rideshare.cluster=$CLUSTER_ID" --format '  {{.Names}}  {{.Status}}'
  if answers; then echo "lb: answering on $(lb_url)"; else echo "lb: not answering on $(lb_url)"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  wipe) wipe ;;
  status) status ;;
  -h | --help) sed -n '2,21p' "$0" ;;
  *) die "usage: $0 up|down|wipe|status" ;;
esac
