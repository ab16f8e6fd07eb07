#!/usr/bin/env bash
# One-shot, idempotent set-up of everything the project needs on a Debian machine.
# Fast when nothing changed: every slow step is keyed by a hash of its inputs and cached outside the
# clone ($TFDEPLOY_CACHE_DIR, default ~/.cache/tfdeploy; Maven's ~/.m2; Docker's own image store).
#   1. Debian packages (docker.io, debootstrap, haproxy (the router), prometheus and prometheus-alertmanager (the
#      monitoring), redis-server (Airflow's Celery broker), libkrb5-dev for the HDFS provider's kerberos extra,
#      postgresql, acl) and the unprivileged system user the stack's PostgreSQL runs as
#   2. the Python venv from requirements*.txt + constraints.txt, linked at .venv
#   3. Hadoop jars from Maven Central (include/hadoop/pom.xml)
#   4. the Docker engine (started if none answers) and the locally built images
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CACHE=${TFDEPLOY_CACHE_DIR:-$HOME/.cache/tfdeploy}
mkdir -p "$CACHE"
log() { printf '[setup] %s\n' "$*"; }
t0=$(date +%s)

# -- 1. Debian packages ------------------------------------------------------------------------------
# postgresql: only its binaries (/usr/lib/postgresql/<major>/bin) are used. The package may create Debian's
# default cluster (and start it where a service manager runs); nothing here uses that cluster: stack.py
# runs its own server from $TFDEPLOY_STATE_DIR/postgres on POSTGRES_PORT (5433). acl: setfacl, with which
# stack.py lets that server's user traverse a state dir's closed parent (e.g. a `mktemp -d` CI dir).
need=()
# prometheus, prometheus-alertmanager, redis-server: only their binaries are used (stack.py runs its own on 127.0.0.1,
# config and data in the state dir); the packaged daemons (Debian's config, :9090/:9093/:6379) must not run: see below.
# docker-compose: Debian's 1.29 runs docker-compose.yml (`make compose-up`; README "Topology: docker-compose").
for pkg in docker.io debootstrap libkrb5-dev postgresql acl chromium haproxy prometheus prometheus-alertmanager \
           redis-server docker-compose; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Where a service manager runs, installing prometheus/prometheus-alertmanager/redis-server starts Debian's daemons
  # (they would take the dev stack's ports, or run a second, unused broker): stop them and keep them from starting at
  # boot. Without one (no systemd, policy-rc.d) nothing started.
  for svc in prometheus prometheus-alertmanager redis-server; do
    [[ " ${need[*]} " == *" $svc "* ]] || continue
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
      $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
      $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
fi
if pgrep -u prometheus >/dev/null 2>&1; then
  log "warning: Debian's packaged prometheus/alertmanager daemon runs (user prometheus); the stack runs its own:" \
      "stop it (systemctl disable --now prometheus prometheus-alertmanager) if its ports clash"
fi
if pgrep -u redis -x redis-server >/dev/null 2>&1; then
  log "warning: Debian's packaged redis-server runs (user redis, :6379); the stack runs its own broker on REDIS_PORT:" \
      "stop it (systemctl disable --now redis-server) if nothing else uses it"
fi
# PostgreSQL refuses to run as root: stack.py runs initdb and the server as this system user.
PG_OS_USER=${POSTGRES_OS_USER:-tfdeploy-pg}
if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
  log "creating system user $PG_OS_USER (runs the stack's PostgreSQL)"
  $SUDO useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER"
fi

# -- 2. Python venv ----------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
venv_key=$( (cat requirements.txt requirements-nodeps.txt constraints.txt 2>/dev/null; $PYTHON --version) | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$venv_key"
if [ ! -f "$VENV/.complete" ]; then
  log "creating venv $VENV (first run takes a few minutes)"
  rm -rf "$VENV"
  $PYTHON -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  cons=(); [ -f constraints.txt ] && cons=(-c constraints.txt)
  "$VENV/bin/pip" install -q -r requirements.txt "${cons[@]}"
  "$VENV/bin/pip" install -q --no-deps -r requirements-nodeps.txt
  touch "$VENV/.complete"
fi
ln -sfn "$VENV" .venv
PY="$ROOT/.venv/bin/python"

# -- 3. Hadoop jars from Maven Central ---------------------------------------------------------------
hadoop_version=$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' include/hadoop/pom.xml)
HLIB="$CACHE/hadoop-$hadoop_version/lib"
pom_key=$(sha256sum include/hadoop/pom.xml | cut -c1-12)
if [ "$(cat "$HLIB/.complete" 2>/dev/null)" != "$pom_key" ]; then
  log "fetching Hadoop $hadoop_version jars from Maven Central into $HLIB"
  rm -rf "$HLIB"
  mvn -q -B -f include/hadoop/pom.xml dependency:copy-dependencies -DoutputDirectory="$HLIB"
  echo "$pom_key" > "$HLIB/.complete"
fi

# -- 4. Docker engine and images ---------------------------------------------------------------------
"$PY" include/scripts/stack.py up docker
"$ROOT/include/scripts/build_images.sh"

log "done in $(( $(date +%s) - t0 ))s"
