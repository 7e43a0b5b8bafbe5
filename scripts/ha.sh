#!/usr/bin/env bash
# The redundant infra on this machine: a 3-node RabbitMQ cluster and a
# 3-server ZooKeeper ensemble on loopback, from Debian's packages (as
# scripts/infra.sh), run as our own processes with their data under var/ha/.
# Invariant: `up` returns only once all three broker nodes are running in ONE
# cluster and the ensemble has a leader and two followers; `up`/`down` are
# idempotent; nothing here touches the single-node infra (5672/2181).
#
#   scripts/ha.sh up | down | status
#   scripts/ha.sh kill-rabbit N | start-rabbit N   (N = 1..3; kill = SIGKILL)
#   scripts/ha.sh kill-zk N | start-zk N
#   scripts/ha.sh restart-rabbits                  the whole broker: all three nodes
#                                                  killed (a power cut), then started as
#                                                  one cluster (an orderly stop of the last
#                                                  two waits for a paused minority node)
#   scripts/ha.sh zk-leader                        prints N of the ZK leader
#   scripts/ha.sh amqp-urls | zk-addr              what clients are given
#
# Ports (override with the variables): AMQP HA_AMQP_BASE+N (5781..5783),
# Erlang distribution +20000, ZooKeeper client HA_ZK_BASE+N (2281..2283),
# peer +100, election +200.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HA=$(realpath -m "${HA_DIR:-$ROOT/var/ha}")
AMQP_BASE=${HA_AMQP_BASE:-5780}
ZK_BASE=${HA_ZK_BASE:-2280}
DEADLINE_SECS=${INFRA_DEADLINE_SECS:-120}
NODES=(1 2 3)

log() { printf '[ha] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

amqp_port() { echo $((AMQP_BASE + $1)); }
zk_port() { echo $((ZK_BASE + $1)); }
node_name() { echo "ha$(amqp_port "$1")@localhost"; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
check_n() { case "${1:-}" in 1|2|3) ;; *) die "node number must be 1, 2 or 3 (got '${1:-}')" ;; esac; }

# ---------------------------------------------------------------- RabbitMQ
# One HOME for the three nodes and rabbitmqctl: one Erlang cookie.
rmq_env() { # N
  local d=$HA/rabbit$1
  export HOME=$HA/rabbit-home
  export RABBITMQ_NODENAME; RABBITMQ_NODENAME=$(node_name "$1")
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT; RABBITMQ_NODE_PORT=$(amqp_port "$1")
  export RABBITMQ_DIST_PORT=$((RABBITMQ_NODE_PORT + 20000))
  export RABBITMQ_MNESIA_BASE=$d/mnesia
  export RABBITMQ_LOG_BASE=$d/log
  export RABBITMQ_CONFIG_FILE=$d/rabbitmq
  export RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins
  export RABBITMQ_PID_FILE=$d/rabbitmq.pid
  export ERL_EPMD_ADDRESS=127.0.0.1
}
rmqctl() { local n=$1; shift; ( rmq_env "$n"; /usr/lib/rabbitmq/bin/rabbitmqctl -q "$@" ); }
rabbit_running() { pid_alive "$HA/rabbit$1/rabbitmq.pid"; }
rabbit_answers() { rabbit_running "$1" && port_open "$(amqp_port "$1")"; }

rabbit_start() { # N: start the node (not waiting for it)
  local n=$1 d=$HA/rabbit$1
  if rabbit_running "$n"; then return 0; fi
  mkdir -p "$d/log" "$d/mnesia" "$HA/rabbit-home"
  local cookie=$HA/rabbit-home/.erlang.cookie
  [ -f "$cookie" ] || { head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$cookie"; chmod 400 "$cookie"; }
  cat > "$d/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
heartbeat = 5
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 200MB
log.console = false
log.file.level = warning
cluster_partition_handling = pause_minority
CONF
  echo "[]." > "$d/enabled_plugins"
  log "starting rabbitmq node $n ($(node_name "$n"), 127.0.0.1:$(amqp_port "$n"))"
  # 9>&-: the daemon must not inherit (and so hold) this script's lock.
  # From its own folder: the Erlang VM writes crash dumps (MnesiaCore.*) to its working directory.
  ( rmq_env "$n"; cd "$d"; setsid nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$d/log/console.log" 2>&1 9>&- & )
}

rabbit_await() { # N
  local n=$1 end=$((SECONDS + DEADLINE_SECS))
  until port_open "$(amqp_port "$n")" && rmqctl "$n" await_startup --timeout 5 >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { tail -20 "$HA/rabbit$n/log/console.log" >&2; die "rabbitmq node $n did not start within ${DEADLINE_SECS}s"; }
    sleep 0.5
  done
}

# The running members node N sees, one name a line.
rabbit_members() { rmqctl "$1" cluster_status --formatter json 2>/dev/null | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("running_nodes", [])))' 2>/dev/null || true; }
rabbit_disk_members() { rmqctl "$1" cluster_status --formatter json 2>/dev/null | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("disk_nodes", [])))' 2>/dev/null || true; }

