"""Start, stop and report the local stack: HDFS (NameNode + DataNode), dockerd, PostgreSQL, Redis (the Celery broker),
the router (HAProxy), Prometheus and Alertmanager, Airflow (CeleryExecutor: two Celery workers).

Every service binds 127.0.0.1, logs to ``$TFDEPLOY_STATE_DIR/logs/<name>.log``, records its PID in
``$TFDEPLOY_STATE_DIR/run/<name>.pid`` and is stopped by that PID (its whole process tree).
``up`` waits until each service is ready, so callers can use it straight away.

Usage: python include/scripts/stack.py {up,down,status,env} [service ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from tfdeploy.core.placement import replica_host  # noqa: E402
from tfdeploy.settings import (  # noqa: E402
    AIRFLOW_DB,
    AIRFLOW_DB_PASSWORD_SECRET,
    AIRFLOW_PASSWORD_SECRET,
    POSTGRES_PASSWORD_SECRET,
    PROJECT_ROOT,
    REDIS_PASSWORD_SECRET,
    REGISTRY_DB,
    REGISTRY_TEST_DB,
    STACK_PROFILES,
    WORKER_NAME_VAR,
    Settings,
    get_settings,
    second_docker_host_runs_here,
    settings_for,
    shared_between,
)

JAVA_OPENS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
]

# Airflow's processes, started in this order (`airflow <component>`, log and PID file airflow-<component>); the
# Celery workers are `airflow celery worker` processes (CELERY_WORKERS), each its own Celery node (celery_node).
CELERY_WORKERS = ("worker1", "worker2")
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", *CELERY_WORKERS)

# Processes that shut their own children down: `down` signals only the recorded PID, with this signal, then
# waits for the whole tree. PostgreSQL: SIGINT is "fast shutdown" (clients disconnected, checkpoint, exit);
# SIGTERM is "smart shutdown", which waits for every client to leave, and signalling the postmaster's
# children directly would look like a crash to it. Every other process gets SIGTERM, whole tree at once.
# The second Docker host's dockerd stops its containerd and containers itself on SIGTERM.
STOP_SIGNALS: dict[str, signal.Signals] = {"postgres": signal.SIGINT, "docker2": signal.SIGTERM}


class StackError(RuntimeError):
    """A service failed to start or to become ready; the message says which and where its log is."""


# ----------------------------------------------------------------------------- process helpers


def _pid_file(s: Settings, name: str) -> Path:
    return s.run_dir / f"{name}.pid"


def _log_file(s: Settings, name: str) -> Path:
    return s.logs_dir / f"{name}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def running_pid(s: Settings, name: str) -> int | None:
    path = _pid_file(s, name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _alive(pid) else None


def _spawn(s: Settings, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    log = open(_log_file(s, name), "ab")  # noqa: SIM115 - handed to the child
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(cwd or PROJECT_ROOT),
        start_new_session=True,
    )
    _pid_file(s, name).write_text(str(proc.pid))
    return proc.pid


def _descendants(pid: int) -> list[int]:
    """All descendants of pid (Airflow task processes start their own process groups)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def stop_service(s: Settings, name: str, timeout: float = 20.0) -> bool:
    """Stop a service and its process tree by PID (see STOP_SIGNALS), SIGKILL whatever is left after
    timeout. Returns True if something was stopped."""
    pid = running_pid(s, name)
    if pid is None:
        _pid_file(s, name).unlink(missing_ok=True)
        return False
    tree = [pid, *_descendants(pid)]
    own_signal = STOP_SIGNALS.get(name)
    for p in [pid] if own_signal else tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, own_signal or signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    for p in tree:
        if _alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    _pid_file(s, name).unlink(missing_ok=True)
    return True


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path | None, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            raise StackError(f"{what} exited during start-up; see {log}:\n{_tail(log)}")
        try:
            if check():
                return
        except StackError:  # the check knows waiting will not help
            raise
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.5)
    raise StackError(f"{what} was not ready within {timeout:.0f}s; see {log}:\n{_tail(log)}")


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _http_json(url: str, method: str = "GET", data: dict | None = None, headers: dict | None = None) -> object:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


def _port_owner(port: int) -> str | None:
    """Return a description of who listens on 127.0.0.1:port, or None if it is free."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return None
    return f"something already listens on 127.0.0.1:{port}"


def _require_free(s: Settings, name: str, port: int) -> None:
    owner = _port_owner(port)
    if owner:
        raise StackError(
            f"cannot start {name}: {owner}. Stop it (another checkout's `make down`?) "
            f"or choose another port in the environment."
        )


# ----------------------------------------------------------------------------- HDFS

NAMENODE_MAIN = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_MAIN = "org.apache.hadoop.hdfs.server.datanode.DataNode"
# Every block on two DataNodes (README "HDFS"): one may die without losing or hiding a version.
HDFS_REPLICATION = 2
# The DataNodes' process names (PID file, log, conf dir); the first keeps a one-DataNode state dir's name.
DATANODE_NAMES = ("hdfs-datanode", "hdfs-datanode-2")


@dataclass(frozen=True)
class DataNode:
    """One DataNode of the local HDFS: its process name, data directory and ports (all on 127.0.0.1)."""

    name: str
    data_dir: Path
    port: int
    http_port: int
    ipc_port: int

    @property
    def xfer_address(self) -> str:
        """How the NameNode names it (``dfs.datanode.address``; the key of the NameNode's ``LiveNodes``)."""
        return f"127.0.0.1:{self.port}"


def datanodes(s: Settings) -> list[DataNode]:
    """The stack's DataNodes; the first keeps the data dir of a state dir from before (``hdfs/data``)."""
    return [
        DataNode(DATANODE_NAMES[0], s.hdfs_home / "data", s.datanode_port, s.datanode_http_port, s.datanode_ipc_port),
        DataNode(
            DATANODE_NAMES[1], s.hdfs_home / "data-2", s.datanode2_port, s.datanode2_http_port, s.datanode2_ipc_port
        ),
    ]


def datanode(s: Settings, name: str) -> DataNode:
    found = {dn.name: dn for dn in datanodes(s)}
    if name not in found:
        raise ValueError(f"no DataNode named {name!r}; one of: {', '.join(found)}")
    return found[name]


def hdfs_superuser() -> str:
    """HDFS' superuser: the user the NameNode runs as (whoever runs stack.py); simple auth trusts the name."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _xml(props: dict[str, str]) -> str:
    rows = "\n".join(f"  <property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{rows}\n</configuration>\n'


def hdfs_site(s: Settings) -> dict[str, str]:
    """hdfs-site.xml of the NameNode and of clients (each DataNode adds its own directory and ports)."""
    return {
        "dfs.namenode.name.dir": f"file://{s.hdfs_home / 'name'}",
        "dfs.namenode.rpc-address": f"127.0.0.1:{s.namenode_rpc_port}",
        "dfs.namenode.http-address": f"127.0.0.1:{s.webhdfs_port}",
        "dfs.namenode.safemode.extension": "0",
        "dfs.namenode.datanode.registration.ip-hostname-check": "false",
        "dfs.webhdfs.enabled": "true",
        "dfs.datanode.hostname": "127.0.0.1",
        # Two replicas of every block; a write needs one (replication.min) to complete, so it survives a dead
        # DataNode, and the NameNode re-replicates the block once a second DataNode is live again.
        "dfs.replication": str(HDFS_REPLICATION),
        "dfs.namenode.replication.min": "1",
        # The DataNode that serves a WebHDFS upload writes the block pipeline with its own DFSClient, which
        # reads these. When a DataNode of the pipeline dies the client drops it and goes on with the rest; it
        # never asks for a replacement (there is no spare among two DataNodes: Hadoop's DEFAULT policy asks only
        # from replication 3, ALWAYS would fail the write) and, should a replacement ever be asked for and
        # fail, best-effort keeps writing rather than failing the upload.
        "dfs.client.block.write.replace-datanode-on-failure.enable": "true",
        "dfs.client.block.write.replace-datanode-on-failure.policy": "NEVER",
        "dfs.client.block.write.replace-datanode-on-failure.best-effort": "true",
        # Heartbeats every second; a DataNode silent for 3 s is stale: the NameNode stops sending writes and
        # reads (WebHDFS redirects, pipelines) to it then, long before it declares it dead
        # (2 x recheck-interval + 10 x heartbeat = 30 s).
        "dfs.heartbeat.interval": "1",
        "dfs.namenode.heartbeat.recheck-interval": "10000",
        "dfs.namenode.stale.datanode.interval": "3000",
        "dfs.namenode.avoid.write.stale.datanode": "true",
        "dfs.namenode.avoid.read.stale.datanode": "true",
        # A copy the NameNode ordered to a DataNode that had just died (before it was stale) is ordered again
        # after this many seconds (default 300): so a restarted DataNode gets its second replicas within ~30 s.
        "dfs.namenode.reconstruction.pending.timeout-sec": "15",
    }


def _datanode_site(s: Settings, dn: DataNode) -> dict[str, str]:
    return {
        **hdfs_site(s),
        "dfs.datanode.data.dir": f"file://{dn.data_dir}",
        "dfs.datanode.address": dn.xfer_address,
        "dfs.datanode.http.address": f"127.0.0.1:{dn.http_port}",
        "dfs.datanode.ipc.address": f"127.0.0.1:{dn.ipc_port}",
    }


def _write_conf_dir(conf: Path, core: dict[str, str], hdfs: dict[str, str]) -> Path:
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "core-site.xml").write_text(_xml(core))
    (conf / "hdfs-site.xml").write_text(_xml(hdfs))
    (conf / "log4j.properties").write_text(
        "log4j.rootLogger=INFO,console\n"
        "log4j.appender.console=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n\n"
    )
    return conf


def write_hadoop_conf(s: Settings) -> Path:
    """The NameNode's (and clients') conf dir, ``hdfs/conf``; each DataNode's is ``hdfs/conf/<its name>``."""
    conf = s.hdfs_home / "conf"
    core = {
        "fs.defaultFS": f"hdfs://127.0.0.1:{s.namenode_rpc_port}",
        "hadoop.security.authentication": "simple",
        "hadoop.tmp.dir": str(s.hdfs_home / "tmp"),
        "hadoop.http.staticuser.user": s.hdfs_user,
    }
    _write_conf_dir(conf, core, hdfs_site(s))
    for dn in datanodes(s):
        _write_conf_dir(conf / dn.name, core, _datanode_site(s, dn))
    return conf


def _conf_digest(conf: Path) -> str:
    return hashlib.sha256(b"".join((conf / f).read_bytes() for f in ("core-site.xml", "hdfs-site.xml"))).hexdigest()


def _java_cmd(s: Settings, conf: Path, main: str, *args: str) -> list[str]:
    if not s.hadoop_lib.is_dir():
        raise StackError(f"Hadoop jars missing at {s.hadoop_lib}: run `make setup` first")
    return [
        "java",
        "-Xmx512m",
        *JAVA_OPENS,
        f"-Dhadoop.log.dir={s.logs_dir}",
        f"-Dhadoop.home.dir={s.hdfs_home}",
        "-Dlog4j.configuration=file:" + str(conf / "log4j.properties"),
        "-cp",
        f"{conf}:{s.hadoop_lib}/*",
        main,
        *args,
    ]


def _hadoop_daemon(s: Settings, name: str, conf: Path) -> int | None:
    """The running daemon's PID, or None if it is not running. One started with other settings than ``conf``
    holds now (or by a stack.py from before that recorded none) is stopped first, so it gets them."""
    pid = running_pid(s, name)
    record = s.run_dir / f"{name}.conf-sha256"
    if pid is not None and (not record.exists() or record.read_text() != _conf_digest(conf)):
        print(f"[stack] {name}: its settings changed; restarting it", file=sys.stderr)
        stop_service(s, name)
        pid = None
    return pid


