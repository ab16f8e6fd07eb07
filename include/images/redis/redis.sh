#!/bin/sh
# redis-server with its password (REDIS_PASSWORD) in a config file only this user reads (not on the command line,
# where `ps` would show it). A broker only: no persistence (queued Celery messages are re-sent by the scheduler).
set -eu
conf=$(mktemp)
chmod 0600 "$conf"
cat > "$conf" <<CONF
bind 0.0.0.0
port 6379
protected-mode no
requirepass ${REDIS_PASSWORD:?set REDIS_PASSWORD}
save ""
appendonly no
CONF
exec redis-server "$conf"
