#!/bin/sh
# rideshare-zookeeper: one standalone ZooKeeper server on :2181 with its data
# in /var/lib/zookeeper (a volume). A short tick (ZK_TICK_MS, default 200)
# lets sessions expire in seconds, so a dead worker is seen fast; the
# 4-letter word `ruok` is enabled for the health check.
set -eu
tick=$(printf %s "${ZK_TICK_MS:-}" | tr -d '[:space:]'); tick=${tick:-200}
case "$tick" in ''|*[!0-9]*) echo "zookeeper-entrypoint: ZK_TICK_MS=$tick is not a number" >&2; exit 64 ;; esac
mkdir -p /var/lib/zookeeper /tmp/zk
cat > /tmp/zk/zoo.cfg <<CONF
tickTime=$tick
minSessionTimeout=1000
maxSessionTimeout=20000
dataDir=/var/lib/zookeeper
clientPort=2181
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr
CONF
# Logs to the container's output.
cat > /tmp/zk/log4j.properties <<CONF
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n
# Not one line per health check (ruok).
log4j.logger.org.apache.zookeeper.server.NIOServerCnxn=WARN
CONF
cp="/tmp/zk:/usr/share/java/zookeeper.jar"
for j in /usr/share/java/slf4j-api.jar /usr/share/java/log4j-1.2.jar /usr/share/java/slf4j-log4j12.jar \
  /usr/share/java/netty*.jar /usr/share/java/jline.jar /usr/share/java/commons-cli.jar /usr/share/java/snappy-java.jar \
  /usr/share/java/metrics-core.jar /usr/share/java/jetty9-server.jar /usr/share/java/audience-annotations.jar \
  /usr/share/java/jackson-databind.jar /usr/share/java/jackson-core.jar /usr/share/java/jackson-annotations.jar \
  /usr/share/java/zookeeper-jute.jar; do
  [ -f "$j" ] && cp="$cp:$j"
done
exec java ${ZK_JAVA_OPTS:--Xmx256m} -Dlog4j.configuration=file:/tmp/zk/log4j.properties \
  -cp "$cp" org.apache.zookeeper.server.ZooKeeperServerMain /tmp/zk/zoo.cfg
