#!/bin/sh
# dockerd in a (privileged) container: its API only on a unix socket in /run/docker-host (a volume shared with the
# services that drive it), group tfdeploy-docker (gid 50000), nothing on TCP.
set -eu
# cgroup v2: move this container's processes out of the root cgroup first, so that the engine may enable the
# controllers for its own containers (cgroup v1 needs nothing)
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 < /sys/fs/cgroup/cgroup.procs > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
  sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers > /sys/fs/cgroup/cgroup.subtree_control || :
fi
mkdir -p /run/docker-host
rm -f /run/docker-host/docker.sock /var/run/docker.pid
exec dockerd --host=unix:///run/docker-host/docker.sock --group=tfdeploy-docker --storage-driver=overlay2 \
  --data-root=/var/lib/docker "$@"