rabbit_join() { # N: make node N a member of node 1's cluster (once)
  local n=$1 first; first=$(node_name 1)
  if rabbit_disk_members "$n" | grep -qx "$first"; then return 0; fi
  log "joining rabbitmq node $n to $first"
  local out=$HA/rabbit$n/log/join.log
  { rmqctl "$n" stop_app && rmqctl "$n" reset && rmqctl "$n" join_cluster "$first" && rmqctl "$n" start_app; } >"$out" 2>&1 ||
    { tail -20 "$out" >&2; die "rabbitmq node $n could not join $first"; }
}

rabbit_cluster_up() {
  local n
  for n in "${NODES[@]}"; do rabbit_start "$n"; done
  for n in "${NODES[@]}"; do rabbit_await "$n"; done
  rabbit_join 2
  rabbit_join 3
  # All three running in one cluster, as node 1 sees it (with a deadline).
  local end=$((SECONDS + DEADLINE_SECS))
  until [ "$(rabbit_members 1 | grep -c '^ha')" = 3 ]; do
    [ $SECONDS -lt $end ] || die "the rabbitmq cluster did not reach 3 running nodes within ${DEADLINE_SECS}s: $(rabbit_members 1 | tr '\n' ' ')"
    sleep 0.5
  done
  log "rabbitmq cluster ready: $(rabbit_members 1 | tr '\n' ' ')"
}

rabbit_kill() { # N: SIGKILL, as a crash
  local n=$1 f=$HA/rabbit$1/rabbitmq.pid
  rabbit_running "$n" || { log "rabbitmq node $n is not running"; return 0; }
  kill -9 "$(cat "$f")" 2>/dev/null || true
  local end=$((SECONDS + 10))
  while kill -0 "$(cat "$f")" 2>/dev/null; do [ $SECONDS -lt $end ] || break; sleep 0.1; done
  rm -f "$f"
  log "rabbitmq node $n killed"
}

rabbit_stop() { # N: orderly
  local n=$1 f=$HA/rabbit$1/rabbitmq.pid
  rabbit_running "$n" || { rm -f "$f"; return 0; }
  local pid; pid=$(cat "$f")
  rmqctl "$n" stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  local end=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $end ] || { kill -9 "$pid" 2>/dev/null || true; break; }
    sleep 0.2
  done
  rm -f "$f"
  log "rabbitmq node $n stopped"
}

# ---------------------------------------------------------------- ZooKeeper
zk_running() { pid_alive "$HA/zk$1/zk.pid"; }
zk_cmd() { # N WORD: a four-letter command's answer
  (exec 3<>/dev/tcp/127.0.0.1/"$(zk_port "$1")"; printf '%s' "$2" >&3; timeout 2 cat <&3) 2>/dev/null || true
}
zk_mode() { zk_cmd "$1" srvr | sed -n 's/^Mode: //p'; }

zk_start() { # N
  local n=$1 d=$HA/zk$1
  if zk_running "$n"; then return 0; fi
  mkdir -p "$d/data" "$d/log"
  echo "$n" > "$d/data/myid"
  # A short tick lets sessions time out in seconds (as the single server);
  # initLimit/syncLimit in ticks: 4 s to sync a follower, 2 s of silence.
  {
    cat <<CONF
tickTime=200
initLimit=20
syncLimit=10
minSessionTimeout=1000
maxSessionTimeout=20000
dataDir=$d/data
clientPort=$(zk_port "$n")
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr,srvr
CONF
    local m
    for m in "${NODES[@]}"; do
      echo "server.$m=127.0.0.1:$(($(zk_port "$m") + 100)):$(($(zk_port "$m") + 200))"
    done
  } > "$d/zoo.cfg"
  local cp="/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
  for j in /usr/share/java/{slf4j-api,log4j-1.2,slf4j-log4j12,netty,jline,commons-cli,snappy-java,metrics-core,jetty9-server,audience-annotations,jackson-databind,jackson-core,jackson-annotations}.jar /usr/share/java/netty-*.jar /usr/share/java/zookeeper-jute.jar; do
    [ -f "$j" ] && cp="$cp:$j"
  done
  log "starting zookeeper server $n (127.0.0.1:$(zk_port "$n"))"
  setsid nohup java -Xmx192m -Dzookeeper.log.dir="$d/log" -Dzookeeper.root.logger=WARN,CONSOLE \
    -cp "$cp" org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" >"$d/log/console.log" 2>&1 9>&- &
  echo $! > "$d/zk.pid"
}

zk_await() { # N: serving (leader or follower)
  local n=$1 end=$((SECONDS + DEADLINE_SECS))
  until [ "$(zk_cmd "$n" ruok)" = imok ] && [ -n "$(zk_mode "$n")" ]; do
    [ $SECONDS -lt $end ] || { tail -20 "$HA/zk$n/log/console.log" >&2; die "zookeeper server $n did not serve within ${DEADLINE_SECS}s"; }
    zk_running "$n" || { tail -20 "$HA/zk$n/log/console.log" >&2; die "zookeeper server $n exited"; }
    sleep 0.2
  done
}

