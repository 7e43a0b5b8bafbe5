#!/usr/bin/env bash
# The two commands as an operator uses them: `make up`, `make up` again (succeeds
# and changes nothing: same pids), `make status`, a client call through the load
# balancer, `make down` (nothing of ours left running), `make down` again
# (succeeds); then the data across `make down`/`make up`, across a machine
# crash (every process SIGKILLed, then `make up`) and gone after `make wipe`.
#
# Settings as for scripts/stack.sh; VAR_DIR, AMQP_PORT and ZK_PORT put the stack
# (and its RabbitMQ and ZooKeeper) somewhere other than var/ and the default
# ports, e.g. next to a shared infra that other work uses:
#   VAR_DIR=$PWD/var/smoke AMQP_PORT=5673 ZK_PORT=2182 scripts/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${VAR_DIR:-$PWD/var}
LB_PORT=${LB_PORT:-8080}
CLUSTER_ID=${CLUSTER_ID:-rideshare}
log() { printf '[smoke] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; make -s down >/dev/null 2>&1 || true; echo "smoke: 0 passed, 1 failed"; exit 1; }

# Every process this stack started: its pid files, the LB's, the infra's, and
# the workers of its cluster (process runtime; containers are checked apart).
our_pids() {
  local ours="" p f
  # One file at a time: a pid file need not end in a newline.
  for f in "$VAR"/run/*.pid "${LB_DIR:-$VAR/lb}/nginx.pid" "$VAR/rabbitmq/rabbitmq.pid" "$VAR/zookeeper/zk.pid"; do
    if [ -f "$f" ]; then ours="$ours $(tr -d ' \n' < "$f")"; fi
  done
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "RIDESHARE_CLUSTER=$CLUSTER_ID"; then
      ours="$ours ${p#/proc/}"
    fi
  done
  # shellcheck disable=SC2086 # one pid a word
  printf '%s\n' $ours | sort -n | tr '\n' ' '
}
workers_line() { echo "$1" | grep -E '^workers ' || true; }

# From nothing: an earlier run that failed half way may have left data.
make -s down >/dev/null 2>&1 || true
make -s wipe >/dev/null || fail "make wipe before the first make up"
make -s up || fail "make up"
first_pids=$(our_pids)
first_status=$(make -s status) || fail "make status"
log "up: pids $first_pids"

log "make up again on the running stack"
make -s up || fail "make up on a running stack exited $?"
again_pids=$(our_pids)
[ "$again_pids" = "$first_pids" ] || fail "make up on a running stack changed the processes: $first_pids -> $again_pids"

status=$(make -s status) || fail "make status"
echo "$status"
for part in rabbitmq zookeeper orchestrator archiver users-api rides-api lb; do
  echo "$status" | grep -E "^$part[ -]" | grep -q " up" || fail "$part not shown up in make status"
done
echo "$status" | grep -Eq '^workers +\[[0-9]+, *[0-9]+\]' || fail "make status does not show one master and one slave"
[ "$(workers_line "$status")" = "$(workers_line "$first_status")" ] \
  || fail "the workers changed across the second make up: $(workers_line "$first_status") -> $(workers_line "$status")"

user="smoke$RANDOM"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$LB_PORT/api/v1/users" \
  -H 'content-type: application/json' -d "{\"username\":\"$user\",\"password\":\"$(printf 'a%.0s' {1..40})\"}")
[ "$code" = 201 ] || fail "PUT /api/v1/users through the load balancer answered $code"

# The continuous backup `make up` started holds that write within seconds.
archived() { curl -s -m 3 "http://${ARCHIVER_ADDR:-127.0.0.1:8095}/metrics" | sed -n 's/^rideshare_archive_seq \([0-9]*\).*/\1/p'; }
deadline=$((SECONDS + 30))
until [ "$(archived)" -ge 1 ] 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "the archiver holds no write 30 s after one (rideshare_archive_seq: '$(archived)')"
  sleep 0.2
done
log "the archiver holds the write (rideshare_archive_seq $(archived))"

ours=$(our_pids)
[ -n "${ours// /}" ] || fail "found no pids of the running stack"
make -s down || fail "make down"
left=""
for pid in $ours; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
[ -z "$left" ] || fail "processes left after make down:$left"
if command -v docker >/dev/null; then
  [ -z "$(docker ps -q --filter "label=rideshare.cluster=$CLUSTER_ID")" ] || fail "worker containers left after make down"
fi

log "make down again on the stopped stack"
make -s down || fail "make down on a stopped stack exited $?"

# The data outlives the processes: `make up` resumes it; only `make wipe` removes it.
exists() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LB_PORT/api/v1/users?username=$1"; }
make -s up || fail "make up after make down"
[ "$(exists "$user")" = 200 ] || fail "user $user, written before make down, is gone after make up"
log "make down / make up kept the data (user $user listed)"

# A machine crash: every process of the stack, RabbitMQ and ZooKeeper
# included, SIGKILLed at once (worker containers killed too); then `make up`
# resumes every acknowledged write.
put_user() {
  curl -s -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:$LB_PORT/api/v1/users" \
    -H 'content-type: application/json' -d "{\"username\":\"$1\",\"password\":\"$(printf 'a%.0s' {1..40})\"}"
}
# The answer for user $1 once it is $2, or after 30 s whatever it is then.
wait_exists() {
  local deadline=$((SECONDS + 30)) code
  while code=$(exists "$1"); [ "$code" != "$2" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  echo "$code"
}
crashed="smoke$RANDOM"
[ "$(put_user "$crashed")" = 201 ] || fail "PUT /api/v1/users before the machine crash"
# Their children too (nginx's workers hold the listening socket).
victims=$(our_pids)
for pid in $victims; do victims="$victims $( (pgrep -P "$pid" || true) | tr '\n' ' ')"; done
if command -v docker >/dev/null; then
  for c in $(docker ps -q --filter "label=rideshare.cluster=$CLUSTER_ID"); do docker kill "$c" >/dev/null || true; done
fi
# shellcheck disable=SC2086 # one pid a word
kill -9 $victims 2>/dev/null || true
deadline=$((SECONDS + 20))
for pid in $victims; do
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "pid $pid still alive 20 s after SIGKILL"
    sleep 0.1
  done
done
make -s up || fail "make up after the machine crash"
[ "$(wait_exists "$crashed" 200)" = 200 ] || fail "user $crashed, acknowledged before the machine crash, is gone"
[ "$(wait_exists "$user" 200)" = 200 ] || fail "user $user is gone after the machine crash"
log "a machine crash (every process SIGKILLed) then make up kept the data (users $user, $crashed)"
make -s wipe || fail "make wipe"
if command -v docker >/dev/null; then
  [ -z "$(docker volume ls -q --filter "label=rideshare.cluster=$CLUSTER_ID")" ] || fail "worker volumes left after make wipe"
fi
[ ! -e "$VAR/backup" ] || fail "the local backup $VAR/backup left after make wipe"
make -s up || fail "make up after make wipe"
[ "$(exists "$user")" = 204 ] || fail "user $user still there after make wipe"
make -s wipe || fail "make wipe"
echo "smoke: 1 passed, 0 failed"
