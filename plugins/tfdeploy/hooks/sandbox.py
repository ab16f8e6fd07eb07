"""SandboxHook: model code runs in a short-lived, locked-down container, never in the Airflow worker.

Loading a SavedModel or a ``.keras`` file runs its graph (and Keras layers' code); the worker holds Airflow's
JWT secret, its Fernet key and the registry's token. So every step that loads or runs a model (validation's
signatures, golden inference and latency, the export of a ``.keras`` file, TF Serving's warmup records) is one
job of the sandbox package (``include/tfdeploy_sandbox``: its docstring is the job format) run in a container of
the sandbox image (``SANDBOX_IMAGE``: the serving image's TensorFlow plus that package) which:

- has no network (``network_mode="none"``: only its own loopback; neither the host nor the Docker bridge),
- gets an explicit, minimal environment (nothing of the worker's, so no secret),
- has a read-only root filesystem, its inputs mounted read-only (the job file at ``/job``, each input at
  ``/in/<name>``), one writable bind mount ``/out`` (a fresh directory) and a small ``/tmp`` tmpfs,
- is limited in memory (no swap beyond it), CPUs and processes, runs as ``nobody`` (or the worker's own non-root
  user) with every capability dropped and ``no-new-privileges``,
- is killed and removed at its wall-clock timeout (:class:`SandboxTimeout` with its log tail); should the worker
  die first, the container kills itself soon after (coreutils ``timeout`` in its command) and the next sandbox
  run on the engine removes it.

The container is always removed (:meth:`SandboxHook.kill` from an operator's ``on_kill`` too). What it wrote is
checked before the worker reads it: regular files and directories only (a link could point the worker at its own
files), and the result file must be JSON.

The Docker engine is the serving host's (the ``serving_host_local`` Connection; the client is
``ServingHostHook``'s, built in one place) and must run on this machine: the job's files are bind-mounted from here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core.errors import SandboxFailed, SandboxTimeout
from tfdeploy.hooks.serving_host import ServingHostHook

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

PROTOCOL = 1  # tfdeploy_sandbox.runner.PROTOCOL: the job format both sides speak
JOB_DIR = "/job"
IN_DIR = "/in"
OUT_DIR = "/out"
RESULT_NAME = "result.json"
SANDBOX_COMMAND = ("python", "-m", "tfdeploy_sandbox", f"{JOB_DIR}/job.json")
NOBODY = "65534:65534"
LABEL = "tfdeploy.sandbox"
LABEL_DEADLINE = "tfdeploy.sandbox.deadline"
LABEL_WHAT = "tfdeploy.sandbox.what"
NAME_PREFIX = "tfdeploy-sandbox-"
# The whole environment of a sandbox (with the image's own PATH and PYTHONPATH): nothing of the worker's.
SANDBOX_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "KERAS_HOME": "/tmp/.keras",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
MAX_RESULT_BYTES = 256 * 1024 * 1024
LOG_TAIL = 40


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandbox container may use: ``memory`` (Docker's notation: ``"2g"``, ``"512m"``; swap is not
    added), ``cpus``, ``pids`` (processes and threads), ``timeout_s`` (wall clock, start to exit) and ``tmpfs``
    (the size of its writable ``/tmp``)."""

    memory: str = "2g"
    cpus: float = 1.0
    pids: int = 512
    timeout_s: float = 300.0
    tmpfs: str = "256m"

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, int | float) and self.timeout_s > 0):
            raise ValueError(f"sandbox timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        if not (isinstance(self.cpus, int | float) and self.cpus > 0):
            raise ValueError(f"sandbox cpus must be positive, got {self.cpus!r}")
        if not (isinstance(self.pids, int) and self.pids >= 16):
            raise ValueError(f"sandbox pids must be an integer of at least 16, got {self.pids!r}")
        for name in ("memory", "tmpfs"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value[:-1].isdigit() and value[-1].lower() in "kmg"):
                raise ValueError(f"sandbox {name} must be a size like '2g' or '512m', got {value!r}")

    def describe(self) -> str:
        return f"memory {self.memory}, {self.cpus:g} CPU, {self.pids} processes, {self.timeout_s:g} s"


@dataclass(frozen=True)
class SandboxRun:
    """A finished sandbox container: how it ended, its log tail, and its settings as the engine read them back."""

    what: str
    container: str
    exit_code: int
    seconds: float
    logs: str
    user: str = ""
    host_config: dict[str, Any] = field(default_factory=dict)
    oom_killed: bool = False
    result: dict[str, Any] | None = None

    def describe(self) -> str:
        """The confinement as the engine reports it (for logs and reports)."""
        hc = self.host_config
        return (
            f"container {self.container}: network {hc.get('NetworkMode')}, read-only root {hc.get('ReadonlyRootfs')}, "
            f"memory {hc.get('Memory')} bytes, {(hc.get('NanoCpus') or 0) / 1e9:g} CPU, pids {hc.get('PidsLimit')}, "
            f"caps dropped {hc.get('CapDrop')}, {hc.get('SecurityOpt')}, user {self.user}, {self.seconds:.1f} s"
        )


class SandboxHook(BaseHook):
    """Runs sandbox jobs in throw-away containers on the serving host's Docker engine (see the module doc).

    :param serving_host_conn_id: the serving host's Connection (the Docker engine's URL and TLS settings).
    :param image: the sandbox image (``SANDBOX_IMAGE``).
    :param limits: memory, CPU, processes, wall-clock timeout (defaults: :class:`SandboxLimits`).
    :param base_url: overrides the Connection's Docker base URL.
    :param docker_timeout: seconds for each Docker API call (not the job's timeout).
    """

    conn_name_attr = "serving_host_conn_id"
    default_conn_name = ServingHostHook.default_conn_name
    conn_type = ServingHostHook.conn_type
    hook_name = "tfdeploy sandbox (Docker)"

    def __init__(
        self,
        serving_host_conn_id: str | None = default_conn_name,
        *,
        image: str,
        limits: SandboxLimits | None = None,
        base_url: str | None = None,
        docker_timeout: int = 60,
    ) -> None:
        super().__init__()
        if not image:
            raise ValueError("give the sandbox image (SANDBOX_IMAGE), e.g. local/tfdeploy-sandbox:latest")
        self.image = image
        self.limits = limits or SandboxLimits()
        # The engine and its client are the serving host's; model_root is where job files are bind-mounted from.
        self.engine = ServingHostHook(
            serving_host_conn_id,
            model_root=tempfile.gettempdir(),
            base_url=base_url,
            docker_timeout=docker_timeout,
        )
        self._running: Container | None = None
        self._killed: set[str] = set()  # containers kill() removed while their job ran

    @cached_property
    def docker_client(self) -> docker.DockerClient:
        return self.engine.docker_client

    def get_conn(self) -> docker.DockerClient:
        return self.docker_client

    # ------------------------------------------------------------------ the jobs

    def validate(
        self, model_dir: Path, *, signature_name: str, inputs: Any, latency_runs: int, work_dir: Path
    ) -> tuple[dict[str, Any], SandboxRun]:
        """Signatures of the SavedModel in ``model_dir``, and (if it has ``signature_name``) its outputs on the
        golden ``inputs`` and optionally its median latency over ``latency_runs`` single-row calls. ``model_dir``
        must be the caller's own copy (it is made readable to the sandbox's user); ``work_dir`` a private
        directory of the caller for the job's files."""
        job = {
            "kind": "validate",
            "model": f"{IN_DIR}/model",
            "signature_name": signature_name,
            "inputs": inputs,
            "latency_runs": int(latency_runs),
        }
        run = self.run_job(job, what="validation", inputs={"model": model_dir}, work_dir=work_dir)
        result = run.result or {}
        if not isinstance(result.get("signatures"), dict):
            raise SandboxFailed(f"validation in the sandbox answered without signatures: {_short(result)}")
        return result, run

    def export(
        self,
        *,
        work_dir: Path,
        keras_file: Path | None = None,
        saved_model: Path | None = None,
        warmup: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], Path, SandboxRun]:
        """Export ``keras_file`` (loaded with ``safe_mode=True``) as a SavedModel, and/or write TF Serving's warmup
        records (``warmup``: ``signature_name`` and the golden ``inputs`` to replay) for it or for ``saved_model``.
        Returns the job's result, the directory holding its output (``saved_model/`` if exported,
        ``tf_serving_warmup_requests`` if written; checked: regular files and directories only) and the run."""
        if (keras_file is None) == (saved_model is None):
            raise ValueError("give exactly one of keras_file and saved_model")
        job: dict[str, Any] = {"kind": "export", "keras": None, "saved_model": None, "out": f"{OUT_DIR}/saved_model"}
        inputs: dict[str, Path] = {}
        if keras_file is not None:
            job["keras"] = f"{IN_DIR}/model.keras"
            inputs["model.keras"] = keras_file
        else:
            job["saved_model"] = f"{IN_DIR}/model"
            inputs["model"] = Path(str(saved_model))
        if warmup is not None:
            job["warmup"] = {**warmup, "path": f"{OUT_DIR}/tf_serving_warmup_requests"}
        out = work_dir / f"sandbox-out-{uuid.uuid4().hex[:8]}"
        run = self.run_job(job, what="export" if keras_file else "warmup", inputs=inputs, work_dir=work_dir, out=out)
        return run.result or {}, out, run

    # ------------------------------------------------------------------ one job, one container

    def run_job(
        self,
        job: Mapping[str, Any],
        *,
        what: str,
        inputs: Mapping[str, Path],
        work_dir: Path,
        out: Path | None = None,
    ) -> SandboxRun:
        """Run ``job`` (the sandbox package's format; ``protocol`` and ``result`` are added) with ``inputs``
        (name -> the caller's own file or directory, mounted read-only at ``/in/<name>``). The job file and the
        output directory (``out``, default a fresh one in ``work_dir``) are made under ``work_dir``. Raises
        :class:`SandboxFailed` when the job fails (its error and log tail) and :class:`SandboxTimeout`."""
        job_dir = work_dir / f"sandbox-job-{uuid.uuid4().hex[:8]}"
        out = out or work_dir / f"sandbox-out-{uuid.uuid4().hex[:8]}"
        job_dir.mkdir(mode=0o755)
        out.mkdir()
        try:
            doc = {**job, "protocol": PROTOCOL, "result": f"{OUT_DIR}/{RESULT_NAME}"}
            (job_dir / "job.json").write_text(json.dumps(doc))
            mounts = {JOB_DIR: job_dir}
            for name, path in inputs.items():
                if "/" in name or name in ("", ".", ".."):
                    raise ValueError(f"sandbox input name {name!r} must be a plain file name")
                if not Path(path).exists():
                    raise FileNotFoundError(f"sandbox input {name}: {path} does not exist")
                mounts[f"{IN_DIR}/{name}"] = Path(path)
            for path in mounts.values():
                _open_to_sandbox(path)
            run = self.run(list(SANDBOX_COMMAND), what=what, mounts=mounts, out=out, check=False)
            result = _read_result(out, what, run)
            if not result.get("ok") or run.exit_code != 0:
                error = result.get("error") or f"exit code {run.exit_code}"
                raise SandboxFailed(
                    f"{what} failed in the sandbox ({run.container}, {run.seconds:.1f} s): {error}. "
                    f"Its last log lines:\n{run.logs}"
                )
            result.pop("ok", None)
            return replace(run, result=result)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def run(
        self,
        command: Sequence[str],
        *,
        what: str,
        mounts: Mapping[str, Path] | None = None,
        out: Path | None = None,
        check: bool = True,
    ) -> SandboxRun:
        """Run ``command`` in a sandbox container: ``mounts`` (container path -> host path) read-only, ``out``
        (an empty host directory, made writable to the sandbox's user) at ``/out``. Waits at most the limits'
        ``timeout_s`` (then kills, removes and raises :class:`SandboxTimeout`); the container is removed in
        every case. ``check``: a non-zero exit raises :class:`SandboxFailed`; else the caller judges it."""
        self.engine.check_shared_disk()  # bind mounts of this machine's files
        self._sweep()
        limits = self.limits
        volumes = {str(host): {"bind": inside, "mode": "ro"} for inside, host in (mounts or {}).items()}
        if out is not None:
            if any(out.iterdir()):
                raise ValueError(f"sandbox output directory {out} must be empty")
            os.chmod(out, 0o777)  # the sandbox's user writes here; out lives in the caller's private directory
            volumes[str(out)] = {"bind": OUT_DIR, "mode": "rw"}
        user = _sandbox_user()
        name = f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}"
        deadline = time.time() + limits.timeout_s
        # the container kills itself a little after the deadline, should this process die before it does
        self_kill = str(math.ceil(limits.timeout_s) + 30)
        try:
            container = self.docker_client.containers.create(
                self.image,
                ["timeout", "-s", "KILL", self_kill, *command],
                name=name,
                user=user,
                environment=dict(SANDBOX_ENV),
                network_mode="none",
                read_only=True,
                volumes=volumes,
                tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs}"},
                working_dir="/tmp",
                mem_limit=limits.memory,
                memswap_limit=limits.memory,
                nano_cpus=int(limits.cpus * 1e9),
                pids_limit=limits.pids,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                labels={LABEL: "true", LABEL_DEADLINE: str(int(deadline) + 60), LABEL_WHAT: what[:200]},
            )
        except _docker_errors() as exc:
            raise SandboxFailed(
                f"could not create the sandbox container for {what} from {self.image} on {self.engine.base_url}: "
                f"{type(exc).__name__}: {exc}. Is the engine up (`make status`)? Is the image built "
                "(include/scripts/build_images.sh; SANDBOX_IMAGE names it)?"
            ) from exc
        self._running = container
        started = time.monotonic()
        try:
            try:
                container.start()
            except _docker_errors() as exc:
                raise SandboxFailed(
                    f"the sandbox container for {what} ({name}, from {self.image}) did not start: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            status = self._wait(container, deadline)
            seconds = time.monotonic() - started
            if name in self._killed:
                raise SandboxFailed(
                    f"{what} in the sandbox ({name}) was killed and removed after {seconds:.0f} s: the task was "
                    "killed (on_kill)"
                )
            if status is None:
                with contextlib.suppress(*_docker_errors()):
                    container.kill()
                logs = _logs(container)
                raise SandboxTimeout(
                    f"{what} ran in the sandbox ({name}, from {self.image}) for {seconds:.0f} s, past its limit of "
                    f"{limits.timeout_s:g} s: the container was killed and removed. If the model is only slow, "
                    f"raise the operator's sandbox timeout. Its last log lines:\n{logs}"
                )
            try:
                container.reload()
            except _docker_errors() as exc:
                raise SandboxFailed(
                    f"{what} in the sandbox ({name}) ended (exit code {status}) but the engine no longer knows its "
                    f"container: {type(exc).__name__}: {exc}"
                ) from exc
            run = SandboxRun(
                what=what,
                container=name,
                exit_code=int(status),
                seconds=seconds,
                logs=_logs(container),
                user=str(container.attrs.get("Config", {}).get("User", "")),
                host_config=dict(container.attrs.get("HostConfig", {})),
                oom_killed=bool(container.attrs.get("State", {}).get("OOMKilled")),
            )
        finally:
            self._remove(container)
        self.log.info("sandbox %s: exit %s; %s", what, run.exit_code, run.describe())
        if run.oom_killed:
            raise SandboxFailed(
                f"{what} ran out of memory in the sandbox ({name}: limit {limits.memory}) after {run.seconds:.1f} s "
                f"and was killed. Raise the operator's sandbox memory if the model needs it. Its last log lines:\n"
                f"{run.logs}"
            )
        if check and run.exit_code != 0:
            raise SandboxFailed(
                f"{what} failed in the sandbox ({name}) with exit code {run.exit_code} after {run.seconds:.1f} s. "
                f"Its last log lines:\n{run.logs}"
            )
        return run

    def kill(self) -> None:
        """Kill and remove the container this hook is running now, if any (an operator's ``on_kill``)."""
        container = self._running
        if container is not None:
            self.log.info("killing sandbox container %s", container.name)
            self._killed.add(str(container.name))
            self._remove(container)

    # ------------------------------------------------------------------ helpers

    def _wait(self, container: Container, deadline: float) -> int | None:
        """The exit code, or None once ``deadline`` (epoch seconds) passed with the container still running."""
        import requests

        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            try:
                answer = container.wait(timeout=min(left, 30.0))
                return int(answer.get("StatusCode", -1))
            except requests.exceptions.RequestException:
                continue  # the wait call timed out (the daemon keeps waiting on its side): check the deadline
            except _docker_errors():
                if container.name in self._killed:
                    return -1  # removed by kill() while we waited
                raise

    def _remove(self, container: Container) -> None:
        from docker.errors import NotFound

        try:
            container.remove(force=True)
        except NotFound:
            pass
        except _docker_errors() as exc:
            self.log.warning("could not remove sandbox container %s: %s", container.name, exc)
        if self._running is container:
            self._running = None

    def _sweep(self) -> None:
        """Remove sandbox containers left behind on the engine (a worker killed mid-job): exited, or running past
        their deadline."""
        try:
            leftovers = self.docker_client.containers.list(all=True, filters={"label": LABEL})
        except _docker_errors() as exc:
            self.log.warning("could not list leftover sandbox containers: %s", exc)
            return
        now = time.time()
        for container in leftovers:
            try:
                deadline = float(container.labels.get(LABEL_DEADLINE, "0"))
            except ValueError:
                deadline = 0.0
            if deadline < now:  # never one still within its time: it may be another task's, running or ending
                self.log.info("removing leftover sandbox container %s (%s)", container.name, container.status)
                self._remove(container)


# --------------------------------------------------------------------------- helpers


def _sandbox_user() -> str:
    """The worker's own user when it is not root, else ``nobody``: never root in the sandbox."""
    uid = os.geteuid()
    return NOBODY if uid == 0 else f"{uid}:{os.getegid()}"


def _open_to_sandbox(path: Path) -> None:
    """Make the caller's own copy readable to the sandbox's user (a+rX; it lives in the caller's private temp
    directory, so nobody else on this machine reaches it)."""
    for item in _walk(path):
        mode = item.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        extra = 0o555 if stat.S_ISDIR(mode) else 0o444
        os.chmod(item, stat.S_IMODE(mode) | extra)


def _walk(path: Path) -> Iterator[Path]:
    yield path
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                yield Path(root) / name


def check_output_tree(out: Path, what: str) -> None:
    """Everything the sandbox wrote is a regular file or a directory; else :class:`SandboxFailed` (a link or a
    device could point the worker at its own files)."""
    for item in _walk(out):
        mode = item.lstat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise SandboxFailed(
                f"{what} in the sandbox wrote {item.relative_to(out.parent)}, which is {kind}: only regular files "
                "and directories are taken from the sandbox, so nothing it wrote is used. Check the model."
            )


def _read_result(out: Path, what: str, run: SandboxRun) -> dict[str, Any]:
    check_output_tree(out, what)
    path = out / RESULT_NAME
    if not path.is_file():
        raise SandboxFailed(
            f"{what} in the sandbox ({run.container}) ended with exit code {run.exit_code} after {run.seconds:.1f} s "
            f"without writing its result. Its last log lines:\n{run.logs}"
        )
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise SandboxFailed(f"{what} in the sandbox wrote a result of {path.stat().st_size} bytes: over the limit")
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SandboxFailed(f"{what} in the sandbox wrote a result that is not JSON: {exc}") from exc
    if not isinstance(result, dict):
        raise SandboxFailed(f"{what} in the sandbox wrote a result that is not an object: {_short(result)}")
    return result


def _docker_errors() -> tuple[type[Exception], ...]:
    """What a Docker call raises when it fails: the engine's refusals, and an engine that does not answer."""
    import requests
    from docker.errors import DockerException

    return (DockerException, requests.RequestException)


def _logs(container: Container) -> str:
    try:
        return bytes(container.logs(tail=LOG_TAIL)).decode(errors="replace").rstrip() or "(no output)"
    except _docker_errors() as exc:
        return f"(logs unavailable: {exc})"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 300 else text[:297] + "..."
