#!/usr/bin/env bash
# The local load balancer (nginx with the ALB's path rules).
#
#   scripts/lb.sh start|stop|status
#
# Both start and stop are idempotent: `start` on a running LB with the same
# settings changes nothing (a changed config is reloaded into it), `stop` on a
# stopped one succeeds.
#
# Environment:
#   LB_PORT     port to listen on (default 8080)
#   LB_HOST     address to listen on (default 127.0.0.1)
#   USERS_ADDRS users-api instances, comma-separated host:port (default USERS_ADDR)
#   RIDES_ADDRS rides-api instances, comma-separated host:port (default RIDES_ADDR)
#   USERS_ADDR  the one users-api when USERS_ADDRS is unset (default 127.0.0.1:8081)
#   RIDES_ADDR  the one rides-api when RIDES_ADDRS is unset (default 127.0.0.1:8082)
#   LB_FAIL_TIMEOUT  how long an instance that failed is left out (default 3s)
#   LB_DIR      folder for the rendered config, pid, logs and temp files
#               (default ./var/lb); the access log is $LB_DIR/logs/access.log
#   NGINX       nginx binary (default: nginx on PATH, else /usr/sbin/nginx)
#   LB_START_TIMEOUT  seconds to wait for it to answer (default 10)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
template="$root/alb-config/nginx.conf.template"

LB_PORT="${LB_PORT:-8080}"
LB_HOST="${LB_HOST:-127.0.0.1}"
USERS_ADDRS="${USERS_ADDRS:-${USERS_ADDR:-127.0.0.1:8081}}"
RIDES_ADDRS="${RIDES_ADDRS:-${RIDES_ADDR:-127.0.0.1:8082}}"
LB_FAIL_TIMEOUT="${LB_FAIL_TIMEOUT:-3s}"
LB_DIR="${LB_DIR:-./var/lb}"
LB_START_TIMEOUT="${LB_START_TIMEOUT:-10}"
mkdir -p "$LB_DIR"
LB_DIR="$(cd "$LB_DIR" && pwd)"
conf="$LB_DIR/nginx.conf"
pidfile="$LB_DIR/nginx.pid"

die() {
    echo "lb.sh: $*" >&2
    exit 1
}

find_nginx() {
    if [[ -n "${NGINX:-}" ]]; then
        echo "$NGINX"
    elif command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
    else
        die "nginx not found (install it: apt-get install -y nginx-light, or set NGINX)"
    fi
}

running_pid() {
    [[ -s "$pidfile" ]] || return 1
    local pid
    pid="$(cat "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

answers() {
    curl -fsS -o /dev/null --max-time 1 "http://$LB_HOST:$LB_PORT/lb-health" 2>/dev/null
}

# The upstream lines for a comma-separated list of host:port: one server per
# instance, left out for LB_FAIL_TIMEOUT after one failure.
servers() {
    local list="$1" addr out="" host_port='^[^[:space:];|]+:[0-9]+$'
    IFS=',' read -ra addrs <<<"$list"
    for addr in "${addrs[@]}"; do
        addr="${addr//[[:space:]]/}"
        [[ "$addr" =~ $host_port ]] || die "not a host:port in $list: '$addr'"
        out+="server $addr max_fails=1 fail_timeout=$LB_FAIL_TIMEOUT; "
    done
    [[ -n "$out" ]] || die "no instance in '$list'"
    echo "$out"
}

# Renders the config for the current settings into $1 (default: the live config).
render() {
    local out="${1:-$conf}"
    [[ -f "$template" ]] || die "missing $template"
    local user_line=""
    # As root, nginx would hand its workers to "nobody", who may not be able
    # to enter LB_DIR; keep them as the current user instead.
    if [[ "$(id -u)" == 0 ]]; then
        user_line="user root;"
    fi
    mkdir -p "$LB_DIR/logs" "$LB_DIR/tmp"
    local users rides
    users="$(servers "$USERS_ADDRS")"
    rides="$(servers "$RIDES_ADDRS")"
    sed -e "s|@LB_DIR@|$LB_DIR|g" \
        -e "s|@LB_LISTEN@|$LB_HOST:$LB_PORT|g" \
        -e "s|@USERS_SERVERS@|$users|g" \
        -e "s|@RIDES_SERVERS@|$rides|g" \
        -e "s|@USER_LINE@|$user_line|g" \
        "$template" >"$out.new"
    mv "$out.new" "$out"
}

start() {
    local nginx pid
    nginx="$(find_nginx)"
    if pid="$(running_pid)"; then
        # Idempotent: the same settings change nothing; new ones are reloaded
        # into the running nginx (same pid, no dropped connections).
        render "$conf.want"
        if cmp -s "$conf.want" "$conf" && answers; then
            rm -f "$conf.want"
            echo "lb: already running (pid $pid) on http://$LB_HOST:$LB_PORT"
            return 0
        fi
        "$nginx" -t -q -p "$LB_DIR" -e "$LB_DIR/logs/error.log" -c "$conf.want" \
            || die "nginx refused the rendered config $conf.want"
        mv "$conf.want" "$conf"
        "$nginx" -p "$LB_DIR" -e "$LB_DIR/logs/error.log" -c "$conf" -s reload \
            || die "nginx did not reload; see $LB_DIR/logs/error.log"
        wait_answers
        echo "lb: reloaded (pid $pid) on http://$LB_HOST:$LB_PORT; users -> $USERS_ADDRS, rides -> $RIDES_ADDRS"
        return 0
    fi
    render
    "$nginx" -t -q -p "$LB_DIR" -e "$LB_DIR/logs/error.log" -c "$conf" \
        || die "nginx refused the rendered config $conf"
    # nginx puts itself in the background and writes its pid file.
    "$nginx" -p "$LB_DIR" -e "$LB_DIR/logs/error.log" -c "$conf" \
        || die "nginx did not start; see $LB_DIR/logs/error.log"
    wait_answers
    echo "lb: listening on http://$LB_HOST:$LB_PORT (pid $(running_pid)); users -> $USERS_ADDRS, rides -> $RIDES_ADDRS; log $LB_DIR/logs/access.log"
}

wait_answers() {
    local deadline=$((SECONDS + LB_START_TIMEOUT))
    until answers; do
        if ((SECONDS >= deadline)); then
            tail -n 5 "$LB_DIR/logs/error.log" >&2 || true
            die "nginx did not answer on $LB_HOST:$LB_PORT within ${LB_START_TIMEOUT}s"
        fi
        if ! running_pid >/dev/null && ((SECONDS > 1)); then
            tail -n 5 "$LB_DIR/logs/error.log" >&2 || true
            die "nginx exited during start; see $LB_DIR/logs/error.log"
        fi
        sleep 0.1
    done
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "lb: not running ($LB_DIR)"
        rm -f "$pidfile"
        return 0
    fi
    kill -QUIT "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
    echo "lb: stopped (pid $pid)"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if answers; then
            echo "lb: running (pid $pid) on http://$LB_HOST:$LB_PORT"
        else
            echo "lb: running (pid $pid) but not answering on http://$LB_HOST:$LB_PORT"
            return 1
        fi
    else
        echo "lb: not running ($LB_DIR)"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
