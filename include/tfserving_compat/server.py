"""Command line and start-up, taking tensorflow_model_server's flags.

Ports open only once every configured model has an AVAILABLE version, as in TF Serving. Unknown
flags are reported and ignored. SIGTERM stops the server promptly (so `docker stop` does not wait).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

log = logging.getLogger("tfserving_compat")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes", "y"):
        return True
    if value in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse absl-style flags (`--flag=value`, `--flag value`, `--flag` / `--noflag` for booleans)."""
    p = argparse.ArgumentParser(prog="tensorflow_model_server", allow_abbrev=False)
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--rest_api_port", type=int, default=0)
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default="")
    p.add_argument("--model_config_file", default="")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0)
    p.add_argument("--file_system_poll_wait_seconds", type=int, default=1)
    p.add_argument("--monitoring_config_file", default="")
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30_000)
    p.add_argument("--rest_api_num_threads", type=int, default=0)
    p.add_argument("--num_load_threads", type=int, default=4)
    p.add_argument("--grpc_max_threads", type=int, default=16)
    # Not a TF Serving flag: the stand-in binds 0.0.0.0 like TF Serving unless told otherwise (tests use 127.0.0.1).
    p.add_argument("--bind_address", default="0.0.0.0")
    booleans = {
        "enable_model_warmup": True,
        "allow_version_labels_for_unavailable_models": False,
        "enable_batching": False,
        "enable_signature_method_name_check": False,
    }
    for name, default in booleans.items():
        p.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default)
        p.add_argument(f"--no{name}", dest=name, action="store_const", const=False)
    return p.parse_known_args(argv)


def build_config(flags: argparse.Namespace) -> Any:
    from . import config as cfg

    if flags.model_config_file:
        return cfg.read_file(flags.model_config_file)
    if not flags.model_base_path:
        raise SystemExit(
            "Both server_model_config_file and model_base_path are empty: pass --model_base_path "
            "(with --model_name) or --model_config_file"
        )
    return cfg.single_model(flags.model_name, flags.model_base_path)


def read_monitoring(path: str) -> str | None:
    """The Prometheus path if monitoring is enabled in the MonitoringConfig text proto."""
    if not path:
        return None
    from .monitoring_config import prometheus_path

    with open(path, encoding="utf-8") as fh:
        return prometheus_path(fh.read())


class ModelServer:
    """The whole server: manager, gRPC and REST. `start()` blocks until every model is available."""

    def __init__(self, flags: argparse.Namespace) -> None:
        from .manager import ManagerOptions, ModelManager
        from .metrics import Metrics

        self.flags = flags
        self.metrics = Metrics()
        self.manager = ModelManager(
            ManagerOptions(
                file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
                enable_model_warmup=flags.enable_model_warmup,
                max_num_load_retries=max(0, flags.max_num_load_retries),
                load_retry_interval_seconds=max(0, flags.load_retry_interval_micros) / 1e6,
                allow_version_labels_for_unavailable_models=flags.allow_version_labels_for_unavailable_models,
                num_load_threads=max(1, flags.num_load_threads),
                enable_signature_method_name_check=flags.enable_signature_method_name_check,
                on_loaded=self.metrics.loaded,
            )
        )
        self.grpc_server: Any = None
        self.rest_server: Any = None
        self.stopped = threading.Event()

    def start(self) -> None:
        from .grpc_service import make_server
        from .rest import RestApi, RestServer

        config = build_config(self.flags)
        metrics_path = read_monitoring(self.flags.monitoring_config_file)
        self.manager.reload_config(config)
        self.manager.start()
        self.manager.wait_until_available(lambda: not self.stopped.is_set())
        if self.stopped.is_set():
            return
        host = self.flags.bind_address
        self.grpc_server, grpc_port = make_server(
            self.manager, self.metrics, host, self.flags.port, self.flags.grpc_max_threads
        )
        self.grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", host, grpc_port)
        if self.flags.rest_api_port > 0:
            self.rest_server = RestServer(
                RestApi(self.manager, self.metrics), host, self.flags.rest_api_port, metrics_path
            )
            self.rest_server.start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", host, self.rest_server.port)
        if self.flags.model_config_file and self.flags.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_config_file, name="config-poll", daemon=True).start()

    def _poll_config_file(self) -> None:
        """Re-read --model_config_file; a parse or reload error is only logged and the previous state stays."""
        from . import config as cfg
        from .errors import ServingError

        last = None
        while not self.stopped.wait(self.flags.model_config_file_poll_wait_seconds):
            try:
                new = cfg.read_file(self.flags.model_config_file)
                if new == last:
                    continue
                self.manager.reload_config(new, should_wait=lambda: not self.stopped.is_set())
                last = new
            except ServingError as exc:
                log.error("Failed to reload model config file %s: %s", self.flags.model_config_file, exc.message)

    def stop(self) -> None:
        self.stopped.set()
        if self.rest_server is not None:
            self.rest_server.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0.5)
        self.manager.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("TFSERVING_COMPAT_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    flags, unknown = parse_flags(sys.argv[1:] if argv is None else argv)
    for flag in unknown:
        log.warning("Ignoring unknown flag %s (not supported by this TF-Serving-compatible server)", flag)
    server = ModelServer(flags)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("Received signal %d, shutting down", signum)
        server.stopped.set()
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from .errors import ServingError

    try:
        server.start()
    except ServingError as exc:
        log.error("Failed to start server. Error: %s: %s", exc.code, exc.message)
        server.stop()
        return 1
    if not server.stopped.is_set():
        done.wait()
    server.stop()
    return 0