def _spawn_hadoop(s: Settings, name: str, conf: Path, main: str) -> int:
    pid = _spawn(s, name, _java_cmd(s, conf, main), {**os.environ, "HADOOP_CONF_DIR": str(conf)})
    (s.run_dir / f"{name}.conf-sha256").write_text(_conf_digest(conf))
    return pid


def _jmx(url: str, query: str) -> dict:
    data = _http_json(f"{url}/jmx?qry={query}")
    assert isinstance(data, dict) and data.get("beans"), f"no {query} bean at {url}"
    return data["beans"][0]


def _namenode_state(s: Settings) -> dict:
    return _jmx(s.webhdfs_url, "Hadoop:service=NameNode,name=FSNamesystemState")


def namenode_live_nodes(s: Settings) -> dict[str, dict]:
    """The NameNode's live DataNodes by transfer address (``127.0.0.1:<port>``), each with ``lastContact`` (s)."""
    live = json.loads(_jmx(s.webhdfs_url, "Hadoop:service=NameNode,name=NameNodeInfo")["LiveNodes"])
    return {node["xferaddr"]: node for node in live.values()}


def datanode_serving(s: Settings, dn: DataNode) -> bool:
    """The DataNode process answers, has registered with the NameNode and heartbeats: the DataNode itself
    says so (so a killed one's entry, live at the NameNode for 30 s, does not count), and the NameNode
    heard from it within 3 s."""
    info = _jmx(f"http://127.0.0.1:{dn.http_port}", "Hadoop:service=DataNode,name=DataNodeInfo")
    actors = json.loads(info.get("BPServiceActorInfo") or "[]")
    if not any(a.get("ActorState") == "RUNNING" and int(a.get("LastHeartbeat", 99)) <= 3 for a in actors):
        return False
    node = namenode_live_nodes(s).get(dn.xfer_address)
    return node is not None and int(node.get("lastContact", 99)) <= 3


def hdfs_fsck(s: Settings, path: str = "/", *, blocks: bool = False) -> str:
    """The NameNode's fsck report of ``path`` (its ``/fsck`` servlet, as the superuser): ends with "The
    filesystem under path '<path>' is HEALTHY" (or CORRUPT); ``blocks`` lists each file's blocks with their
    live replicas (``Live_repl=2``) and DataNodes."""
    query = urllib.parse.urlencode(
        {"ugi": hdfs_superuser(), "path": path, **({"files": 1, "blocks": 1, "locations": 1} if blocks else {})}
    )
    with urllib.request.urlopen(f"{s.webhdfs_url}/fsck?{query}", timeout=60) as resp:
        return resp.read().decode()


def _webhdfs(s: Settings, method: str, path: str, op: str, user: str, **params: str) -> urllib.request.Request:
    query = "&".join([f"op={op}", f"user.name={user}", *(f"{k}={v}" for k, v in params.items())])
    return urllib.request.Request(f"{s.webhdfs_url}/webhdfs/v1{path}?{query}", method=method)


def _hdfs_prove_write(s: Settings) -> bool:
    """A tiny CREATE (following the DataNode redirect) + DELETE proves the redirect reaches 127.0.0.1."""
    path = "/tmp/.stack-ready"
    req = _webhdfs(s, "PUT", path, "CREATE", "root", overwrite="true")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise StackError("WebHDFS CREATE did not redirect to a DataNode")
    except urllib.error.HTTPError as exc:
        if exc.code != 307:
            raise
        location = exc.headers["Location"]
    put = urllib.request.Request(location, data=b"ok", method="PUT")
    with urllib.request.urlopen(put, timeout=10) as resp:
        if resp.status != 201:
            return False
    urllib.request.urlopen(_webhdfs(s, "DELETE", path, "DELETE", "root"), timeout=5)
    return True


def _hdfs_bootstrap_dirs(s: Settings) -> None:
    """Directories users need, owned by the pipeline's HDFS user (permissions stay on, as in production)."""
    for path, owner, perm in (
        ("/tmp", "root", "1777"),
        (f"/user/{s.hdfs_user}", s.hdfs_user, "755"),
        ("/models", s.hdfs_user, "755"),
        ("/diagnostics", s.hdfs_user, "755"),  # diagnosis bundles (plugins/tfdeploy/services/diagnosis.py)
    ):
        urllib.request.urlopen(_webhdfs(s, "PUT", path, "MKDIRS", "root"), timeout=5)
        urllib.request.urlopen(_webhdfs(s, "PUT", path, "SETOWNER", "root", owner=owner), timeout=5)
        urllib.request.urlopen(_webhdfs(s, "PUT", path, "SETPERMISSION", "root", permission=perm), timeout=5)


def _hdfs_set_replication(s: Settings, conf: Path) -> None:
    """Files written before the stack had HDFS_REPLICATION DataNodes keep the replication they were written
    with: raise it once (`hdfs dfs -setrep -R`, Hadoop's own shell); the NameNode then copies their blocks to
    the new DataNode in the background. ``hdfs/replication`` records that it was done."""
    marker = s.hdfs_home / "replication"
    if marker.exists() and marker.read_text().strip() == str(HDFS_REPLICATION):
        return
    log = _log_file(s, "hdfs-setrep")
    cmd = _java_cmd(s, conf, "org.apache.hadoop.fs.FsShell", "-setrep", "-R", str(HDFS_REPLICATION), "/")
    env = {**os.environ, "HADOOP_CONF_DIR": str(conf), "HADOOP_USER_NAME": hdfs_superuser()}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise StackError(f"raising the replication of existing files to {HDFS_REPLICATION} failed; see {log}")
    marker.write_text(f"{HDFS_REPLICATION}\n")


def up_datanode(s: Settings, name: str, timeout: float = 120) -> int:
    """Start one DataNode (``hdfs-datanode``, ``hdfs-datanode-2``) unless it runs, and wait until it serves:
    registered with the NameNode and heartbeating. Returns its PID. Tests restart a DataNode they killed with it."""
    dn = datanode(s, name)
    conf = write_hadoop_conf(s) / dn.name
    pid = _hadoop_daemon(s, dn.name, conf)
    if pid is None:
        for port in (dn.port, dn.http_port, dn.ipc_port):
            _require_free(s, f"the DataNode {dn.name}", port)
        pid = _spawn_hadoop(s, dn.name, conf, DATANODE_MAIN)
    _wait(f"HDFS DataNode {dn.name}", lambda: datanode_serving(s, dn), timeout, _log_file(s, dn.name), pid)
    return pid


def up_hdfs(s: Settings) -> None:
    conf = write_hadoop_conf(s)
    nn_pid = _hadoop_daemon(s, "hdfs-namenode", conf)
    fresh = not (s.hdfs_home / "name" / "current" / "VERSION").exists()
    if nn_pid is None:
        _require_free(s, "the NameNode", s.webhdfs_port)
        _require_free(s, "the NameNode", s.namenode_rpc_port)
        if fresh:
            fmt = subprocess.run(
                _java_cmd(s, conf, NAMENODE_MAIN, "-format", "-nonInteractive", "-force"),
                env={**os.environ, "HADOOP_CONF_DIR": str(conf)},
                capture_output=True,
                text=True,
            )
            _log_file(s, "hdfs-format").parent.mkdir(parents=True, exist_ok=True)
            _log_file(s, "hdfs-format").write_text(fmt.stdout + fmt.stderr)
            if fmt.returncode != 0:
                raise StackError(f"NameNode format failed; see {_log_file(s, 'hdfs-format')}")
            (s.hdfs_home / "replication").write_text(f"{HDFS_REPLICATION}\n")  # no file has another
        nn_pid = _spawn_hadoop(s, "hdfs-namenode", conf, NAMENODE_MAIN)
    _wait("HDFS NameNode", lambda: bool(_namenode_state(s)), 90, _log_file(s, "hdfs-namenode"), nn_pid)
    for dn in datanodes(s):  # started together, then waited for
        if _hadoop_daemon(s, dn.name, conf / dn.name) is None:
            for port in (dn.port, dn.http_port, dn.ipc_port):
                _require_free(s, f"the DataNode {dn.name}", port)
            _spawn_hadoop(s, dn.name, conf / dn.name, DATANODE_MAIN)
    for dn in datanodes(s):
        up_datanode(s, dn.name)
    count = len(datanodes(s))

    def ready() -> bool:
        st = _namenode_state(s)
        return st.get("FSState") == "Operational" and st.get("NumLiveDataNodes", 0) >= count

    _wait(f"HDFS (out of safe mode, {count} live DataNodes)", ready, 120, _log_file(s, "hdfs-namenode"))
    _wait(
        "WebHDFS write through the DataNode redirect", lambda: _hdfs_prove_write(s), 60, _log_file(s, "hdfs-datanode")
    )
    _hdfs_bootstrap_dirs(s)
    _hdfs_set_replication(s, conf)


def status_hdfs(s: Settings) -> str:
    try:
        st = _namenode_state(s)
        fs = _jmx(s.webhdfs_url, "Hadoop:service=NameNode,name=FSNamesystem")
        return (
            f"FSState={st.get('FSState')} live DataNodes={st.get('NumLiveDataNodes')}/{len(datanodes(s))}, blocks "
            f"under-replicated={fs.get('UnderReplicatedBlocks')} corrupt={fs.get('CorruptBlocks')} "
            f"missing={fs.get('MissingBlocks')} ({s.webhdfs_url})"
        )
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {s.webhdfs_url} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- Docker


