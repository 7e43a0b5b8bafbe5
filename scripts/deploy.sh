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
#   scripts/deploy.sh rollout  a running deployment upgraded to the images built now,
#                              one part at a time while the others serve (README
#                              "Operating it"): workers, orchestrators, service instances
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
DEPLOY_NET=$(setting DEPLOY_NET 10.213.0)
[[ $PROJECT =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "DEPLOY_PROJECT=$PROJECT: lower-case letters, digits, - and _ only"
[[ $CLUSTER_ID =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "CLUSTER_ID=$CLUSTER_ID: letters, digits, . _ - only"
[[ $DEPLOY_PORT =~ ^[0-9]+$ ]] || die "DEPLOY_PORT=$DEPLOY_PORT is not a port number"
[[ $DEPLOY_TIMEOUT =~ ^[0-9]+$ ]] || die "DEPLOY_TIMEOUT=$DEPLOY_TIMEOUT is not a number of seconds"
[[ $DEPLOY_NET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "DEPLOY_NET=$DEPLOY_NET: the first three numbers of a /24, like 10.213.0"
# compose reads these (the environment wins over --env-file); keep the ones
# this script decided on consistent with what compose will use.
export CLUSTER_ID DEPLOY_HOST DEPLOY_PORT DEPLOY_NET

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

# The health a compose service's container reports (empty: no container).
health() {
  local id; id=$(compose ps -q "$1" 2>/dev/null || true)
  [[ -n $id ]] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null
}

# `rollout`: the workers through the orchestrator's rollout (to the worker
# image tagged with its id), then each orchestrator and service instance in
# turn recreated on its new image (compose stops the old container with
# SIGTERM: it finishes the requests in flight while the other instance
# serves), the next only once the new one is healthy and, for a service
# instance, the LB has answered a request through it again (it keeps its
# fixed address, so nginx needs no reload, whose closing of kept-alive
# client connections failed requests; but nginx leaves an instance it saw
# fail out for its fail_timeout).
rollout() {
  answers || die "no deployment answers at $(lb_url): scripts/deploy.sh up first"
  [[ ${SKIP_BUILD:-0} == 1 ]] || scripts/build-images.sh all
  local t0=$SECONDS image token orch_port
  image=rideshare-worker:$(docker image inspect -f '{{.Id}}' rideshare-worker:latest | sed 's/^sha256://' | cut -c1-12)
  docker tag rideshare-worker:latest "$image"
  token=$(setting ADMIN_TOKEN)
  orch_port=$(setting ORCH_PORT 8090)
  log "rollout: the workers to $image"
  local answer
  answer=$(curl -sS --max-time 1800 -X POST -H 'content-type: application/json' \
    ${token:+-H "authorization: Bearer $token"} -L --post302 --location-trusted \
    -d "{\"worker_image\": \"$image\"}" -w '\n%{http_code}' "http://$DEPLOY_HOST:$orch_port/api/v1/rollout") \
    || die "rollout of the workers: no answer"
  [[ ${answer##*$'\n'} == 200 ]] || die "rollout of the workers refused: ${answer%$'\n'*}"
  log "rollout: workers done in $((SECONDS - t0))s: ${answer%$'\n'*}"
  local svc t end
  for svc in orchestrator orchestrator-2 users-api users-api-2 rides-api rides-api-2; do
    t=$SECONDS
    compose up -d --no-deps --force-recreate -t 25 "$svc" >/dev/null 2>&1 || die "recreating $svc failed"
    end=$((SECONDS + DEPLOY_TIMEOUT))
    until [[ $(health "$svc") == healthy ]]; do
      ((SECONDS < end)) || die "$svc not healthy within ${DEPLOY_TIMEOUT}s after its recreation"
      sleep 0.5
    done
    case $svc in
      users-api) wait_lb_uses "$DEPLOY_NET.11" "/api/v1/users?username=rollout-probe" ;;
      users-api-2) wait_lb_uses "$DEPLOY_NET.12" "/api/v1/users?username=rollout-probe" ;;
      rides-api) wait_lb_uses "$DEPLOY_NET.13" /api/v1/rides/count ;;
      rides-api-2) wait_lb_uses "$DEPLOY_NET.14" /api/v1/rides/count ;;
    esac
    log "rollout: $svc recreated on its new image in $((SECONDS - t))s"
  done
  answers || die "no answer from $(lb_url) after the rollout"
  log "rollout: done in $((SECONDS - t0))s (workers, 6 containers)"
}

# Until the LB's access log (its container's output) shows a request
# answered through the instance at address $1: GET $2 through the LB, one
# every 0.2 s, bounded by DEPLOY_TIMEOUT.
wait_lb_uses() {
  local lb since end=$((SECONDS + DEPLOY_TIMEOUT))
  lb=$(compose ps -q lb)
  since=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
  # grep reads it all (not -q): a pipe closed early would fail under pipefail.
  until docker logs --since "$since" "$lb" 2>/dev/null | grep " 2[0-9][0-9] uri=.* upstream=$1:80 time=" >/dev/null; do
    if ((SECONDS >= end)); then
      docker logs --since "$since" "$lb" 2>&1 | tail -n 5 >&2
      die "the LB did not send a request to $1 within ${DEPLOY_TIMEOUT}s (its last lines above)"
    fi
    curl -s -o /dev/null --max-time 5 "$(lb_url)$2" || true
    sleep 0.2
  done
}

case "${1:-}" in
  rollout) rollout ;;
  up) up ;;
  down) down ;;
  wipe) wipe ;;
  status) status ;;
  -h | --help) sed -n '2,24p' "$0" ;;
  *) die "usage: $0 up|down|wipe|status|rollout" ;;
esac
