#!/usr/bin/env bash
# An S3-compatible server on loopback for the archive's tests: moto's server
# (PyPI `moto[server]`, installed with pip when missing), our own process,
# its pid and log under var/s3/. Idempotent: `up` on a running server only
# makes sure the bucket exists; `down` on a stopped one succeeds.
#   scripts/s3.sh up | down | status | env
# S3_PORT [9788], S3_BUCKET [rideshare-test], S3_DIR [var/s3] (not under VAR_DIR:
# one server per checkout, whichever infra the tests share).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${S3_DIR:-$PWD/var/s3}
PORT=${S3_PORT:-9788}
BUCKET=${S3_BUCKET:-rideshare-test}
PIDFILE=$DIR/moto.pid
URL=http://127.0.0.1:$PORT
DEADLINE_SECS=${S3_DEADLINE_SECS:-60}
log() { printf '[s3] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { curl -s -o /dev/null --max-time 2 "$URL/"; }

up() {
  mkdir -p "$DIR"
  # Already answering (ours, or one started by another checkout): use it.
  if ! running && ! answers; then
    command -v moto_server >/dev/null || python3 -c 'import moto.server' 2>/dev/null || {
      log "installing moto[server] from PyPI"
      python3 -m pip install -q 'moto[server]'
    }
    log "starting moto_server on $URL"
    local server=(moto_server)
    command -v moto_server >/dev/null || server=(python3 -m moto.server)
    nohup "${server[@]}" -H 127.0.0.1 -p "$PORT" >"$DIR/moto.log" 2>&1 &
    echo $! >"$PIDFILE"
  fi
  local end=$((SECONDS + DEADLINE_SECS))
  until answers; do
    running || die "moto_server exited; see $DIR/moto.log"
    [ $SECONDS -lt $end ] || die "moto_server did not answer on $URL within ${DEADLINE_SECS}s"
    sleep 0.2
  done
  # Creating a bucket that exists is fine (moto answers 200 or 409).
  curl -s -o /dev/null --max-time 5 -X PUT "$URL/$BUCKET" || die "cannot create bucket $BUCKET"
  log "up: $URL, bucket $BUCKET"
}

down() {
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid"
    local end=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped moto_server (pid $pid)"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running && answers; then echo "up $URL"; else echo "down"; exit 3; fi ;;
  env) cat <<EOT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$URL
export BACKUP_URL=s3://$BUCKET/rideshare
EOT
  ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