def _docker_ping(s: Settings) -> bool:
    import docker  # from the venv

    client = docker.DockerClient(base_url=s.docker_host, timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def up_docker(s: Settings) -> None:
    try:
        if _docker_ping(s):
            return  # an engine already answers (ours or the machine's): use it
    except Exception:  # noqa: BLE001
        pass
    if not s.docker_host.startswith("unix://"):
        raise StackError(f"no Docker engine answers at DOCKER_HOST={s.docker_host}; start it there")
    if shutil.which("dockerd") is None:
        raise StackError("dockerd is not installed: run `make setup` (installs Debian's docker.io)")
    pid = running_pid(s, "dockerd")
    if pid is None:
        sock = s.docker_host.removeprefix("unix://")
        stale = Path("/var/run/docker.pid")
        if stale.exists() and not _alive(int(stale.read_text().strip() or 0)):
            stale.unlink()
        pid = _spawn(s, "dockerd", ["dockerd", f"--host=unix://{sock}", "--storage-driver=overlay2"], dict(os.environ))
    _wait("dockerd", lambda: _docker_ping(s), 60, _log_file(s, "dockerd"), pid)


# Labels of the serving containers the pipeline starts (tfdeploy/hooks/serving_host.py LABEL_MANAGED,
# LABEL_MODEL_ROOT): `down` removes this stack's, Prometheus scrapes this stack's.
SERVING_LABEL_MANAGED = "tfdeploy.serving.managed"
SERVING_LABEL_MODEL_ROOT = "tfdeploy.serving.model-root"


def owns_model_root(s: Settings, root: str) -> bool:
    """Whether a serving container's model-root label lies under this stack's state directory. Compared
    path component by path component, so `.state` does not take `.state-test/...` (the test stack's, a
    sibling) nor `.state2/...`; a relative or empty label is nobody's."""
    if not root or not os.path.isabs(root):
        return False
    state = os.path.normpath(str(s.state_dir))
    return os.path.normpath(root).startswith(state.rstrip(os.sep) + os.sep)


def stop_serving_containers(s: Settings, *, second_host: bool = False) -> list[str]:
    """Remove the TF Serving containers the pipeline started for this stack (labelled with a model root
    under our state directory) on the first engine (or on docker2: ``second_host``); the other stack's (dev or
    test), other checkouts' and anything else are left alone."""
    try:
        import docker

        client = docker2_client(s) if second_host else docker.DockerClient(base_url=s.docker_host, timeout=10)
        client.ping()
    except Exception:  # noqa: BLE001 - no engine, no containers
        return []
    removed = []
    try:
        # servers, and any staging helper or config lock a killed task left (all carry the model-root label)
        for container in client.containers.list(all=True, filters={"label": SERVING_LABEL_MODEL_ROOT}):
            if owns_model_root(s, container.labels.get(SERVING_LABEL_MODEL_ROOT, "")):
                container.remove(force=True)
                removed.append(container.name)
    finally:
        client.close()
    return removed


def _other_stacks(s: Settings) -> list[Settings]:
    """The other stack profiles of this checkout that have state of their own (dev for test, test for dev)."""
    others = [settings_for(name) for name in STACK_PROFILES if name != s.stack]
    return [o for o in others if o.state_dir != s.state_dir]


def down_docker(s: Settings) -> None:
    """Stop the dockerd a stack of this checkout started, once no stack of this checkout uses it: the engine
    is shared, so taking the test stack down leaves it to the dev stack, and whichever goes down last stops it."""
    others = _other_stacks(s)
    users = [
        o.stack
        for o in others
        if any(running_pid(o, proc) for _, _, procs in SERVICES.values() for proc in procs if proc != "dockerd")
    ]
    owners = [x for x in (s, *others) if running_pid(x, "dockerd")]
    if users and owners:
        print(f"[stack] dockerd left running: the {', '.join(users)} stack still uses it")
        return
    for owner in owners:
        if stop_service(owner, "dockerd"):
            print("[stack] stopped dockerd" + ("" if owner is s else f" (started by the {owner.stack} stack)"))
    if not owners:
        _pid_file(s, "dockerd").unlink(missing_ok=True)


def status_docker(s: Settings) -> str:
    try:
        _docker_ping(s)
        if running_pid(s, "dockerd"):
            owner = "started by this stack"
        elif any(running_pid(other, "dockerd") for other in _other_stacks(s)):
            owner = "started by this checkout's other stack"
        else:
            owner = "the machine's own"
        return f"answers at {s.docker_host} ({owner})"
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {s.docker_host} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- the second Docker host (docker2)
#
# A second dockerd on this machine, in a network namespace of its own (`ip netns`), with its own data-root,
# exec-root, pidfile, bridge address and image store. The namespace reaches the machine only through a veth pair on
# DOCKER2_SUBNET (a /30: this machine .1, the namespace .2) and has no default route, so nothing but this machine
# can hold a connection with it. dockerd listens only on the namespace's address, with TLS and client certificates
# (a CA of this stack, generated into secrets/docker2: a Docker API socket is root on its host for whoever
# connects, so the client key is what a worker must hold); the servers it runs publish their ports on that address
# too, where the router and the workers reach them. Images cannot be pulled: `up` loads the serving images into it
# from the first engine (`docker save | docker load`, through the API), when their ids differ.

DOCKER2 = "docker2"  # the service, and its process's name (PID file, log)
# The bridge of the namespace's engine: its own subnet, apart from the first engine's docker0 (172.17.0.0/16).
DOCKER2_BIP = {"dev": "172.31.217.1/24", "test": "172.31.218.1/24"}
DOCKER2_TLS_FILES = ("ca.pem", "cert.pem", "key.pem")  # what a client needs (DOCKER_CERT_PATH's names)


def docker2_veth(s: Settings) -> tuple[str, str]:
    """The veth pair's names: (this machine's end, the namespace's end)."""
    return f"{s.docker2_netns}-h", f"{s.docker2_netns}-n"


def serving_host_addresses(s: Settings) -> list[str]:
    """Where each Docker host of the `local` target publishes its servers' ports: this machine's loopback, then the
    second host's namespace address (SERVING_HOSTS of them). Replica i runs on host i % len (core.placement)."""
    return ["127.0.0.1", s.docker2_address][: s.serving_hosts]


def docker2_enabled(s: Settings) -> bool:
    """docker2 is part of the stack where it can run: as root (network namespaces, a dockerd of our own)."""
    return second_docker_host_runs_here()


def serving_host_connections(s: Settings) -> dict[str, str]:
    """The `local` target's Docker hosts as Airflow Connections (services/targets.py names them): the first engine,
    and (where docker2 runs) the second, over TLS with this stack's client certificate."""
    conns = {
        "AIRFLOW_CONN_SERVING_HOST_LOCAL": json.dumps(
            {
                "conn_type": "tfdeploy_serving_host",
                "host": s.docker_host,
                "extra": {"tls_verify": False, "publish_address": "127.0.0.1"},
            }
        )
    }
    if docker2_enabled(s) or s.serving_hosts > 1:
        tls = s.docker2_tls_dir
        conns["AIRFLOW_CONN_SERVING_HOST_LOCAL_2"] = json.dumps(
            {
                "conn_type": "tfdeploy_serving_host",
                "host": s.docker2_host,
                "extra": {
                    "tls_verify": True,
                    "tls_ca_cert": str(tls / "ca.pem"),
                    "tls_client_cert": str(tls / "cert.pem"),
                    "tls_client_key": str(tls / "key.pem"),
                    "publish_address": s.docker2_address,
                },
            }
        )
    return conns


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise StackError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def docker2_network_up(s: Settings) -> None:
    """The namespace, the veth pair and their addresses (idempotent); no default route in the namespace."""
    ns, (host_if, ns_if) = s.docker2_netns, docker2_veth(s)
    prefix = s.docker2_subnet.rsplit("/", 1)[1]
    if ns not in _ip("netns", "list").stdout.split():
        _ip("netns", "add", ns)
    if _ip("link", "show", host_if, check=False).returncode != 0:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
    _ip("addr", "replace", f"{s.docker2_gateway}/{prefix}", "dev", host_if)
    _ip("link", "set", host_if, "up")
    _ip("-n", ns, "addr", "replace", f"{s.docker2_address}/{prefix}", "dev", ns_if)
    _ip("-n", ns, "link", "set", ns_if, "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    if "default" in _ip("-n", ns, "route", "show").stdout:
        raise StackError(
            f"namespace {ns} has a default route: remove it (nothing beyond {s.docker2_subnet} may reach it)"
        )
    _docker2_netns_marker(s).parent.mkdir(parents=True, exist_ok=True)
    _docker2_netns_marker(s).write_text(ns + "\n")


def _docker2_netns_marker(s: Settings) -> Path:
    """Written when this state dir's stack set the namespace up: `down` deletes only a namespace it set up (another
    checkout's stack of the same profile has the same namespace name)."""
    return s.state_dir / DOCKER2 / "netns"


def docker2_network_down(s: Settings) -> None:
    """Delete the namespace this stack set up (its end of the veth pair goes with it, and so does this machine's)."""
    marker = _docker2_netns_marker(s)
    if not marker.exists():
        return
    if s.docker2_netns in _ip("netns", "list", check=False).stdout.split():
        _ip("netns", "delete", s.docker2_netns)
    marker.unlink()


def _docker2_certificates(s: Settings) -> Path:
    """This stack's CA, the engine's server certificate (for its namespace address) and the client certificate, in
    secrets/docker2 (0700; keys 0600); made once, the server's again when the address changes. Returns the dir."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls = s.docker2_tls_dir
    tls.mkdir(parents=True, exist_ok=True)
    tls.chmod(0o700)
    now = datetime.datetime.now(datetime.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def load_key(name: str) -> Any:
        return serialization.load_pem_private_key((tls / name).read_bytes(), password=None)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, ca_key: Any, **kind: Any
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        )
        if "ip" in kind:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(kind["ip"]))]), critical=False
            )
        if "usage" in kind:
            builder = builder.add_extension(x509.ExtendedKeyUsage([kind["usage"]]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    if not (tls / "ca.pem").exists() or not (tls / "ca-key.pem").exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        write_private(tls / "ca-key.pem", pem_key(ca_key))
        write_private(tls / "ca.pem", pem(issue(f"tfdeploy docker2 CA ({s.stack})", ca_key, None, ca_key)))
        for name in ("server-cert.pem", "cert.pem"):
            (tls / name).unlink(missing_ok=True)  # issued by a CA that is gone
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    ca_key = load_key("ca-key.pem")
    server = tls / "server-cert.pem"
    wanted_ip = ipaddress.ip_address(s.docker2_address)
    if server.exists():
        sans = x509.load_pem_x509_certificate(server.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        if wanted_ip not in sans.value.get_values_for_type(x509.IPAddress):
            server.unlink()
    if not server.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(tls / "server-key.pem", pem_key(key))
        cert = issue(s.docker2_address, key, ca, ca_key, ip=s.docker2_address, usage=ExtendedKeyUsageOID.SERVER_AUTH)
        write_private(server, pem(cert))
    if not (tls / "cert.pem").exists() or not (tls / "key.pem").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(tls / "key.pem", pem_key(key))
        cert = issue(f"tfdeploy worker ({s.stack})", key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        write_private(tls / "cert.pem", pem(cert))
    return tls


def docker2_client(s: Settings, timeout: int = 10) -> Any:  # a docker.DockerClient
    """A client of the second engine, with this stack's client certificate."""
    from docker.tls import TLSConfig

    from tfdeploy.docker_engine import docker_client

    ca, cert, key = (str(s.docker2_tls_dir / name) for name in DOCKER2_TLS_FILES)
    tls = TLSConfig(client_cert=(cert, key), ca_cert=ca, verify=ca)
    return docker_client(s.docker2_host, tls=tls, timeout=timeout)


def _docker2_ping(s: Settings) -> bool:
    client = docker2_client(s, timeout=5)
    try:
        return bool(client.ping())
    finally:
        client.close()


def _docker2_exec_root(s: Settings) -> Path:
    """The engine's exec-root: in the state dir, unless that path is too long for the unix sockets under it
    (containerd's, 108 bytes at most), then under /run, named by a hash of the state dir."""
    path = s.state_dir / DOCKER2 / "exec"
    if len(str(path)) <= 60:
        return path
    return Path("/run") / f"tfdeploy-docker2-{hashlib.sha256(str(s.state_dir).encode()).hexdigest()[:10]}"


def docker2_command(s: Settings) -> list[str]:
    """dockerd in the namespace (nsenter keeps this machine's mounts and cgroups; only the network differs)."""
    home = s.state_dir / DOCKER2
    tls = s.docker2_tls_dir
    return [
        "nsenter",
        f"--net=/run/netns/{s.docker2_netns}",
        "--",
        "dockerd",
        f"--config-file={home / 'daemon.json'}",  # not the machine's /etc/docker/daemon.json
        f"--host=tcp://{s.docker2_address}:{s.docker2_port}",
        "--tlsverify",
        f"--tlscacert={tls / 'ca.pem'}",
        f"--tlscert={tls / 'server-cert.pem'}",
        f"--tlskey={tls / 'server-key.pem'}",
        f"--data-root={home / 'data'}",
        f"--exec-root={_docker2_exec_root(s)}",
        f"--pidfile={home / 'dockerd.pid'}",
        f"--bip={DOCKER2_BIP.get(s.stack, DOCKER2_BIP['dev'])}",
        f"--ip={s.docker2_address}",
        f"--cgroup-parent=/tfdeploy-docker2-{s.stack}",
        "--storage-driver=overlay2",
    ]


def _listens(address: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def up_docker2(s: Settings) -> None:
    if not docker2_enabled(s):
        if s.serving_hosts > 1:
            raise StackError("SERVING_HOSTS=2 needs the second Docker host, which needs root (a network namespace)")
        return
    for tool in ("dockerd", "nsenter", "ip"):
        if shutil.which(tool) is None:
            raise StackError(f"{tool} is not installed: run `make setup`")
    _docker2_certificates(s)
    pid = running_pid(s, DOCKER2)
    if pid is None:
        docker2_network_up(s)
        if _listens(s.docker2_address, s.docker2_port):
            raise StackError(
                f"something already listens on {s.docker2_address}:{s.docker2_port} (namespace {s.docker2_netns}): "
                "another checkout's stack of this profile? Stop it, or set DOCKER2_SUBNET for this one"
            )
        (s.state_dir / DOCKER2 / "data").mkdir(parents=True, exist_ok=True)
        (s.state_dir / DOCKER2 / "daemon.json").write_text("{}\n")  # every setting is on the command line
        _docker2_exec_root(s).mkdir(parents=True, exist_ok=True)
        pid = _spawn(s, DOCKER2, docker2_command(s), dict(os.environ))
    _wait(f"dockerd in namespace {s.docker2_netns}", lambda: _docker2_ping(s), 60, _log_file(s, DOCKER2), pid)
    load_serving_images(s)
    for moved in remove_misplaced_replicas(s):
        print(f"[stack] removed {moved}: not its host with SERVING_HOSTS={s.serving_hosts} (recreated on its own host)")


def load_serving_images(s: Settings) -> list[str]:
    """Copy the serving images (SERVING_IMAGES) from the first engine to the second where the second lacks them or
    has another image under the tag: `docker save | docker load` through the API, streamed. Returns those copied."""
    import docker

    first = docker.DockerClient(base_url=s.docker_host, timeout=600)
    second = docker2_client(s, timeout=600)
    loaded = []
    try:
        for image in s.serving_images:
            try:
                source = first.images.get(image)
            except docker.errors.ImageNotFound:
                print(f"[stack] {DOCKER2}: {image} is not on {s.docker_host} to load (build it: `make images`)")
                continue
            try:
                if second.images.get(image).id == source.id:
                    continue
            except docker.errors.ImageNotFound:
                pass
            t0 = time.monotonic()
            for _progress in second.api.load_image(first.api.get_image(image, chunk_size=1 << 20)):
                pass
            if second.images.get(image).id != source.id:
                raise StackError(f"loading {image} into {s.docker2_host} gave another image id")
            print(f"[stack] {DOCKER2}: loaded {image} from {s.docker_host} in {time.monotonic() - t0:.0f}s")
            loaded.append(image)
    finally:
        first.close()
        second.close()
    return loaded


def _replica_index(s: Settings, name: str) -> int | None:
    """Replica index of a `local` target's serving container from its name (``<prefix>-local[-canary][-<i>]``:
    services/targets.py ServingTarget.container), ``None`` for any other name."""
    match = re.fullmatch(rf"{re.escape(s.serving_container_prefix)}-local(?:-canary)?(?:-(\d+))?", name)
    return None if match is None else int(match.group(1) or 0)


def remove_misplaced_replicas(s: Settings) -> list[str]:
    """Remove this stack's serving replicas that run on a Docker host other than their own (replica i belongs on
    host i % SERVING_HOSTS: core.placement), as after a change of SERVING_HOSTS: the router now sends their traffic
    to the right host, and the pool's next change (or rollout) creates them there. Returns ``host/name`` of each."""
    if not docker2_enabled(s):
        return []
    removed = []
    for host, second in enumerate((False, True)):
        try:
            import docker

            client = docker2_client(s) if second else docker.DockerClient(base_url=s.docker_host, timeout=10)
        except Exception:  # noqa: BLE001 - no engine, nothing placed there
            continue
        try:
            for container in client.containers.list(all=True, filters={"label": SERVING_LABEL_MODEL_ROOT}):
                index = _replica_index(s, container.name)
                if index is None or not owns_model_root(s, container.labels.get(SERVING_LABEL_MODEL_ROOT, "")):
                    continue
                if replica_host(index, range(s.serving_hosts)) != host:
                    container.remove(force=True)
                    removed.append(f"{DOCKER2 if second else 'docker'}/{container.name}")
        except Exception as exc:  # noqa: BLE001 - an engine not answering: its containers stay, said so
            print(f"[stack] could not check the serving replicas' placement on host {host + 1}: {exc}")
        finally:
            client.close()
    return removed


def down_docker2(s: Settings) -> None:
    """Remove this stack's serving containers on the second engine, stop it, and delete its namespace."""
    if running_pid(s, DOCKER2):
        for container in stop_serving_containers(s, second_host=True):
            print(f"[stack] removed serving container {container} ({DOCKER2})")
    if stop_service(s, DOCKER2, timeout=30):
        print(f"[stack] stopped {DOCKER2}")
    if docker2_enabled(s):
        docker2_network_down(s)


def status_docker2(s: Settings) -> str:
    if not docker2_enabled(s):
        return "not started (needs root: a network namespace)"
    if not (s.docker2_tls_dir / "ca.pem").exists():
        return f"not set up yet (`stack.py up {DOCKER2}`)"
    try:
        client = docker2_client(s, timeout=5)
        try:
            client.ping()
            have = {tag for image in client.images.list() for tag in image.tags}
        finally:
            client.close()
        images = ", ".join(f"{i}{'' if i in have else ' MISSING'}" for i in s.serving_images)
        return (
            f"answers at {s.docker2_host} (TLS, namespace {s.docker2_netns} only); images: {images}; serving hosts "
            f"in use: {s.serving_hosts}"
        )
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {s.docker2_host} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- secrets


def _secret_path(s: Settings, name: str) -> Path:
    return s.secrets_dir / name


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by its owner only (0600), from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing file keeps its mode on open(): set it
        fh.write(text)


def _secret(s: Settings, name: str, make: Callable[[], str], *, announce: str = "") -> str:
    """The secret ``name`` of the state directory (``secrets/``: a 0700 directory of 0600 files), made by ``make``
    the first time and stable after. ``announce``: what it is; printed once, with where it is stored, to stderr
    when it is generated."""
    path = _secret_path(s, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        path.parent.chmod(0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with contextlib.suppress(PermissionError):
            path.chmod(0o600)  # one written before this rule
        for _ in range(50):  # another process may be writing it right now
            if value := path.read_text().strip():
                return value
            time.sleep(0.1)
        raise StackError(f"{path} is empty: remove it to generate it again") from None
    value = make()
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    if announce:
        print(
            f"[stack] generated {announce}: {value} (stored 0600 in {path}; `make status` shows it to its owner and "
            "root)",
            file=sys.stderr,
        )
    return value


# ----------------------------------------------------------------------------- PostgreSQL

PG_SUPERUSER = "postgres"  # initdb's bootstrap superuser; used only to create the registry's role and databases
PG_SUPERUSER_SECRET = "postgres_superuser_password"


def pg_hba_conf() -> str:
    """The server's pg_hba.conf: every role gives its password (scram-sha-256), over its socket and over loopback TCP
    alike; nothing else (no replication, no other address) is accepted."""
    return (
        "# generated by include/scripts/stack.py (pg_hba_conf): edit there\n"
        "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
        "local   all       all                 scram-sha-256\n"
        "host    all       all   127.0.0.1/32  scram-sha-256\n"
    )


def pg_passwords(s: Settings) -> dict[str, str]:
    """Role -> password: the superuser's, the registry role's and Airflow's, each generated once into the state dir's
    secrets (0600); POSTGRES_PASSWORD / AIRFLOW_DB_PASSWORD, when set, are the registry's / Airflow's role's
    (Settings.postgres_password and airflow_db_password read the same)."""
    return {
        PG_SUPERUSER: _secret(s, PG_SUPERUSER_SECRET, _new_password),
        s.postgres_user: os.environ.get("POSTGRES_PASSWORD", "").strip()
        or _secret(s, POSTGRES_PASSWORD_SECRET, _new_password),
        s.airflow_db_user: os.environ.get("AIRFLOW_DB_PASSWORD", "").strip()
        or _secret(s, AIRFLOW_DB_PASSWORD_SECRET, _new_password),
    }


def pg_databases(s: Settings) -> dict[str, str]:
    """Database -> its owning role: the registry's two (the registry role's) and Airflow's metadata database (its own
    role's: Airflow's components reach nothing of the registry's through it)."""
    return {REGISTRY_DB: s.postgres_user, REGISTRY_TEST_DB: s.postgres_user, AIRFLOW_DB: s.airflow_db_user}


def pg_bin_dir(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """Binaries of the newest PostgreSQL major version installed the Debian way (<root>/<major>/bin)."""
    majors = sorted(int(d.name) for d in root.glob("*") if d.name.isdigit() and (d / "bin" / "postgres").is_file())
    if not majors:
        raise StackError(f"PostgreSQL is not installed (no {root}/<major>/bin/postgres): run `make setup`")
    return root / str(majors[-1]) / "bin"


def _pg_identity(s: Settings) -> tuple[list[str], int, int]:
    """Command prefix, uid and gid the server runs as. PostgreSQL refuses to run as root, so as root the
    server runs as the unprivileged POSTGRES_OS_USER (created by `make setup`): `setpriv` sets uid, gid and
    groups and then exec()s the command in place, so a spawned server's PID is the postmaster's own."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam(s.postgres_os_user)
    except KeyError:
        raise StackError(
            f"OS user {s.postgres_os_user!r} is missing (PostgreSQL refuses to run as root): run `make setup`"
        ) from None
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"], pw.pw_uid, pw.pw_gid


def _pg_prepare_dirs(s: Settings, prefix: list[str], uid: int, gid: int) -> None:
    """$TFDEPLOY_STATE_DIR/postgres (data/ and the socket directory run/) owned by the server's user, 0700."""
    home = s.postgres_home
    for d in (home, s.postgres_socket_dir):
        d.mkdir(parents=True, exist_ok=True)
    if home.stat().st_uid != uid or (s.postgres_data_dir.exists() and s.postgres_data_dir.stat().st_uid != uid):
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(home)], check=True)
    for d in (home, s.postgres_socket_dir):
        d.chmod(0o700)
    if not prefix:
        return

    # The server's user must be able to reach its directory. Where an ancestor is closed to it (a
    # `mktemp -d` CI directory is 0700 root), grant that one user search permission (x: no listing, no
    # reading) with a POSIX ACL; nothing else changes.
    def reachable(d: Path) -> bool:
        return subprocess.run([*prefix, "test", "-x", str(d)], stderr=subprocess.DEVNULL).returncode == 0

    resolved = home.resolve()
    if reachable(resolved):
        return
    for d in [*reversed(resolved.parents), resolved]:
        if reachable(d):
            continue
        if shutil.which("setfacl") is None:
            raise StackError(f"{s.postgres_os_user} cannot reach {d}; setfacl is missing: run `make setup`")
        r = subprocess.run(["setfacl", "-m", f"u:{uid}:x", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            raise StackError(
                f"{s.postgres_os_user} cannot reach {d} and setfacl failed ({r.stderr.strip()}): make that "
                "directory searchable for that user, or set TFDEPLOY_STATE_DIR elsewhere"
            )


def _pg_connect(s: Settings, user: str = PG_SUPERUSER, dbname: str = "postgres") -> Any:  # a psycopg2 connection
    import psycopg2  # from the venv

    password = pg_passwords(s).get(user)
    try:
        return psycopg2.connect(
            host="127.0.0.1", port=s.postgres_port, user=user, password=password, dbname=dbname, connect_timeout=3
        )
    except psycopg2.OperationalError as exc:
        if "password authentication failed" in str(exc):
            raise StackError(
                f"PostgreSQL refused {user}'s password from {s.secrets_dir}: its data directory "
                f"{s.postgres_data_dir} was set up with another one. Put the right password back in that file, "
                "or remove the data directory to start empty"
            ) from None
        raise


def _pg_query(s: Settings, query: str, user: str = PG_SUPERUSER, dbname: str = "postgres") -> list[tuple]:
    conn = _pg_connect(s, user, dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchall()
    finally:
        conn.close()


def _pg_bootstrap(s: Settings) -> None:
    """Every role's password (pg_passwords: set every time, so the secrets decide), the registry's and Airflow's roles
    (LOGIN, not superusers) and their databases (pg_databases), each owned by its role, if missing."""
    from psycopg2 import sql

    passwords = pg_passwords(s)
    conn = _pg_connect(s)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SET password_encryption = 'scram-sha-256'")
            for role in passwords:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
                cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(role)), (passwords[role],))
            for db, owner in pg_databases(s).items():
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if cur.fetchone() is None:
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner))
                    )
    finally:
        conn.close()


def _pg_require_passwords(s: Settings) -> None:
    """pg_hba.conf as pg_hba_conf() says (every role gives its password), the server's configuration reloaded when
    it changed: a data directory initdb'd with `trust` before this rule is converted in place, its data kept. Call it
    after _pg_bootstrap, which gives each role its password first."""
    hba = s.postgres_data_dir / "pg_hba.conf"
    if hba.read_text() != pg_hba_conf():
        hba.write_text(pg_hba_conf())  # an existing file: the server's user and 0600 stay
        _pg_query(s, "SELECT pg_reload_conf()")
        print("[stack] postgres: pg_hba.conf rewritten: every role now authenticates with its password (scram-sha-256)")
    methods = _pg_query(s, "SELECT DISTINCT auth_method, coalesce(error, '') FROM pg_hba_file_rules")
    if methods != [("scram-sha-256", "")]:
        raise StackError(
            f"{hba} does not require passwords as written (rules: {methods}); see {_log_file(s, 'postgres')}"
        )


def up_postgres(s: Settings) -> None:
    """Our own PostgreSQL server (never Debian's default cluster): initdb'd into $TFDEPLOY_STATE_DIR/postgres/data,
    listening on 127.0.0.1 only (and its socket directory, which only the server's user and root can enter). Every
    role authenticates with its password (scram-sha-256; pg_passwords), a data directory from before that rule
    (trust) is converted on the next `up`."""
    bin_dir = pg_bin_dir()
    prefix, uid, gid = _pg_identity(s)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    data = s.postgres_data_dir
    pid = running_pid(s, "postgres")
    if pid is None:
        _pg_prepare_dirs(s, prefix, uid, gid)
        if not (data / "PG_VERSION").exists():
            # the superuser's password reaches initdb in a file only the server's user can read, removed after
            pwfile = s.postgres_home / ".initdb-pwfile"
            write_private(pwfile, pg_passwords(s)[PG_SUPERUSER] + "\n")
            os.chown(pwfile, uid, gid)
            try:
                init = subprocess.run(
                    [
                        *prefix,
                        str(bin_dir / "initdb"),
                        f"--pgdata={data}",
                        f"--username={PG_SUPERUSER}",
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--no-locale",
                        "--no-instructions",
                    ],
                    env=env,
                    cwd=s.postgres_home,
                    capture_output=True,
                    text=True,
                )
            finally:
                pwfile.unlink(missing_ok=True)
            s.logs_dir.mkdir(parents=True, exist_ok=True)
            _log_file(s, "postgres-initdb").write_text(init.stdout + init.stderr)
            if init.returncode != 0:
                raise StackError(f"initdb failed; see {_log_file(s, 'postgres-initdb')}")
            (data / "pg_hba.conf").write_text(pg_hba_conf())  # initdb's, without the lines this server needs not
        data_major = (data / "PG_VERSION").read_text().strip()
        if data_major != bin_dir.parent.name:
            raise StackError(
                f"{data} belongs to PostgreSQL {data_major} but {bin_dir.parent.name} is installed: "
                "dump and restore it with that version, or remove the directory to start empty"
            )
        _require_free(s, "PostgreSQL", s.postgres_port)
        cmd = [
            *prefix,
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(s.postgres_port),
            "-k",
            str(s.postgres_socket_dir),
        ]
        pid = _spawn(s, "postgres", cmd, env, cwd=s.postgres_home)
    _wait("PostgreSQL", lambda: bool(_pg_query(s, "SELECT 1")), 60, _log_file(s, "postgres"), pid)
    _pg_bootstrap(s)
    _pg_require_passwords(s)


def status_postgres(s: Settings) -> str:
    where = f"127.0.0.1:{s.postgres_port}"
    try:
        [(version, listen)] = _pg_query(
            s,
            "SELECT current_setting('server_version'), current_setting('listen_addresses')",
            s.postgres_user,
            REGISTRY_DB,
        )
        return f"PostgreSQL {version} at {where} (listen_addresses={listen}; {', '.join(pg_databases(s))})"
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {where} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- Redis (the Celery broker)


def redis_password(s: Settings) -> str:
    """The broker's password: REDIS_PASSWORD if set, else generated once into the state dir's secrets (0600)
    (Settings.redis_password reads the same)."""
    return os.environ.get("REDIS_PASSWORD", "").strip() or _secret(s, REDIS_PASSWORD_SECRET, _new_password)


def _redis_quote(value: str) -> str:
    """``value`` as one double-quoted argument of a redis.conf line (a password may hold spaces or quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_config(s: Settings) -> str:
    """redis.conf of the stack's broker: 127.0.0.1:REDIS_PORT only, protected mode, every client gives the password
    (requirepass), data (append-only file and snapshots, so queued tasks survive a restart) under the state dir,
    the log on stdout (the service log). Holds the password: written 0600."""
    data = s.state_dir / "redis" / "data"
    return (
        "# generated by include/scripts/stack.py (redis_config): edit there\n"
        "bind 127.0.0.1\n"
        f"port {s.redis_port}\n"
        "protected-mode yes\n"
        f"requirepass {_redis_quote(redis_password(s))}\n"
        "daemonize no\n"
        'logfile ""\n'
        f"dir {_redis_quote(str(data))}\n"
        "appendonly yes\n"
        "appendfsync everysec\n"
        "save 300 1\n"
        "maxmemory-policy noeviction\n"  # a broker must never drop a queued message
    )


def _redis_client(s: Settings) -> Any:  # a redis.Redis
    import redis  # from the venv

    return redis.Redis(
        host="127.0.0.1", port=s.redis_port, password=redis_password(s), socket_timeout=3, socket_connect_timeout=3
    )


def _redis_ping(s: Settings) -> bool:
    client = _redis_client(s)
    try:
        return bool(client.ping())
    finally:
        client.close()


def up_redis(s: Settings) -> None:
    """Our own redis-server (never a system one), the CeleryExecutor's broker: started from redis_config() and
    restarted when that changed; waits until it answers PING with the password."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise StackError("redis-server is not installed: run `make setup` (installs Debian's redis-server)")
    home = s.state_dir / "redis"
    (home / "data").mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    conf = home / "redis.conf"
    text = redis_config(s)
    pid = running_pid(s, "redis")
    if pid is None or not conf.exists() or conf.read_text() != text:
        if pid is not None:  # its configuration changed (port, password): restart it
            stop_service(s, "redis")
        write_private(conf, text)
        _require_free(s, "Redis", s.redis_port)
        pid = _spawn(s, "redis", [binary, str(conf)], {"PATH": "/usr/bin:/bin"}, cwd=home)
    _wait(f"Redis (127.0.0.1:{s.redis_port})", lambda: _redis_ping(s), 30, _log_file(s, "redis"), pid)


def status_redis(s: Settings) -> str:
    where = f"127.0.0.1:{s.redis_port}"
    try:
        client = _redis_client(s)
        try:
            info = client.info()
            queued = client.llen("default")  # Airflow's default Celery queue
        finally:
            client.close()
        return (
            f"Redis {info['redis_version']} at {where} (password required), {info['connected_clients']} clients, "
            f"{queued} task(s) queued"
        )
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {where} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- Airflow


# The simple auth manager's users by role. The admin (AIRFLOW_USER) on every stack; the test stack adds a user for
# each lower role of Airflow (Viewer, User, Op), for authorization tests. Each password is generated once (0600
# secrets), the admin's unless AIRFLOW_PASSWORD is set.
TEST_STACK_USERS = {"viewer": "viewer", "user": "user", "op": "op"}


def airflow_users(s: Settings) -> dict[str, str]:
    """User -> Airflow role (the simple auth manager's ``simple_auth_manager_users``)."""
    users = {s.airflow_user: "admin"}
    if s.stack == "test":
        users |= {user: role for user, role in TEST_STACK_USERS.items() if user != s.airflow_user}
    return users


def airflow_passwords(s: Settings) -> dict[str, str]:
    """User -> password of every user of airflow_users(s), generated the first time (the admin's is announced once
    on stderr); what `up` writes into the simple auth manager's passwords file."""
    passwords = {}
    for user in airflow_users(s):
        if user == s.airflow_user:
            passwords[user] = os.environ.get("AIRFLOW_PASSWORD", "").strip() or _secret(
                s, AIRFLOW_PASSWORD_SECRET, _new_password, announce=f"the Airflow admin password (user {user!r})"
            )
        else:
            passwords[user] = _secret(s, f"{AIRFLOW_PASSWORD_SECRET}_{user}", _new_password)
    return passwords


def airflow_login(s: Settings) -> str:
    """How to log in to Airflow, for `stack.py status`: the admin's password only for a caller who may read its file
    (its owner and root), else where it is."""
    if os.environ.get("AIRFLOW_PASSWORD", "").strip():
        return f"Airflow login: user {s.airflow_user!r}, password from AIRFLOW_PASSWORD"
    path = s.airflow_password_file
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        return f"Airflow login: user {s.airflow_user!r}; no password generated yet ({path}): run `make up`"
    except PermissionError:
        return (
            f"Airflow login: user {s.airflow_user!r}; its password is in {path} (readable by its owner and root only)"
        )
    return f"Airflow login: user {s.airflow_user!r}, password {password} (stored in {path})"


def _registry_token(s: Settings) -> str:
    """The registry's machine token (Airflow's REGISTRY_API_TOKEN; Alertmanager reads the same file)."""
    return _secret(s, "registry_api_token", lambda: secrets.token_urlsafe(32))


def airflow_env(s: Settings) -> dict[str, str]:
    """Environment of every Airflow component (and of tests that import Airflow)."""
    from base64 import urlsafe_b64encode

    registry_token = _registry_token(s)
    pg_passwords(s), redis_password(s)  # generated before the URLs below read them
    return {
        "AIRFLOW_HOME": str(s.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Airflow's production engine: metadata on the stack's PostgreSQL (database `airflow`, its own role), tasks
        # run by the Celery workers (CELERY_WORKERS) through the Redis broker, their results in the metadata database
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": s.airflow_db_url,
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": s.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": s.celery_result_backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(s.celery_worker_concurrency),
        # the scheduler queues at most as many tasks as the workers have slots
        "AIRFLOW__CORE__PARALLELISM": str(len(CELERY_WORKERS) * s.celery_worker_concurrency),
        # a task instance's `hostname` is the Celery node that ran it (worker1@<host>, ...), not just the machine
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tfdeploy.settings.airflow_hostname",
        # A release is ~10 short dependent tasks: the scheduler's 1 s idle sleep between loops was most of the
        # gap between one task ending and the next starting (bench/results/pipeline.md: Airflow overhead).
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in airflow_users(s).items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_passwords_file(s)),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
        "AIRFLOW__CORE__FERNET_KEY": _secret(s, "fernet_key", lambda: urlsafe_b64encode(os.urandom(32)).decode()),
        "AIRFLOW__API__HOST": s.airflow_host,
        "AIRFLOW__API__PORT": str(s.airflow_port),
        "AIRFLOW__API__BASE_URL": s.airflow_url,
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(s, "jwt_secret", lambda: secrets.token_urlsafe(32)),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(s.airflow_home / "logs"),
        "AIRFLOW_CONN_WEBHDFS_DEFAULT": f"webhdfs://{s.hdfs_user}@127.0.0.1:{s.webhdfs_port}",
        # The model registry, served by the api-server at /registry; its machine token is the password.
        "REGISTRY_API_TOKEN": registry_token,
        "REGISTRY_DB_URL": s.registry_db_url,
        "AIRFLOW_CONN_TFDEPLOY_REGISTRY": json.dumps(
            {
                "conn_type": "http",
                "host": s.airflow_host,
                "port": s.airflow_port,
                "schema": "registry",
                "password": registry_token,
            }
        ),
        # The `local` serving target: its TF Serving server (host, REST port, gRPC port) and the Docker
        # engine it runs on (base URL; TLS settings tls_ca_cert/tls_client_cert/tls_client_key/tls_verify
        # go in the extra when the engine needs them).
        "AIRFLOW_CONN_TFSERVING_LOCAL": json.dumps(
            {
                "conn_type": "tfserving",
                "host": "127.0.0.1",
                "port": s.replica_rest_port,
                "extra": {
                    "grpc_port": s.replica_grpc_port,
                    "replicas": s.stable_replicas,
                    "replica_hosts": serving_host_addresses(s),
                },
            }
        ),
        "AIRFLOW_CONN_TFSERVING_LOCAL_CANARY": json.dumps(
            {
                "conn_type": "tfserving",
                "host": "127.0.0.1",
                "port": s.canary_replica_rest_port,
                "extra": {"grpc_port": s.canary_replica_grpc_port},
            }
        ),
        "AIRFLOW_CONN_ROUTER_LOCAL": json.dumps(
            {
                "conn_type": "tfdeploy_router",
                "extra": {
                    "socket": str(s.run_dir / "haproxy.sock"),
                    **{f"{name}_map": str(router_map(s, name)) for name in ROUTER_MAPS},
                },
            }
        ),
        **serving_host_connections(s),
        # how many of those hosts the `local` target spreads its replicas over: the stack's value, so every component
        # places replicas as this stack's router and Connections do
        "SERVING_HOSTS": str(s.serving_hosts),
        # alert mail (MailAlertNotifier, Airflow's SmtpNotifier): an SMTP server on 127.0.0.1:SMTP_PORT, none by
        # default (the tests start one); plain SMTP on loopback, no TLS
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": s.smtp_port,
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": s.alert_email_from,
                    "timeout": 10,
                    "retry_limit": 1,
                },
            }
        ),
        # The stack's Prometheus (PrometheusHook: live rates and latencies, series for diagnosis bundles).
        "AIRFLOW_CONN_PROMETHEUS_DEFAULT": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": s.prometheus_port}
        ),
        "DOCKER_HOST": s.docker_host,
        "TFDEPLOY_STACK": s.stack,
        # model_health every 5 minutes on your stack; the test stack's tests start it themselves (a scheduled
        # check in the middle of a test would add its own history, alerts and load)
        "MODEL_HEALTH_SCHEDULE": os.environ.get("MODEL_HEALTH_SCHEDULE", "" if s.stack == "test" else "*/5 * * * *"),
        "TFDEPLOY_STATE_DIR": str(s.state_dir),
        "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
        "NO_PROXY": "127.0.0.1,localhost," + os.environ.get("NO_PROXY", ""),
        "no_proxy": "127.0.0.1,localhost," + os.environ.get("no_proxy", ""),
    }


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def airflow_passwords_file(s: Settings) -> Path:
    """The simple auth manager's passwords file (it keeps a password it finds there, and reads it at each login)."""
    return s.airflow_home / "simple_auth_manager_passwords.json.generated"