zk_leader() { local n; for n in "${NODES[@]}"; do [ "$(zk_mode "$n")" = leader ] && { echo "$n"; return 0; }; done; return 1; }

zk_kill() { # N
  local n=$1 f=$HA/zk$1/zk.pid
  zk_running "$n" || { log "zookeeper server $n is not running"; return 0; }
  local pid; pid=$(cat "$f")
  kill -9 "$pid" 2>/dev/null || true
  local end=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do [ $SECONDS -lt $end ] || break; sleep 0.1; done
  rm -f "$f"
  log "zookeeper server $n killed"
}

zk_stop() { # N
  local n=$1 f=$HA/zk$1/zk.pid
  zk_running "$n" || { rm -f "$f"; return 0; }
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  local end=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $end ] || { kill -9 "$pid" 2>/dev/null || true; break; }
    sleep 0.1
  done
  rm -f "$f"
  log "zookeeper server $n stopped"
}

zk_ensemble_up() {
  local n
  for n in "${NODES[@]}"; do zk_start "$n"; done
  for n in "${NODES[@]}"; do zk_await "$n"; done
  log "zookeeper ensemble ready (leader: server $(zk_leader || echo '?'))"
}

# ---------------------------------------------------------------- the whole
amqp_urls() { # comma-separated, one per node (vhost ${1:-/})
  local vhost=${1:-%2f} n out=()
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/$vhost?heartbeat=2"); done
  (IFS=,; echo "${out[*]}")
}
zk_addr() { local n out=(); for n in "${NODES[@]}"; do out+=("127.0.0.1:$(zk_port "$n")"); done; (IFS=,; echo "${out[*]}"); }

status() {
  local n members
  for n in "${NODES[@]}"; do
    if rabbit_answers "$n"; then
      members=$(rabbit_members "$n" | grep -c '^ha' || true)
      echo "rabbitmq$n  up    127.0.0.1:$(amqp_port "$n") $(node_name "$n") (pid $(cat "$HA/rabbit$n/rabbitmq.pid"); sees $members of 3 nodes running)"
    else echo "rabbitmq$n  down  127.0.0.1:$(amqp_port "$n")"; fi
  done
  for n in "${NODES[@]}"; do
    local mode; mode=$(zk_mode "$n")
    if zk_running "$n" && [ -n "$mode" ]; then echo "zookeeper$n up    127.0.0.1:$(zk_port "$n") $mode (pid $(cat "$HA/zk$n/zk.pid"))"
    elif zk_running "$n"; then echo "zookeeper$n up    127.0.0.1:$(zk_port "$n") not serving (no quorum?)"
    else echo "zookeeper$n down  127.0.0.1:$(zk_port "$n")"; fi
  done
}

# One ha.sh at a time (parallel test binaries all call `up`); the status and
# address commands take no lock.
case "${1:-}" in
  status) status; exit 0 ;;
  amqp-urls) amqp_urls "${2:-}"; exit 0 ;;
  zk-addr) zk_addr; exit 0 ;;
  zk-leader) zk_leader || die "no zookeeper server leads"; exit 0 ;;
esac
mkdir -p "$HA"
exec 9>"$HA/.ha.lock"
flock -w 300 9 || die "another scripts/ha.sh holds $HA/.ha.lock"

case "${1:-}" in
  up) scripts/infra.sh install; rabbit_cluster_up; zk_ensemble_up ;;
  down) for n in 3 2 1; do rabbit_stop "$n"; done; for n in "${NODES[@]}"; do zk_stop "$n"; done ;;
  kill-rabbit) check_n "${2:-}"; rabbit_kill "$2" ;;
  start-rabbit) check_n "${2:-}"; rabbit_start "$2"; rabbit_await "$2"; log "rabbitmq node $2 ready" ;;
  restart-rabbits) for n in "${NODES[@]}"; do rabbit_kill "$n"; done; rabbit_cluster_up ;;
  kill-zk) check_n "${2:-}"; zk_kill "$2" ;;
  start-zk) check_n "${2:-}"; zk_start "$2"; zk_await "$2"; log "zookeeper server $2 serving ($(zk_mode "$2"))" ;;
  vhost) [ -n "${2:-}" ] || die "usage: $0 vhost NAME"
         # On any node that answers (vhosts are cluster-wide).
         for n in "${NODES[@]}"; do rabbit_answers "$n" && break; done
         rmqctl "$n" add_vhost "$2" >/dev/null 2>&1 || true
         rmqctl "$n" set_permissions -p "$2" guest '.*' '.*' '.*' >/dev/null ;;
  *) echo "usage: $0 up|down|status|kill-rabbit N|start-rabbit N|restart-rabbits|kill-zk N|start-zk N|zk-leader|amqp-urls [VHOST]|zk-addr|vhost NAME" >&2; exit 2 ;;
esac
