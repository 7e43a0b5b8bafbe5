#!/bin/sh
# rideshare-lb: nginx with the ALB's path rules (alb-config/nginx.conf.template,
# baked in at /etc/rideshare/nginx.conf.template), rendered at start the way
# scripts/lb.sh renders it for `make up`: /api/v1/users and /api/v1/users/*
# go to USERS_UPSTREAM, everything else to RIDES_UPSTREAM (host:port each).
set -eu
trim() { printf %s "$1" | tr -d '[:space:]'; }
users=$(trim "${USERS_UPSTREAM:-}"); users=${users:-users-api:80}
rides=$(trim "${RIDES_UPSTREAM:-}"); rides=${rides:-rides-api:80}
dir=/tmp/lb
mkdir -p "$dir/logs" "$dir/tmp"
sed -e 's|@USER_LINE@|user root;|' -e "s|@LB_DIR@|$dir|g" -e 's|@LB_LISTEN@|80|' \
    -e "s|@USERS_ADDR@|$users|" -e "s|@RIDES_ADDR@|$rides|" \
    /etc/rideshare/nginx.conf.template > "$dir/nginx.conf"
# The access log goes to the container's output as well as to the file the
# template names.
ln -sf /dev/stdout "$dir/logs/access.log"
ln -sf /dev/stderr "$dir/logs/error.log"
exec nginx -c "$dir/nginx.conf" -e /dev/stderr -g 'daemon off;'