# Files of the Airflow home that hold secrets: the metadata database (Connections' passwords, XCom, ...) and its
# configuration (a generated secret_key). The home itself is 0700, each of these 0600, the passwords file written
# 0600. The service logs (0700) and the registry's SQLite database (lease tokens, 0600) are the owner's too.
AIRFLOW_PRIVATE_FILES = ("airflow.db", "airflow.db-wal", "airflow.db-shm", "airflow.cfg", "webserver_config.py")


def _write_password(s: Settings) -> None:
    """Make airflow_passwords(s) Airflow's (every user's), in a 0600 file of a 0700 Airflow home."""
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    write_private(airflow_passwords_file(s), json.dumps(airflow_passwords(s)) + "\n")
    _private_airflow_home(s)


def _private_airflow_home(s: Settings) -> None:
    s.airflow_home.chmod(0o700)
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    s.logs_dir.chmod(0o700)
    files = [s.airflow_home / name for name in AIRFLOW_PRIVATE_FILES]
    if s.registry_db_url.startswith("sqlite:///"):
        db = Path(s.registry_db_url.removeprefix("sqlite:///"))
        files += [db, db.with_name(f"{db.name}-wal"), db.with_name(f"{db.name}-shm")]
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o600)


def _airflow_health(s: Settings) -> dict:
    data = _http_json(f"{s.airflow_url}/api/v2/monitor/health")
    assert isinstance(data, dict)
    return data


