"""Command line and start-up, as tensorflow_model_server's main.cc and Server::BuildAndStart (server.cc).

Flags are parsed as tensorflow::Flags parses them (see flags.py): a value error prints the usage and exits
with status 255; an argument no flag takes is reported as `unknown argument: ...` with the usage, and the
server starts anyway. Ports open only once every configured model has an AVAILABLE version, as in TF Serving.
SIGTERM stops the server promptly (so `docker stop` does not wait).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

from . import flags as flagdefs

log = logging.getLogger("tfserving_compat")


def parse_flags(argv: list[str]) -> tuple[SimpleNamespace, list[str]]:
    """tensorflow::Flags::Parse over argv: (flag values, unknown arguments). Raises ValueError on a value error."""
    result = flagdefs.parse(argv)
    if not result.ok:
        raise ValueError("flag parsing failed")
    return result.flags, result.unknown


def build_config(flags: Any) -> Any:
    """The ModelServerConfig Server::BuildAndStart serves (server.cc), with its checks in its order."""
    from . import config as cfg
    from .errors import InvalidArgument

    if not flags.model_base_path and not flags.model_config_file:
        raise InvalidArgument("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if flags.model_config_file:
        return cfg.read_file(flags.model_config_file)
    return cfg.single_model(flags.model_name, flags.model_base_path)


def build_batching(flags: Any) -> Any:
    """Server::BuildAndStart's batching block (server.cc): the BatchingParameters, or None without batching."""
    from . import config as cfg
    from .errors import InvalidArgument

    if flags.enable_batching:
        params = cfg.BatchingParameters()
        if flags.batching_parameters_file:
            params = cfg.read_batching_parameters(flags.batching_parameters_file)
        else:
            params.thread_pool_name.value = "model_server_batch_threads"
        return params
    if flags.batching_parameters_file:
        raise InvalidArgument(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    return None


def read_monitoring(path: str) -> str | None:
    """The Prometheus path if monitoring is enabled in the MonitoringConfig text proto."""
    if not path:
        return None
    from .monitoring_config import prometheus_path

    with open(path, encoding="utf-8") as fh:
        return prometheus_path(fh.read())


class ModelServer:
    """The whole server: manager, gRPC and REST. `start()` blocks until every model is available."""

    def __init__(self, flags: Any) -> None:
        from .manager import ManagerOptions, ModelManager
        from .metrics import Metrics

        self.flags = flags
        self.batching: Any = None
        self.metrics = Metrics()
        self.manager = ModelManager(
            ManagerOptions(
                file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
                enable_model_warmup=flags.enable_model_warmup,
                max_num_load_retries=max(0, flags.max_num_load_retries),
                load_retry_interval_seconds=max(0, flags.load_retry_interval_micros) / 1e6,
                allow_version_labels_for_unavailable_models=flags.allow_version_labels_for_unavailable_models,
                num_load_threads=flags.num_load_threads,  # 0 (TF Serving's default): loads run one at a time
                enable_signature_method_name_check=flags.enable_signature_method_name_check,
                on_loaded=self.metrics.loaded,
            )
        )
        self.grpc_server: Any = None
        self.rest_server: Any = None
        self.stopped = threading.Event()

    def start(self) -> None:
        from . import batching
        from .errors import InvalidArgument
        from .grpc_service import make_server
        from .rest import RestApi, RestServer

        # Server::BuildAndStart's checks, in its order.
        if self.flags.port == 0 and not self.flags.grpc_socket_path:
            raise InvalidArgument(
                "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
            )
        if self.flags.use_alts_credentials and self.flags.ssl_config_file:
            raise InvalidArgument("Either use_alts_credentials must be false or ssl_config_file must be empty.")
        config = build_config(self.flags)
        batching_params = build_batching(self.flags)
        metrics_path = read_monitoring(self.flags.monitoring_config_file)
        if batching_params is not None:
            # TF Serving makes these checks when it wraps each version's session (a load error); here at start.
            self.batching = batching.Scheduler(
                batching.BatchingOptions.from_proto(batching_params, default_threads=flagdefs._CPUS)
            )
            batching.configure(self.batching)
            self.metrics.add_source(self.batching.exposition)  # exported only while batching is on, as TF Serving
        self.manager.reload_config(config)
        self.manager.start()
        self.manager.wait_until_available(lambda: not self.stopped.is_set())
        if self.stopped.is_set():
            return
        host = self.flags.bind_address
        self.grpc_server, grpc_port = make_server(
            self.manager,
            self.metrics,
            host,
            self.flags.port,
            self.flags.grpc_max_threads,
            tensor_content=self.flags.enable_serialization_as_tensor_content,
        )
        self.grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", host, grpc_port)
        if self.flags.rest_api_port != 0 and self.flags.rest_api_port == self.flags.port:
            log.error(
                "server_options.http_port cannot be same as grpc_port. Please use a different port for HTTP/REST "
                "API. Skipped exporting HTTP/REST API."
            )
        elif self.flags.rest_api_port > 0:
            self.rest_server = RestServer(
                RestApi(
                    self.manager,
                    self.metrics,
                    timeout_in_ms=self.flags.rest_api_timeout_in_ms,
                    enable_cors_support=self.flags.rest_api_enable_cors_support,
                ),
                host,
                self.flags.rest_api_port,
                metrics_path,
            )
            self.rest_server.start()
            log.info("Exporting HTTP/REST API at:%s:%d ...", host, self.rest_server.port)
        if self.flags.model_config_file and self.flags.model_config_file_poll_wait_seconds > 0:
            threading.Thread(target=self._poll_config_file, name="config-poll", daemon=True).start()

    def _poll_config_file(self) -> None:
        """Server::PollFilesystemAndReloadConfig (server.cc), run by a PeriodicFunction: the first call at once,
        then every --model_config_file_poll_wait_seconds. Each poll re-reads the file and calls ReloadConfig
        whether or not the file changed, so a config applied over gRPC (HandleReloadConfigRequest) is replaced
        by the file's on the next poll. A read or reload error is only logged; the previous state stays."""
        from . import config as cfg
        from .errors import ServingError

        interval = self.flags.model_config_file_poll_wait_seconds
        while not self.stopped.is_set():
            began = time.monotonic()
            try:
                new = cfg.read_file(self.flags.model_config_file)
            except ServingError as exc:
                log.error("Failed to read ModelServerConfig file: %s", exc.message)
            else:
                try:
                    self.manager.reload_config(new, should_wait=lambda: not self.stopped.is_set())
                except ServingError as exc:
                    log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc.message)
            if self.stopped.wait(max(0.0, began + interval - time.monotonic())):
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.rest_server is not None:
            self.rest_server.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0.5)
        self.manager.stop()
        if self.batching is not None:
            self.batching.stop()


