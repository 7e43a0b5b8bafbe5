#!/bin/sh
# rideshare-rabbitmq: one RabbitMQ node whose only user comes from the
# environment (RABBITMQ_USER / RABBITMQ_PASS, both required; guest is never
# created). The node is rabbit@localhost whatever the container's hostname,
# so its data under /var/lib/rabbitmq (a volume) survives a re-created
# container. The user is created on the first start of an empty data
# directory only: changing the credentials later needs a fresh volume.
set -eu
die() { echo "rabbitmq-entrypoint: $*" >&2; exit 64; }
user=$(printf %s "${RABBITMQ_USER:-}" | tr -d '[:space:]')
pass=$(printf %s "${RABBITMQ_PASS:-}" | tr -d '[:space:]')
[ -n "$user" ] || die "RABBITMQ_USER is empty"
[ -n "$pass" ] || die "RABBITMQ_PASS is empty"
# Both go into an AMQP URL and rabbitmq.conf unescaped.
case "$user$pass" in *[!A-Za-z0-9._~-]*) die "RABBITMQ_USER and RABBITMQ_PASS may hold only letters, digits and . _ ~ -" ;; esac
[ "$user" = guest ] && die "RABBITMQ_USER=guest: pick another user name"
mkdir -p /etc/rabbitmq /var/lib/rabbitmq/mnesia
cat > /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.default = 5672
default_user = $user
default_pass = $pass
loopback_users = none
log.console = true
log.console.level = ${RABBITMQ_LOG_LEVEL:-warning}
log.file = false
CONF
# No plugins: the node answers AMQP only.
echo '[].' > /etc/rabbitmq/enabled_plugins
exec /usr/lib/rabbitmq/bin/rabbitmq-server