def celery_node(worker: str) -> str:
    """A Celery worker's node name, ``<worker>@<this machine's FQDN>``; also the ``hostname`` of the task instances
    it runs (tfdeploy.settings.airflow_hostname)."""
    import socket

    return f"{worker}@{socket.getfqdn()}"


def celery_ping(s: Settings, timeout: float = 1.0) -> list[str]:
    """Node names of the Celery workers that answer a ping through this stack's broker within ``timeout``."""
    from celery import Celery  # from the venv

    _redis_ping(s)  # fails within seconds when the broker is down (Celery would keep retrying to connect)
    app = Celery(broker=s.redis_url)
    try:
        replies = app.control.ping(timeout=timeout)
    finally:
        app.close()
    return sorted(node for reply in replies for node in reply)


def _airflow_command(s: Settings, comp: str) -> tuple[list[str], dict[str, str]]:
    """Command line and extra environment of one of AIRFLOW_COMPONENTS. No log server anywhere (Airflow's binds every
    interface, with no setting for it): every component shares the log folder, so the api-server reads task logs,
    finished or running, from the files."""
    if comp in CELERY_WORKERS:
        node = celery_node(comp)
        return [_airflow_bin(), "celery", "worker", "--celery-hostname", node, "--skip-serve-logs"], {
            WORKER_NAME_VAR: node
        }
    args = [_airflow_bin(), comp]
    if comp in ("scheduler", "triggerer"):
        args.append("--skip-serve-logs")
    return args, {}