def _version() -> str:
    from importlib import metadata

    try:
        serving = metadata.version("tensorflow-serving-api")
    except metadata.PackageNotFoundError:
        serving = "unknown"
    import tensorflow as tf

    return f"TensorFlow ModelServer: {serving}-tfserving-compat\nTensorFlow Library: {tf.__version__}\n"


def main(argv: list[str] | None = None) -> int:
    """main.cc: parse, report, BuildAndStart, wait. Returns the exit status (-1 there: 255)."""
    logging.basicConfig(
        level=os.environ.get("TFSERVING_COMPAT_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    parsed = flagdefs.parse(sys.argv[1:] if argv is None else argv)
    usage = flagdefs.usage()
    if not parsed.ok:
        sys.stdout.write(usage)
        sys.stdout.flush()
        return 255
    flags = parsed.flags
    if flags.version:
        sys.stdout.write(_version())
        return 0
    if parsed.unknown:
        sys.stdout.write(f"unknown argument: {parsed.unknown[0]}\n{usage}")
        sys.stdout.flush()
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
        sys.stdout.write(f"Failed to start server. Error: {exc.code}: {exc.message}\n")
        sys.stdout.flush()
        server.stop()
        return 255
    if not server.stopped.is_set():
        done.wait()
    server.stop()
    return 0
