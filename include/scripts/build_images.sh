#!/usr/bin/env bash
# Builds the project's images on the local engine. No registry is reachable here, so nothing is
# pulled: the base is a Debian rootfs made by debootstrap and imported; every other image builds on it.
# Each image carries a label with the hash of its build inputs and is rebuilt only when they change.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${TFDEPLOY_CACHE_DIR:-$HOME/.cache/tfdeploy}
DOCKER=${DOCKER:-docker}
log() { printf '[images] %s\n' "$*"; }

BASE=local/debian:bookworm-minbase
if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
  rootfs="$CACHE/rootfs/bookworm"
  if [ ! -f "$rootfs/.complete" ]; then
    log "debootstrap bookworm into $rootfs"
    rm -rf "$rootfs"; mkdir -p "$(dirname "$rootfs")"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    touch "$rootfs/.complete"
  fi
  log "importing $BASE"
  tar -C "$rootfs" --exclude=./.complete --exclude='./var/cache/apt/archives/*.deb' \
      --exclude='./var/lib/apt/lists/*' -c . | $DOCKER import - "$BASE" >/dev/null
fi

# build <tag> <dir> [extra path ...]: the context is <dir>, the extra paths, and the host CA bundle
# (HTTPS from builds passes an intercepting proxy).
build() {
  local tag=$1 dir=$2 key ctx parent
  shift 2
  parent=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' "$dir/Dockerfile" | head -n 1)
  key=$( (find "$dir" "$@" -type f -not -name '*.pyc' | sort | xargs sha256sum; $DOCKER image inspect -f '{{.Id}}' "$parent") \
         | sha256sum | cut -c1-16)
  if [ "$($DOCKER image inspect -f '{{index .Config.Labels "tfdeploy.inputs"}}' "$tag" 2>/dev/null)" = "$key" ]; then
    return 0
  fi
  log "building $tag"
  ctx=$(mktemp -d)
  cp -r "$dir/." "$ctx/"
  for extra in "$@"; do cp -r "$extra" "$ctx/"; done
  find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  $DOCKER build -q --network host --label "tfdeploy.inputs=$key" -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
}

build local/python:3.11-bookworm include/images/python-base
# The TF-Serving-compatible server (stands in for tensorflow/serving, which cannot be pulled here).
build "${SERVING_IMAGE_TAG:-local/tfserving-compat:latest}" include/images/tfserving-compat include/tfserving_compat constraints.txt
# The sandbox where model code runs (validation, .keras export, warmup): the server image's TensorFlow plus the
# sandbox package (include/tfdeploy_sandbox); SANDBOX_IMAGE names it for the pipeline.
build "${SANDBOX_IMAGE_TAG:-local/tfdeploy-sandbox:latest}" include/images/sandbox include/tfdeploy_sandbox

# The compose stack's images (docker-compose.yml, README "Topology: docker-compose"), only when asked:
# `build_images.sh compose` (make compose-up). Each is local/tfdeploy-<name>, from include/images/<name>.
if [ "${1:-}" = compose ]; then
  # Airflow: the project's requirements (pinned by constraints.txt) and its DAGs, plugins and include/
  build local/tfdeploy-airflow:latest include/images/airflow \
    requirements.txt requirements-nodeps.txt constraints.txt dags plugins include
  # HDFS: the Hadoop jars `make setup` fetched from Maven Central (that cache is the build context: no download)
  hadoop_lib="$CACHE/hadoop-$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' include/hadoop/pom.xml)/lib"
  if [ ! -f "$hadoop_lib/.complete" ]; then
    log "no Hadoop jars at $hadoop_lib: run make setup first"
    exit 1
  fi
  build local/tfdeploy-hadoop:latest include/images/hadoop "$hadoop_lib"
  # Debian's packages: the broker, the databases' server, the router, the monitoring, the serving host's engine
  for name in redis postgres haproxy prometheus alertmanager docker-host; do
    build "local/tfdeploy-$name:latest" "include/images/$name"
  done
fi