def up_airflow(s: Settings) -> None:
    env = {**os.environ, **airflow_env(s)}
    _write_password(s)
    if all(running_pid(s, f"airflow-{c}") for c in AIRFLOW_COMPONENTS):
        return
    if (s.airflow_home / "airflow.db").exists():
        print(
            f"[stack] airflow: its metadata now lives in PostgreSQL (database {AIRFLOW_DB}); the SQLite database of "
            f"before, {s.airflow_home / 'airflow.db'}, is no longer used (run history starts afresh; the model "
            "registry keeps its data): remove it when you no longer need it"
        )
    migrate = subprocess.run([_airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    _log_file(s, "airflow-db-migrate").write_text(migrate.stdout + migrate.stderr)
    if migrate.returncode != 0:
        raise StackError(f"airflow db migrate failed; see {_log_file(s, 'airflow-db-migrate')}")
    _private_airflow_home(s)  # airflow.cfg exists now
    pids = {}
    for comp in AIRFLOW_COMPONENTS:
        name = f"airflow-{comp}"
        pid = running_pid(s, name)
        if pid is None:
            if comp == "api-server":
                _require_free(s, "the Airflow api-server", s.airflow_port)
            args, extra = _airflow_command(s, comp)
            pid = _spawn(s, name, args, {**env, **extra})
        pids[comp] = pid
    _wait(
        "Airflow api-server",
        lambda: bool(_airflow_health(s)),
        120,
        _log_file(s, "airflow-api-server"),
        pids["api-server"],
    )

    def healthy() -> bool:
        h = _airflow_health(s)
        return all(
            h.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    _wait(
        "Airflow scheduler, triggerer and dag-processor",
        healthy,
        120,
        _log_file(s, "airflow-scheduler"),
        pids["scheduler"],
    )
    nodes = [celery_node(worker) for worker in CELERY_WORKERS]

    def workers_answer() -> bool:
        for worker in CELERY_WORKERS:
            if not _alive(pids[worker]):
                log = _log_file(s, f"airflow-{worker}")
                raise StackError(f"the Celery worker {worker} exited during start-up; see {log}:\n{_tail(log)}")
        return set(nodes) <= set(celery_ping(s))

    _wait(
        f"Airflow's Celery workers ({', '.join(nodes)}: ping through the broker)",
        workers_answer,
        120,
        _log_file(s, f"airflow-{CELERY_WORKERS[0]}"),
    )
    # The registry (mounted in the api-server) opens and migrates its database on first use: make that
    # first use now, so `up` means the registry answers and no deployment pays for it.
    token = airflow_env(s)["REGISTRY_API_TOKEN"]
    _wait(
        "the model registry (/registry, its database migrated)",
        lambda: isinstance(
            _http_json(f"{s.airflow_url}/registry/v1/models?limit=1", headers={"Authorization": f"Bearer {token}"}),
            dict,
        ),
        60,
        _log_file(s, "airflow-api-server"),
        pids["api-server"],
    )
    _private_airflow_home(s)  # the registry's database exists now


def status_airflow(s: Settings) -> str:
    try:
        h = _airflow_health(s)
        parts = ", ".join(f"{k}={v.get('status')}" for k, v in h.items() if isinstance(v, dict))
        answer = f"{s.airflow_url} {parts}"
    except Exception as exc:  # noqa: BLE001
        answer = f"not answering at {s.airflow_url} ({exc.__class__.__name__})"
    try:
        nodes = celery_ping(s)
        workers = f"{len(nodes)}/{len(CELERY_WORKERS)} answer ({', '.join(nodes) or 'none'})"
    except Exception as exc:  # noqa: BLE001
        workers = f"no answer ({exc.__class__.__name__})"
    return f"{answer}; CeleryExecutor, workers: {workers}"


# ----------------------------------------------------------------------------- router (HAProxy)


def router_map(s: Settings, name: str = "candidates") -> Path:
    """One of the router's maps, kept by the pipeline through the runtime API and in its file (so a restarted
    router routes the same way): ``candidates`` (``<model>/<version> canary``: versioned REST calls for them go
    to the canary pool), ``weights`` (``<model> <percent>``: the share of a model's unversioned inference calls
    sent to its candidate during a gray release) and ``limits`` (``<model> <requests/s>``: per-model rate
    limits, kept in the registry)."""
    if name not in ROUTER_MAPS:
        raise ValueError(f"unknown router map {name!r}; maps: {', '.join(ROUTER_MAPS)}")
    return s.state_dir / "haproxy" / f"{name}.map"


ROUTER_MAPS = ("candidates", "weights", "limits")


def router_config(s: Settings) -> str:
    """HAProxy's configuration: clients' REST and gRPC ports in front of the `local` target's pools.

    The stable pool serves production versions only; candidates load in the canary pool. Unversioned REST and
    gRPC calls go to the stable pool, so a candidate takes no production traffic before promotion, whatever
    its number. `/labels/canary` REST calls, and `/versions/<v>` calls for a version in the candidates map, go
    to the canary pool; explicit gRPC calls for a candidate use the canary gRPC port (HAProxy cannot read the
    model spec inside a gRPC message). Each replica is health-checked on its REST port (TF Serving answers 404
    JSON for an unknown model once it is up): a dead one is out of rotation within about 2 s. The runtime API
    (admin socket) changes server states, weights and the map without a reload; Prometheus on /metrics.
    """
    socket_path = s.run_dir / "haproxy.sock"
    maxconn = s.serving_maxconn

    hosts = serving_host_addresses(s)

    def servers(prefix: str, rest_port: int, grpc_port: int, count: int) -> tuple[str, str]:
        """A pool's server lines: replica i at its Docker host's address (core.placement), ports + 2i."""
        rest = "\n".join(
            f"    server {prefix}{i + 1} {replica_host(i, hosts)}:{rest_port + 2 * i} check maxconn {maxconn}"
            for i in range(count)
        )
        grpc = "\n".join(
            f"    server {prefix}{i + 1} {replica_host(i, hosts)}:{grpc_port + 2 * i} proto h2 check port "
            f"{rest_port + 2 * i} check-proto h1 maxconn {maxconn}"
            for i in range(count)
        )
        return rest, grpc

    def qos(backends: dict[str, str]) -> str:
        """Priority classes and shedding for a frontend whose requests go to ``backends`` (side -> backend)."""
        lines = [
            "    http-request set-var(txn.priority) req.hdr(X-Priority),lower",
            "    http-request set-var(txn.priority) str(normal) if !{ var(txn.priority) -m str high normal low }",
            "    http-request set-priority-class int(-10) if { var(txn.priority) -m str high }",
            "    http-request set-priority-class int(10) if { var(txn.priority) -m str low }",
        ]
        for side, backend in backends.items():
            on_side = f" {{ var(txn.side) -m str {side} }}" if len(backends) > 1 else ""
            for priority, queued in (("low", s.qos_low_queue), ("normal", s.qos_normal_queue)):
                message = (
                    f"overloaded: {priority}-priority requests are refused while {queued} or more wait; "
                    "retry after a second, or send X-Priority: high"
                )
                lines.append(
                    "    http-request return status 429 content-type application/json hdr Retry-After 1 "
                    f'string "{{\\"error\\": \\"{message}\\"}}" '
                    f"if {{ var(txn.priority) -m str {priority} }}{on_side} {{ queue({backend}) ge {queued} }}"
                )
            # the last QOS_LOW_RESERVE free slots of the pool are kept for normal and high priority: a high call
            # then rarely waits behind a low one already running
            message = (
                f"overloaded: low-priority requests are refused while {s.qos_low_reserve} or fewer slots are free; "
                "retry after a second, or send X-Priority: high"
            )
            lines.append(
                "    http-request return status 429 content-type application/json hdr Retry-After 1 "
                f'string "{{\\"error\\": \\"{message}\\"}}" '
                f"if {{ var(txn.priority) -m str low }}{on_side} {{ be_conn_free({backend}) le {s.qos_low_reserve} }}"
            )
        return "\n".join(lines)

    stable_rest, stable_grpc = servers("replica", s.replica_rest_port, s.replica_grpc_port, s.stable_replicas)
    canary_rest, canary_grpc = servers("canary", s.canary_replica_rest_port, s.canary_replica_grpc_port, 1)
    check = (
        "    option httpchk GET /v1/models/tfdeploy-router-probe\n"
        "    http-check expect rstatus ^(200|404)$\n"
        # a connection refused or reset marks the replica down at once (no waiting for two failed checks)
        "    default-server inter 1s fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down"
    )
    rate_limited = (
        "http-request return status 429 content-type application/json hdr Retry-After 1 "
        'string "{\\"error\\": \\"rate limit of this model exceeded; retry after a second\\"}"'
    )
    candidate_version = f"var(txn.model_version),map({router_map(s, 'candidates')})"
    # a caller's key (hashed with the model's name) picks its bucket 0-99: the same side for the whole release
    route_key_bucket = "req.hdr(X-Route-Key),concat(@,txn.model),crc32(1),mod(100)"
    return f"""# generated by include/scripts/stack.py (router_config): edit there
global
    log stdout format raw local0 info
    stats socket {socket_path} mode 600 level admin
    stats timeout 30s

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout queue 10s
    timeout check 2s
    # a replica that dies takes only its in-flight requests with it: a failed connection or an empty answer
    # is retried on another replica (predict, classify, regress and reads change nothing: safe to retry; the
    # request body is buffered so that a POST can be sent again)
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response junk-response
    option http-buffer-request

frontend serving_rest
    bind 127.0.0.1:{s.serving_rest_port}
    acl model_call path_reg -i ^/v1/models/[^/:]+([:/]|$)
    acl infer path_reg -i ^/v1/models/[^/:]+:(predict|classify|regress)$
    acl canary_label path_reg -i ^/v1/models/[^/:]+/labels/canary([:/]|$)
    acl versioned path_reg -i ^/v1/models/[^/:]+/versions/[0-9]+([:/]|$)
    http-request set-var(txn.model) path,field(4,/),field(1,:) if model_call
    # per-model rate limit (limits map, requests/s over the last second): 429 before anything queues
    http-request track-sc0 var(txn.model) table rates if model_call
    http-request set-var(txn.limit) var(txn.model),map({router_map(s, "limits")},0) if model_call
    http-request set-var(txn.over_limit) sc_gpc0_rate(0),sub(txn.limit) if {{ var(txn.limit) -m int gt 0 }}
    {rate_limited} if {{ var(txn.over_limit) -m int ge 0 }}
    http-request sc-inc-gpc0(0) if {{ var(txn.limit) -m int gt 0 }}
    # the side: the canary pool for /labels/canary, for /versions/<v> of a candidate, and for a gray release's
    # share of unversioned inference calls (weights map, percent; X-Route-Key pins a caller to one side)
    http-request set-var(txn.side) str(stable)
    http-request set-var(txn.side) str(canary) if canary_label
    http-request set-var(txn.version) path,field(6,/),field(1,:) if versioned
    http-request set-var(txn.model_version) var(txn.model),concat(/,txn.version) if versioned
    http-request set-var(txn.side) str(canary) if versioned {{ {candidate_version} -m found }}
    http-request set-var(txn.weight) var(txn.model),map({router_map(s, "weights")},0) if infer
    http-request set-var(txn.bucket) rand(100) if infer !{{ req.hdr(X-Route-Key) -m found }}
    http-request set-var(txn.bucket) {route_key_bucket} if infer {{ req.hdr(X-Route-Key) -m found }}
    http-request set-var(txn.gray) var(txn.bucket),sub(txn.weight) if infer
    http-request set-var(txn.side) str(canary) if infer {{ var(txn.gray) -m int lt 0 }}
{qos({"stable": "local_rest", "canary": "local_canary_rest"})}
    # per model and side counters of unversioned inference calls, which judge a gray release's steps (after
    # the shedding above: a refused call is neither side's)
    http-request set-var(txn.tracked) var(txn.model),concat(/,txn.side) if infer
    http-request track-sc1 var(txn.tracked) table traffic if infer
    http-response set-header X-Served-By %[var(txn.side)] if {{ var(txn.side) -m found }}
    # which replica of the pool answered (its server name: replica1, replica2 ..., canary1)
    http-response set-header X-Served-By-Replica %[srv_name] if {{ var(txn.side) -m found }} {{ srv_id -m found }}
    use_backend local_canary_rest if {{ var(txn.side) -m str canary }}
    default_backend local_rest

frontend serving_grpc
    bind 127.0.0.1:{s.serving_grpc_port} proto h2
    http-request set-var(txn.side) str(stable)
{qos({"stable": "local_grpc"})}
    default_backend local_grpc

frontend serving_canary_grpc
    bind 127.0.0.1:{s.canary_grpc_port} proto h2
    http-request set-var(txn.side) str(canary)
{qos({"canary": "local_canary_grpc"})}
    default_backend local_canary_grpc

frontend router_stats
    bind 127.0.0.1:{s.router_stats_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 5s

backend rates
    stick-table type string len 128 size 10k expire 10s store gpc0_rate(1s)

backend traffic
    stick-table type string len 160 size 10k expire 24h store http_req_cnt,http_err_cnt,http_fail_cnt

backend local_rest
{check}
{stable_rest}

backend local_grpc
{check}
{stable_grpc}

backend local_canary_rest
{check}
{canary_rest}

backend local_canary_grpc
{check}
{canary_grpc}
"""


def router_command(s: Settings, command: str) -> str:
    """One command on HAProxy's runtime API (the admin socket); returns its answer."""
    import socket as socket_mod

    with socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(s.run_dir / "haproxy.sock"))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def up_router(s: Settings) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise StackError("haproxy is not installed: run `make setup` (installs Debian's haproxy)")
    conf = s.state_dir / "haproxy" / "haproxy.cfg"
    conf.parent.mkdir(parents=True, exist_ok=True)
    text = router_config(s)
    pid = running_pid(s, "router")
    if pid is not None and conf.exists() and conf.read_text() == text:
        return
    if pid is not None:  # the configuration changed (ports, replicas): restart it
        stop_service(s, "router")
    conf.write_text(text)
    for name in ROUTER_MAPS:
        router_map(s, name).touch()  # kept by the pipeline; empty at first
    check = subprocess.run([haproxy, "-c", "-q", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise StackError(f"HAProxy refuses {conf}: {check.stderr.strip() or check.stdout.strip()}")
    for port in (s.serving_rest_port, s.serving_grpc_port, s.canary_grpc_port, s.router_stats_port):
        _require_free(s, "the router (HAProxy)", port)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    pid = _spawn(s, "router", [haproxy, "-db", "-f", str(conf)], dict(os.environ))
    _wait(
        "router (HAProxy runtime API)",
        lambda: "Name: HAProxy" in router_command(s, "show info"),
        30,
        _log_file(s, "router"),
        pid,
    )


def status_router(s: Settings) -> str:
    try:
        states = [
            f"{row.split(',')[0]}/{row.split(',')[1]}={row.split(',')[17]}"
            for row in router_command(s, "show stat").splitlines()
            if row and not row.startswith("#") and row.split(",")[1] not in ("FRONTEND", "BACKEND")
        ]
        return (
            f"REST 127.0.0.1:{s.serving_rest_port}, gRPC 127.0.0.1:{s.serving_grpc_port}, metrics "
            f"http://127.0.0.1:{s.router_stats_port}/metrics; replicas {' '.join(states) or 'none'}"
        )
    except OSError as exc:
        return f"not answering on {s.run_dir / 'haproxy.sock'} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- monitoring (Prometheus, Alertmanager)

MONITORING_DIR = PROJECT_ROOT / "include" / "monitoring"
SERVING_METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's, as serving_host.MONITORING_CONFIG sets it
SERVING_CONTAINER_REST_PORT = 8501  # inside the serving containers (serving_host.REST_PORT)
SCRAPE_INTERVAL = "5s"  # Prometheus' default (1 min) is too slow for alerts within a minute
EVALUATION_INTERVAL = "5s"


def _docker_meta_label(label: str) -> str:
    """The meta label docker_sd_configs gives a container label (invalid characters become underscores)."""
    return "__meta_docker_container_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _re2_literal(text: str) -> str:
    """``text`` as a literal in an RE2 regular expression (Prometheus' relabelling)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def _replica_router_names(s: Settings) -> list[tuple[str, str, str]]:
    """(container, router backend, router server) of each replica the pipeline runs for the `local` target: the
    names of tfdeploy/services/targets.py and of router_config's backends."""
    stable = f"{s.serving_container_prefix}-local"
    names = [(stable if i == 0 else f"{stable}-{i}", "local_rest", f"replica{i + 1}") for i in range(s.stable_replicas)]
    return [*names, (f"{stable}-canary", "local_canary_rest", "canary1")]


def serving_relabel_configs(s: Settings) -> list[dict[str, Any]]:
    """Docker service discovery -> scrape targets: this stack's serving replicas only (their model root lies under
    this stack's state directory, so the dev and test stacks never scrape each other's), each scraped on the host
    port its container's REST port (8501) is published on, labelled container, pool (stable|canary, from the
    model root: the canary pool's ends in -canary), replica (the container name's -<n>, else 0), serving_target
    (the model root's directory name without -canary) and, for the pipeline's own replicas, router_backend and
    router_server (its name at the router)."""
    root = _docker_meta_label(SERVING_LABEL_MODEL_ROOT)
    state = os.path.normpath(str(s.state_dir)).rstrip(os.sep)
    rules: list[dict[str, Any]] = [
        {"source_labels": [root], "regex": f"{_re2_literal(state)}/.+", "action": "keep"},
        {"source_labels": ["__meta_docker_port_private"], "regex": str(SERVING_CONTAINER_REST_PORT), "action": "keep"},
        {"source_labels": ["__meta_docker_port_public"], "regex": ".+", "action": "keep"},
        {  # where the port is published: loopback on the first engine, the namespace address on docker2
            "source_labels": ["__meta_docker_port_public_ip", "__meta_docker_port_public"],
            "separator": ":",
            "target_label": "__address__",
            "replacement": "$1",
        },
        {"source_labels": ["__meta_docker_container_name"], "regex": "/?(.+)", "target_label": "container"},
        {"target_label": "pool", "replacement": "stable"},
        {"source_labels": [root], "regex": ".*-canary", "target_label": "pool", "replacement": "canary"},
        {"source_labels": [root], "regex": ".*/([^/]+?)(-canary)?", "target_label": "serving_target"},
        {"target_label": "replica", "replacement": "0"},
        {"source_labels": ["container"], "regex": ".+-([0-9]+)", "target_label": "replica"},
    ]
    for container, backend, server in _replica_router_names(s):
        for label, value in (("router_backend", backend), ("router_server", server)):
            rules.append(
                {
                    "source_labels": ["container"],
                    "regex": _re2_literal(container),
                    "target_label": label,
                    "replacement": value,
                }
            )
    return rules


def prometheus_config(s: Settings) -> str:
    """Prometheus' configuration (prometheus.yml): 5 s scrape and evaluation; scrapes this stack's serving
    replicas (found through the Docker engine as the pipeline creates and replaces them), the router, the
    registry, itself and Alertmanager; the rules of include/monitoring/rules.yml; alerts to Alertmanager."""
    import yaml  # from the venv

    def static(job: str, port: int, path: str = "/metrics") -> dict[str, Any]:
        return {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}

    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": "4s",
            "evaluation_interval": EVALUATION_INTERVAL,
            "external_labels": {"stack": s.stack},
        },
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{s.alertmanager_port}"]}]}]},
        "rule_files": [str(s.state_dir / "prometheus" / "rules.yml")],
        "scrape_configs": [
            static("prometheus", s.prometheus_port),
            static("alertmanager", s.alertmanager_port),
            static("router", s.router_stats_port),
            static("registry", s.airflow_port, "/registry/metrics"),
            {
                "job_name": "serving",
                "metrics_path": SERVING_METRICS_PATH,
                "docker_sd_configs": [
                    {
                        "host": s.docker_host,
                        "refresh_interval": "5s",
                        "filters": [{"name": "label", "values": [f"{SERVING_LABEL_MANAGED}=true"]}],
                    },
                    *(  # the second Docker host's replicas (SERVING_HOSTS=2), over TLS with the stack's client cert
                        [
                            {
                                "host": f"https://{s.docker2_address}:{s.docker2_port}",
                                "tls_config": {
                                    "ca_file": str(s.docker2_tls_dir / "ca.pem"),
                                    "cert_file": str(s.docker2_tls_dir / "cert.pem"),
                                    "key_file": str(s.docker2_tls_dir / "key.pem"),
                                },
                                "refresh_interval": "5s",
                                "filters": [{"name": "label", "values": [f"{SERVING_LABEL_MANAGED}=true"]}],
                            }
                        ]
                        if s.serving_hosts > 1
                        else []
                    ),
                ],
                "relabel_configs": serving_relabel_configs(s),
            },
        ],
    }
    header = "# generated by include/scripts/stack.py (prometheus_config): edit there\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=120)


def alertmanager_config(s: Settings) -> str:
    """Alertmanager's configuration: every alert, grouped by (alertname, model), to the registry's alert endpoint
    (POST /registry/v1/alerts), authenticated with the registry's machine token (read from its 0600 file)."""
    import yaml  # from the venv

    _registry_token(s)  # the file exists before Alertmanager reads it
    config = {
        "route": {
            "receiver": "registry",
            "group_by": ["alertname", "model"],
            "group_wait": "5s",
            "group_interval": "10s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "registry",
                "webhook_configs": [
                    {
                        "url": f"{s.airflow_url}/registry/v1/alerts",
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {
                                "type": "Bearer",
                                "credentials_file": str(_secret_path(s, "registry_api_token")),
                            }
                        },
                    }
                ],
            }
        ],
    }
    header = "# generated by include/scripts/stack.py (alertmanager_config): edit there\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=120)


