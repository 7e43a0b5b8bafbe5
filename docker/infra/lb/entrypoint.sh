#!/bin/sh
# rideshare-lb: nginx with the ALB's path rules (alb-config/nginx.conf.template,
# baked in at /etc/rideshare/nginx.conf.template), rendered at start the way
# scripts/lb.sh renders it for `make up`: /api/v1/users and /api/v1/users/*
# go to USERS_UPSTREAM, everything else to RIDES_UPSTREAM (each a
# comma-separated list of host:port, one per instance).
set -eu
trim() { printf %s "$1" | tr -d '[:space:]'; }
# The upstream lines of a list, as scripts/lb.sh writes them.
servers() { printf %s "$1" | tr ',' '\n' | sed -e '/^$/d' -e "s/.*/server & max_fails=1 fail_timeout=${LB_FAIL_TIMEOUT:-3s};/" | tr '\n' ' '; }
users=$(trim "${USERS_UPSTREAM:-}"); users=$(servers "${users:-users-api:80}")
rides=$(trim "${RIDES_UPSTREAM:-}"); rides=$(servers "${rides:-rides-api:80}")
dir=/tmp/lb
mkdir -p "$dir/logs" "$dir/tmp"
sed -e 's|@USER_LINE@|user root;|' -e "s|@LB_DIR@|$dir|g" -e 's|@LB_LISTEN@|80|' \
    -e "s|@USERS_SERVERS@|$users|" -e "s|@RIDES_SERVERS@|$rides|" \
    /etc/rideshare/nginx.conf.template > "$dir/nginx.conf"
# The access log goes to the container's output as well as to the file the
# template names.
ln -sf /dev/stdout "$dir/logs/access.log"
ln -sf /dev/stderr "$dir/logs/error.log"
exec nginx -c "$dir/nginx.conf" -e /dev/stderr -g 'daemon off;'
