#!/usr/bin/env bash
# What of this checkout is running: one line per process started from its
# target/ or var/ (servers, workers, the broker, ZooKeeper, nginx, moto), per
# listener on the infra's ports, per container or Docker volume of a rideshare
# cluster. scripts/test.sh takes this list before and after the run and fails
# on any line that is new (`make test` leaves nothing running it started).
#
#   scripts/leftovers.sh list                  the list, sorted
#   scripts/leftovers.sh check BEFORE_FILE     fails listing what is new since BEFORE_FILE
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

list() {
  local p cmd port
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *leftovers.sh*|*cargo\ *|*rustc*) continue ;;
      *"$ROOT/target/"*|*"$ROOT/var/"*) echo "process ${cmd:0:200}" ;;
    esac
  done
  # The single-node infra, the redundant one (AMQP, Erlang distribution, ZooKeeper).
  for port in 5672 2181 5781 5782 5783 25781 25782 25783 2281 2282 2283; do
    if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then echo "listener 127.0.0.1:$port"; fi
  done
  if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
    docker ps -a --filter label=rideshare.cluster --format 'container {{.Names}}'
    docker volume ls --filter label=rideshare.cluster --format 'volume {{.Name}}'
    docker service ls --filter label=rideshare.cluster --format 'service {{.Name}}' 2>/dev/null || true
  fi
}

case "${1:-}" in
  list) list | sort -u ;;
  check)
    [ -f "${2:-}" ] || { echo "usage: $0 check BEFORE_FILE" >&2; exit 2; }
    new=$(list | sort -u | comm -13 "$2" -)
    if [ -n "$new" ]; then
      printf '[leftovers] still running after the tests, and not before them:\n%s\n' "$new" >&2
      exit 1
    fi
    echo "leftovers: none" ;;
  *) echo "usage: $0 list | check BEFORE_FILE" >&2; exit 2 ;;
esac