def _monitoring_binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        package = "prometheus" if name in ("prometheus", "promtool") else "prometheus-alertmanager"
        raise StackError(f"{name} is not installed: run `make setup` (installs Debian's {package})")
    return path


def _monitoring_env() -> dict[str, str]:
    """The caller's environment, with loopback kept off any proxy (webhooks, scrapes)."""
    return {
        **os.environ,
        "NO_PROXY": "127.0.0.1,localhost," + os.environ.get("NO_PROXY", ""),
        "no_proxy": "127.0.0.1,localhost," + os.environ.get("no_proxy", ""),
    }


def _up_monitoring_process(
    s: Settings, name: str, files: dict[Path, str], check: list[str], cmd: list[str], port: int, url: str
) -> None:
    """Write the generated files, check them (``check``), and (re)start ``cmd`` when it or a file changed; a
    running process with the same files and command line is left alone. Waits for ``url``/-/ready."""
    home = s.state_dir / name
    (home / "data").mkdir(parents=True, exist_ok=True)
    cmdline = home / "cmdline"
    wanted = {**files, cmdline: json.dumps(cmd)}
    pid = running_pid(s, name)
    changed = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if pid is None or changed:
        for path, text in wanted.items():
            path.write_text(text)
        done = subprocess.run(check, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"{Path(check[0]).name} refuses {name}'s configuration:\n{done.stdout}{done.stderr}")
        if pid is not None:  # its configuration changed: restart it
            stop_service(s, name)
        _require_free(s, name.capitalize(), port)
        pid = _spawn(s, name, cmd, _monitoring_env())
    _wait(
        f"{name} ({url}/-/ready)",
        lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
        60,
        _log_file(s, name),
        pid,
    )


