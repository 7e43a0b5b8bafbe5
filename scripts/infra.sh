#!/usr/bin/env bash
# RabbitMQ and ZooKeeper for the local stack and the tests: installed from
# Debian's packages when missing, run as our own processes on loopback with
# their data under var/ (git-ignored), never as system services.
#
#   scripts/infra.sh install     install missing packages (rabbitmq, zookeeper, nginx)
#   scripts/infra.sh up          start both (idempotent) and wait until they answer
#   scripts/infra.sh down        stop both
#   scripts/infra.sh status      one line each
#   scripts/infra.sh vhost NAME  create a RabbitMQ vhost (tests isolate stacks this way)
#   scripts/infra.sh restart-rabbitmq | restart-zookeeper   (fault tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VAR=$(realpath -m "${VAR_DIR:-$ROOT/var}")
AMQP_PORT=${AMQP_PORT:-5672}
ZK_PORT=${ZK_PORT:-2181}
RMQ_DIR=$VAR/rabbitmq
ZK_DIR=$VAR/zookeeper
DEADLINE_SECS=${INFRA_DEADLINE_SECS:-90}

log() { printf '[infra] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

install() {
  local missing=()
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
  [ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} from Debian's packages"
  # Keep the packages' own services from starting: we run our own processes.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
  # Stop any service instance a package may have started anyway.
  $SUDO pkill -u rabbitmq beam.smp 2>/dev/null || true
  $SUDO pkill -u zookeeper -f QuorumPeerMain 2>/dev/null || true
}

# Environment shared by rabbitmq-server and rabbitmqctl (same node, same cookie).
rmq_env() {
  export HOME=$RMQ_DIR
  if [ "$AMQP_PORT" = 5672 ]; then export RABBITMQ_NODENAME=rideshare@localhost; else export RABBITMQ_NODENAME=rideshare$AMQP_PORT@localhost; fi
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$AMQP_PORT
  export RABBITMQ_DIST_PORT=${RABBITMQ_DIST_PORT:-$((AMQP_PORT + 20000))}
  export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
  export RABBITMQ_LOG_BASE=$RMQ_DIR/log
  export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
  export RABBITMQ_PID_FILE=$RMQ_DIR/rabbitmq.pid
  export ERL_EPMD_ADDRESS=127.0.0.1
}
rmqctl() { rmq_env; /usr/lib/rabbitmq/bin/rabbitmqctl -q "$@"; }

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

rabbit_running() { [ -f "$RMQ_DIR/rabbitmq.pid" ] && kill -0 "$(cat "$RMQ_DIR/rabbitmq.pid")" 2>/dev/null; }

rabbit_up() {
  if rabbit_running && port_open "$AMQP_PORT"; then return 0; fi
  mkdir -p "$RMQ_DIR/log" "$RMQ_DIR/mnesia"
  [ -f "$RMQ_DIR/.erlang.cookie" ] || { head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RMQ_DIR/.erlang.cookie"; chmod 400 "$RMQ_DIR/.erlang.cookie"; }
  cat > "$RMQ_DIR/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users = none
heartbeat = 5
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 200MB
log.console = false
log.file.level = warning
CONF
  # RABBITMQ_MAX_MESSAGE_SIZE (bytes; empty = RabbitMQ's default, 128 MiB): tests of large snapshots lower it.
  local max_msg=${RABBITMQ_MAX_MESSAGE_SIZE:-}; max_msg=${max_msg//[[:space:]]/}
  [ -z "$max_msg" ] || echo "max_message_size = $max_msg" >> "$RMQ_DIR/rabbitmq.conf"
  echo "[]." > "$RMQ_DIR/enabled_plugins"
  log "starting rabbitmq on 127.0.0.1:$AMQP_PORT"
  # 9>&-: the daemon must not inherit (and so hold) this script's lock.
  # From its own folder: the Erlang VM writes crash dumps (MnesiaCore.*) to its working directory.
  ( rmq_env; cd "$RMQ_DIR"; setsid nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$RMQ_DIR/log/console.log" 2>&1 9>&- & )
  local end=$((SECONDS + DEADLINE_SECS))
  until port_open "$AMQP_PORT" && rmqctl await_startup --timeout 5 >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { tail -20 "$RMQ_DIR/log/console.log" >&2; die "rabbitmq did not start within ${DEADLINE_SECS}s"; }
    sleep 0.5
  done
  log "rabbitmq ready"
}

rabbit_down() {
  rabbit_running || return 0
  local pid; pid=$(cat "$RMQ_DIR/rabbitmq.pid")
  rmqctl stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  local end=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $end ] || { kill -9 "$pid" 2>/dev/null || true; break; }
    sleep 0.2
  done
  rm -f "$RMQ_DIR/rabbitmq.pid"
  # Erlang's port mapper outlives the node; it refuses to exit while any
  # other node (another instance's) still uses it.
  ERL_EPMD_ADDRESS=127.0.0.1 epmd -kill >/dev/null 2>&1 || true
  log "rabbitmq stopped"
}

zk_running() { [ -f "$ZK_DIR/zk.pid" ] && kill -0 "$(cat "$ZK_DIR/zk.pid")" 2>/dev/null; }
zk_ok() { local r; r=$( (exec 3<>/dev/tcp/127.0.0.1/"$ZK_PORT"; printf ruok >&3; timeout 2 cat <&3) 2>/dev/null || true); [ "$r" = imok ]; }

zk_up() {
  if zk_running && zk_ok; then return 0; fi
  # Ours, answering, but its pid file lost (written over by an older script).
  local pid; pid=$(pgrep -f "ZooKeeperServerMain $ZK_DIR/zoo.cfg" | head -1 || true)
  if [ -n "$pid" ] && zk_ok; then echo "$pid" > "$ZK_DIR/zk.pid"; return 0; fi
  mkdir -p "$ZK_DIR/data" "$ZK_DIR/log"
  # A short tick lets sessions time out in seconds, so a dead worker is seen fast.
  cat > "$ZK_DIR/zoo.cfg" <<CONF
tickTime=200
minSessionTimeout=1000
maxSessionTimeout=20000
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr
CONF
  local cp="/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
  for j in /usr/share/java/{slf4j-api,log4j-1.2,slf4j-log4j12,netty,jline,commons-cli,snappy-java,metrics-core,jetty9-server,audience-annotations,jackson-databind,jackson-core,jackson-annotations}.jar /usr/share/java/netty-*.jar /usr/share/java/zookeeper-jute.jar; do
    [ -f "$j" ] && cp="$cp:$j"
  done
  log "starting zookeeper on 127.0.0.1:$ZK_PORT"
  setsid nohup java -Xmx256m -Dzookeeper.log.dir="$ZK_DIR/log" -Dzookeeper.root.logger=WARN,CONSOLE \
    -cp "$cp" org.apache.zookeeper.server.ZooKeeperServerMain "$ZK_DIR/zoo.cfg" >"$ZK_DIR/log/console.log" 2>&1 9>&- &
  echo $! > "$ZK_DIR/zk.pid"
  local end=$((SECONDS + DEADLINE_SECS))
  until zk_ok; do
    [ $SECONDS -lt $end ] || { tail -20 "$ZK_DIR/log/console.log" >&2; die "zookeeper did not start within ${DEADLINE_SECS}s"; }
    zk_running || { tail -20 "$ZK_DIR/log/console.log" >&2; die "zookeeper exited"; }
    sleep 0.2
  done
  log "zookeeper ready"
}

zk_down() {
  zk_running || return 0
  local pid; pid=$(cat "$ZK_DIR/zk.pid")
  kill "$pid" 2>/dev/null || true
  local end=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null; do
    [ $SECONDS -lt $end ] || { kill -9 "$pid" 2>/dev/null || true; break; }
    sleep 0.1
  done
  rm -f "$ZK_DIR/zk.pid"
  log "zookeeper stopped"
}

status() {
  if rabbit_running && port_open "$AMQP_PORT"; then echo "rabbitmq   up    127.0.0.1:$AMQP_PORT (pid $(cat "$RMQ_DIR/rabbitmq.pid"))"; else echo "rabbitmq   down"; fi
  if zk_running && zk_ok; then echo "zookeeper  up    127.0.0.1:$ZK_PORT (pid $(cat "$ZK_DIR/zk.pid"))"; else echo "zookeeper  down"; fi
}

# One infra.sh at a time per instance: parallel test binaries all call `up`.
mkdir -p "$VAR"
exec 9>"$VAR/.infra-$AMQP_PORT-$ZK_PORT.lock"
flock -w 300 9 || die "another scripts/infra.sh holds $VAR/.infra-$AMQP_PORT-$ZK_PORT.lock"

case "${1:-}" in
  install) install ;;
  up) install; rabbit_up; zk_up ;;
  down) rabbit_down; zk_down ;;
  status) status ;;
  vhost) [ -n "${2:-}" ] || die "usage: $0 vhost NAME"
         rmqctl add_vhost "$2" >/dev/null 2>&1 || true
         rmqctl set_permissions -p "$2" guest '.*' '.*' '.*' >/dev/null ;;
  close-connections) [ -n "${2:-}" ] || die "usage: $0 close-connections VHOST"
         rmqctl close_all_connections -p "$2" "closed by scripts/infra.sh" >/dev/null ;;
  restart-rabbitmq) rabbit_down; rabbit_up ;;
  restart-zookeeper) zk_down; zk_up ;;
  *) echo "usage: $0 install|up|down|status|vhost NAME|close-connections VHOST|restart-rabbitmq|restart-zookeeper" >&2; exit 2 ;;
esac