def up_alertmanager(s: Settings) -> None:
    home = s.state_dir / "alertmanager"
    conf = home / "alertmanager.yml"
    cmd = [
        _monitoring_binary("prometheus-alertmanager"),
        f"--config.file={conf}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{s.alertmanager_port}",
        f"--web.external-url={s.alertmanager_url}/",
        "--cluster.listen-address=",  # a single instance: no gossip port
    ]
    check = [_monitoring_binary("amtool"), "check-config", str(conf)]
    files = {conf: alertmanager_config(s)}
    _up_monitoring_process(s, "alertmanager", files, check, cmd, s.alertmanager_port, s.alertmanager_url)


def up_prometheus(s: Settings) -> None:
    home = s.state_dir / "prometheus"
    conf = home / "prometheus.yml"
    cmd = [
        _monitoring_binary("prometheus"),
        f"--config.file={conf}",
        f"--storage.tsdb.path={home / 'data'}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address=127.0.0.1:{s.prometheus_port}",
        f"--web.external-url={s.prometheus_url}/",
    ]
    check = [_monitoring_binary("promtool"), "check", "config", str(conf)]
    files = {conf: prometheus_config(s), home / "rules.yml": (MONITORING_DIR / "rules.yml").read_text()}
    _up_monitoring_process(s, "prometheus", files, check, cmd, s.prometheus_port, s.prometheus_url)


def status_prometheus(s: Settings) -> str:
    try:
        data = _http_json(f"{s.prometheus_url}/api/v1/targets?state=active")
        assert isinstance(data, dict)
        jobs: dict[str, list[int]] = {}
        for target in data["data"]["activeTargets"]:
            counts = jobs.setdefault(target["labels"].get("job", "?"), [0, 0])
            counts[0] += target["health"] == "up"
            counts[1] += 1
        alerts = _http_json(f"{s.prometheus_url}/api/v1/alerts")
        assert isinstance(alerts, dict)
        firing = sum(a["state"] == "firing" for a in alerts["data"]["alerts"])
        up = ", ".join(f"{job} {n_up}/{n}" for job, (n_up, n) in jobs.items())
        return f"{s.prometheus_url} targets up: {up or 'none'}; alerts firing: {firing}"
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {s.prometheus_url} ({exc.__class__.__name__})"


def status_alertmanager(s: Settings) -> str:
    try:
        alerts = _http_json(f"{s.alertmanager_url}/api/v2/alerts?active=true&silenced=false&inhibited=false")
        assert isinstance(alerts, list)
        return f"{s.alertmanager_url} active alerts: {len(alerts)} (to {s.airflow_url}/registry/v1/alerts)"
    except Exception as exc:  # noqa: BLE001
        return f"not answering at {s.alertmanager_url} ({exc.__class__.__name__})"


# ----------------------------------------------------------------------------- CLI

SERVICES: dict[str, tuple[Callable[[Settings], None], Callable[[Settings], str], tuple[str, ...]]] = {
    "docker": (up_docker, status_docker, ("dockerd",)),
    DOCKER2: (up_docker2, status_docker2, (DOCKER2,)),
    "hdfs": (up_hdfs, status_hdfs, (*reversed(DATANODE_NAMES), "hdfs-namenode")),
    "postgres": (up_postgres, status_postgres, ("postgres",)),
    "redis": (up_redis, status_redis, ("redis",)),
    "router": (up_router, status_router, ("router",)),
    "alertmanager": (up_alertmanager, status_alertmanager, ("alertmanager",)),
    "prometheus": (up_prometheus, status_prometheus, ("prometheus",)),
    "airflow": (up_airflow, status_airflow, tuple(f"airflow-{c}" for c in reversed(AIRFLOW_COMPONENTS))),
}


def describe_profile(s: Settings) -> str:
    """One line: which stack profile, where its state is, and its ports."""
    ports = " ".join(f"{var}={port}" for var, port in s.ports.items())
    return f"stack profile {s.stack}: state {s.state_dir}, Airflow {s.airflow_url}; {ports}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument("services", nargs="*", choices=[[], *SERVICES], default=[])
    args = parser.parse_args(argv)
    try:
        s = get_settings()
    except ValueError as exc:  # a bad variable: say which, without a traceback
        print(f"[stack] {exc}", file=sys.stderr)
        return 2
    names = args.services or list(SERVICES)
    if args.action == "up" and s.stack != "dev":
        shared = shared_between(s, settings_for("dev"))
        if shared:
            print(
                f"[stack] refusing to start the {s.stack} stack: it would share {', '.join(shared)} with the dev "
                "stack. Unset those variables (or give this stack its own values).",
                file=sys.stderr,
            )
            return 1
    if args.action == "env":
        for key, value in airflow_env(s).items():
            print(f"export {key}={value!r}")
        return 0
    print(f"[stack] {describe_profile(s)}")
    if args.action == "up":
        for name in names:
            t0 = time.monotonic()
            try:
                SERVICES[name][0](s)
            except StackError as exc:
                print(f"[stack] {name}: FAILED: {exc}", file=sys.stderr)
                return 1
            print(f"[stack] {name}: ready in {time.monotonic() - t0:.1f}s - {SERVICES[name][1](s)}")
        return 0
    if args.action == "down":
        for name in reversed(names):
            if name == "docker":
                for container in stop_serving_containers(s):
                    print(f"[stack] removed serving container {container}")
                down_docker(s)
                continue
            if name == DOCKER2:
                down_docker2(s)
                continue
            for proc in SERVICES[name][2]:
                if stop_service(s, proc):
                    print(f"[stack] stopped {proc}")
        return 0
    total = 0.0
    for name in names:
        procs = []
        for proc in SERVICES[name][2]:
            pid = running_pid(s, proc)
            mem = _pss_mib(pid) if pid else 0.0
            total += mem
            procs.append(f"{proc}={pid or '-'}" + (f" ({mem:.0f} MiB)" if pid else ""))
        print(f"[stack] {name}: {SERVICES[name][1](s)}  [{', '.join(procs)}]")
    print(f"[stack] memory of the processes this project started (PSS, with children): {total:.0f} MiB")
    if "airflow" in names:
        print(f"[stack] {airflow_login(s)}")
    return 0


def _pss_mib(pid: int) -> float:
    """Proportional set size of pid and its descendants, from /proc (shared pages counted fairly)."""
    total_kib = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


if __name__ == "__main__":
    sys.exit(main())
