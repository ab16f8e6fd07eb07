"""TFServingHook: one TensorFlow Serving server, over its gRPC (ModelService) and REST (predict, metadata) APIs.

Works against any server with TF Serving's interface (``tensorflow/serving`` in production). gRPC is used
where only gRPC offers the call (config reload) or gives typed answers (model status); REST where the
pipeline's smoke tests speak what clients speak (``:predict`` in row format, metadata).

One gRPC channel and one HTTP session per hook, both built on first use. The ModelService calls use the
wire-compatible messages of ``tfdeploy.core.model_service``: TF Serving's generated modules for them import
TensorFlow (about 2 s and 600 MB per task process), which a task that only reloads a server must not pay.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import grpc
import requests
from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core import model_service as ms
from tfdeploy.core.errors import (
    ServingReloadError,
    ServingRequestError,
    ServingRpcError,
    ServingUnavailable,
    VersionNotAvailable,
    VersionNotUnloaded,
)
from tfdeploy.core.placement import replica_host

if TYPE_CHECKING:
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

AVAILABLE = "AVAILABLE"
END = "END"


class TFServingHook(BaseHook):
    """One TF Serving server: gRPC ``ModelService``/``PredictionService`` and the REST API.

    :param tfserving_conn_id: Connection of the server: ``host``, ``port`` (the REST port) and
        ``extra.grpc_port``; ``None`` uses ``grpc_target`` and ``rest_url`` alone.
    :param grpc_target: ``host:port`` of the gRPC API; overrides the Connection.
    :param rest_url: ``http://host:port`` of the REST API; overrides the Connection.
    :param timeout: seconds bounding each gRPC call and HTTP request unless a method says otherwise.
    """

    conn_name_attr = "tfserving_conn_id"
    default_conn_name = "tfserving_local"
    conn_type = "tfserving"
    hook_name = "TensorFlow Serving"

    def __init__(
        self,
        tfserving_conn_id: str | None = default_conn_name,
        *,
        grpc_target: str | None = None,
        rest_url: str | None = None,
        timeout: float = 30,
    ) -> None:
        super().__init__()
        if not tfserving_conn_id and not (grpc_target and rest_url):
            raise ValueError("give tfserving_conn_id (a Connection) or both grpc_target and rest_url")
        self.tfserving_conn_id = tfserving_conn_id
        self._grpc_target = grpc_target
        self._rest_url = rest_url
        self.timeout = timeout

    @cached_property
    def _address(self) -> tuple[str, int, int]:
        """(host, REST port, gRPC port) from the Connection."""
        assert self.tfserving_conn_id is not None
        conn = self.get_connection(self.tfserving_conn_id)
        grpc_port = conn.extra_dejson.get("grpc_port")
        if not conn.host or not conn.port or not grpc_port:
            raise ValueError(
                f"Connection {self.tfserving_conn_id!r} needs host, port (the REST port) and extra.grpc_port; "
                f"has host={conn.host!r} port={conn.port!r} grpc_port={grpc_port!r}"
            )
        return str(conn.host), int(conn.port), int(grpc_port)

    @cached_property
    def grpc_target(self) -> str:
        if self._grpc_target:
            return self._grpc_target
        host, _rest, grpc_port = self._address
        return f"{host}:{grpc_port}"

    @cached_property
    def rest_url(self) -> str:
        if self._rest_url:
            return self._rest_url.rstrip("/")
        host, rest_port, _grpc = self._address
        return f"http://{host}:{rest_port}"

    @property
    def ports(self) -> tuple[int, int]:
        """(gRPC port, REST port) of the server, from the Connection (where a container publishes them)."""
        _host, rest_port, grpc_port = self._address
        return grpc_port, rest_port

    def replicas(self) -> list[TFServingHook]:
        """One hook per replica of the pool this Connection names (``extra.replicas``, default 1): replica i
        listens on the Connection's ports + 2i, at the address of its Docker host (``extra.replica_hosts``, the
        hosts' publish addresses, placed by ``core.placement.replica_host``; default: the Connection's host). The
        first is this hook."""
        if not self.tfserving_conn_id:
            return [self]
        extra = self.get_connection(self.tfserving_conn_id).extra_dejson
        count = int(extra.get("replicas", 1))
        host, rest_port, grpc_port = self._address
        hosts = [str(h) for h in extra.get("replica_hosts") or [host]]
        return [self] + [
            TFServingHook(
                None,
                grpc_target=f"{replica_host(i, hosts)}:{grpc_port + 2 * i}",
                rest_url=f"http://{replica_host(i, hosts)}:{rest_port + 2 * i}",
                timeout=self.timeout,
            )
            for i in range(1, count)
        ]

    # ------------------------------------------------------------------ clients, built lazily

    @cached_property
    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.grpc_target,
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )

    @cached_property
    def _reload_call(self) -> Any:
        return self.channel.unary_unary(
            ms.RELOAD_METHOD,
            request_serializer=ms.ReloadConfigRequest.SerializeToString,
            response_deserializer=ms.ReloadConfigResponse.FromString,
        )

    @cached_property
    def _status_call(self) -> Any:
        return self.channel.unary_unary(
            ms.STATUS_METHOD,
            request_serializer=ms.GetModelStatusRequest.SerializeToString,
            response_deserializer=ms.GetModelStatusResponse.FromString,
        )

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # a proxy from the environment must not carry calls to the serving host
        return session

    def get_conn(self) -> grpc.Channel:
        return self.channel

    def close(self) -> None:
        """Close the gRPC channel and the HTTP session if they were opened; the hook can be used again after."""
        if "channel" in self.__dict__:
            self.__dict__.pop("channel").close()
            self.__dict__.pop("_reload_call", None)
            self.__dict__.pop("_status_call", None)
        if "session" in self.__dict__:
            self.__dict__.pop("session").close()

    def __enter__(self) -> TFServingHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ gRPC: ModelService

    def reload(self, config: ModelServerConfig, timeout: float | None = None) -> None:
        """Replace the server's whole config with ``config`` (``HandleReloadConfigRequest``).

        Models left out are unloaded. The call blocks until every NEWLY ADDED model has an AVAILABLE version
        (or failed); version changes of existing models apply at the server's next file-system poll and are
        not waited for: follow with :meth:`wait_until_available` / :meth:`wait_until_unloaded`.
        ``timeout`` defaults to the hook's. Raises :class:`ServingReloadError` with the gRPC code and TF
        Serving's message (the server's previous config stays in force, except on DEADLINE_EXCEEDED).
        """
        request = ms.ReloadConfigRequest(config=config.SerializeToString())
        wait = self.timeout if timeout is None else timeout
        try:
            response = self._reload_call(request, timeout=wait)
        except grpc.RpcError as exc:
            code, details = _rpc_code(exc), _rpc_details(exc)
            verb = "did not answer" if code in ("DEADLINE_EXCEEDED", "UNAVAILABLE") else "refused"
            raise ServingReloadError(
                f"TF Serving at {self.grpc_target} {verb} the config reload: {code}: {details}. "
                + _reload_advice(code, wait),
                code=code,
                details=details,
            ) from exc
        # TF Serving also reports the outcome in the response body; a non-OK one is a failure too.
        status = response.status
        if status.error_code != 0:
            code = _status_code_name(status.error_code)
            raise ServingReloadError(
                f"TF Serving at {self.grpc_target} refused the config reload: {code}: {status.error_message}. "
                + _reload_advice(code, wait),
                code=code,
                details=status.error_message,
            )

    def model_status(self, model: str) -> dict[int, tuple[str, str]]:
        """Every version the server has seen of ``model``: version -> (state, load error message).

        States: START, LOADING, AVAILABLE, UNLOADING, END (unloaded, or failed: then the message is the load
        error). ``{}`` if the server does not know the model. Raises :class:`ServingRpcError` otherwise.
        """
        from tensorflow_serving.apis.model_pb2 import ModelSpec

        request = ms.GetModelStatusRequest(model_spec=ModelSpec(name=model).SerializeToString())
        try:
            response = self._status_call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code, details = _rpc_code(exc), _rpc_details(exc)
            if code == "NOT_FOUND":
                return {}
            raise ServingRpcError(
                f"model status of {model!r} from TF Serving at {self.grpc_target} failed: {code}: {details}"
                + (" (is the server running and its gRPC port published?)" if code == "UNAVAILABLE" else ""),
                code=code,
                details=details,
            ) from exc
        return {
            int(entry.version): (ms.STATES.get(entry.state, str(entry.state)), entry.status.error_message)
            for entry in response.model_version_status
        }

    def wait_until_available(
        self,
        model: str,
        version: int,
        *,
        deadline_s: float,
        poll_interval_s: float = 0.5,
        end_grace_s: float = 10.0,
    ) -> None:
        """Poll model status until ``version`` of ``model`` is AVAILABLE.

        Raises :class:`VersionNotAvailable` when the version reaches END (its load failed or it was unloaded;
        the message carries the state and load error) or when ``deadline_s`` seconds pass. An END seen from the
        start may be left over from an earlier load (TF Serving lists every version it ever saw) and is
        only taken as final once it has lasted ``end_grace_s`` (longer than a file-system poll).
        """
        start = time.monotonic()
        deadline = start + deadline_s
        last: tuple[str, str] | None = None
        end_since: float | None = None
        seen_other = False
        rpc_error = ""
        while True:
            now = time.monotonic()
            try:
                last = self.model_status(model).get(version)
                rpc_error = ""
            except ServingRpcError as exc:  # a restarting server: keep polling until the deadline
                rpc_error = str(exc)
            if last is not None and last[0] == AVAILABLE:
                return
            if last is not None and last[0] == END:
                end_since = now if end_since is None else end_since
                if seen_other or now - end_since >= end_grace_s:
                    raise VersionNotAvailable(
                        f"version {version} of model {model!r} did not become AVAILABLE: it reached END"
                        + (f" with error: {last[1].rstrip('.')}" if last[1] else " (unloaded, no load error)")
                        + ". Check that the version directory holds a loadable SavedModel and that the config "
                        "lists the version; the server keeps serving the model's other versions.",
                        model=model,
                        version=version,
                        state=END,
                        error_message=last[1],
                    )
            elif not rpc_error:
                seen_other = True
                end_since = None
            if now >= deadline:
                state = last[0] if last else None
                raise VersionNotAvailable(
                    f"version {version} of model {model!r} was not AVAILABLE after {deadline_s:g}s: "
                    + (
                        f"last state {state}" + (f" ({last[1]})" if last and last[1] else "")
                        if last
                        else "the server does not list the version (is it in the config and its directory staged?)"
                    )
                    + (f"; last status call failed: {rpc_error}" if rpc_error else "")
                    + ". Loading large models takes time: raise the deadline, or check the server's logs.",
                    model=model,
                    version=version,
                    state=state,
                    error_message=last[1] if last else "",
                )
            time.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))

    def wait_until_unloaded(self, model: str, version: int, *, deadline_s: float, poll_interval_s: float = 0.5) -> None:
        """Poll model status until ``version`` of ``model`` is END (or not listed at all).

        Raises :class:`VersionNotUnloaded` when ``deadline_s`` seconds pass first.
        """
        deadline = time.monotonic() + deadline_s
        state: str | None = None
        while True:
            try:
                status = self.model_status(model).get(version)
            except ServingRpcError:
                status = (state or "UNKNOWN", "")  # cannot tell: keep polling
            else:
                if status is None or status[0] == END:
                    return
            state = status[0]
            if time.monotonic() >= deadline:
                raise VersionNotUnloaded(
                    f"version {version} of model {model!r} was still {state} after {deadline_s:g}s; the server "
                    "unloads versions left out of its config at its next file-system poll: check that the "
                    "reload dropped the version and that the server is polling (--file_system_poll_wait_seconds)",
                    model=model,
                    version=version,
                    state=state,
                )
            time.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------ REST

    def predict(
        self,
        model: str,
        instances: list[Any],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
    ) -> dict[str, Any]:
        """POST ``:predict`` in row format (``{"instances": ...}``); returns TF Serving's answer (``predictions``).

        Raises :class:`ServingRequestError` with the HTTP status and TF Serving's ``error`` message.
        """
        body: dict[str, Any] = {"instances": instances}
        if signature_name is not None:
            body["signature_name"] = signature_name
        return self._rest("POST", self._model_path(model, version, label) + ":predict", json=body)

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """GET the model's metadata (``model_spec`` and ``metadata.signature_def``)."""
        return self._rest("GET", self._model_path(model, version, label) + "/metadata")

    def is_ready(self) -> bool:
        """True when the REST port answers HTTP (TF Serving opens it once every configured model is AVAILABLE)."""
        try:
            self.session.get(f"{self.rest_url}/v1/models/tfdeploy-readiness-probe", timeout=min(self.timeout, 5.0))
        except requests.RequestException:
            return False
        return True

    def metrics_page(self, path: str = "/monitoring/prometheus/metrics") -> str:
        """The server's Prometheus page (TF Serving serves it when started with ``--monitoring_config_file``
        enabling ``prometheus_config``); raises :class:`ServingUnavailable` if it does not answer 200."""
        url = f"{self.rest_url}{path}"
        try:
            resp = self.session.get(url, timeout=min(self.timeout, 5.0))
        except requests.RequestException as exc:
            raise ServingUnavailable(
                f"TF Serving metrics at {url} got no answer: {exc}",
                status_code=None,
                error=str(exc),
                method="GET",
                url=url,
            ) from exc
        if resp.status_code != 200:
            raise ServingUnavailable(
                f"TF Serving metrics at {url} -> {resp.status_code}: is the server started with "
                "--monitoring_config_file (prometheus_config enabled)?",
                status_code=resp.status_code,
                error=resp.text[:200],
                method="GET",
                url=url,
            )
        return resp.text

    @staticmethod
    def _model_path(model: str, version: int | None, label: str | None) -> str:
        if version is not None and label is not None:
            raise ValueError(f"give a version or a label of model {model!r}, not both ({version=}, {label=})")
        path = f"/v1/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{quote(label, safe='')}"
        return path

    def _rest(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = f"{self.rest_url}{path}"
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ServingUnavailable(
                f"TF Serving REST {method} {url} got no answer: {exc}; is the server running, its REST port "
                "published, and every configured model AVAILABLE (the port opens only then)?",
                status_code=None,
                error=str(exc),
                method=method,
                url=url,
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400 or not isinstance(body, dict):
            error = body.get("error", "") if isinstance(body, dict) else ""
            error = error or resp.text[:500]
            raise ServingRequestError(
                f"TF Serving REST {method} {path} -> {resp.status_code}: {error}",
                status_code=resp.status_code,
                error=error,
                method=method,
                url=url,
            )
        return body


def _rpc_code(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else "UNKNOWN"


def _rpc_details(exc: grpc.RpcError) -> str:
    return (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)


def _status_code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


def _reload_advice(code: str, timeout: float) -> str:
    return {
        "INVALID_ARGUMENT": "The config is invalid and nothing changed: fix it (see the message) and reload.",
        "FAILED_PRECONDITION": (
            "Nothing changed. A label may only point at a version that is AVAILABLE now: reload with the "
            "version first, wait until it is AVAILABLE, then reload again with the label."
        ),
        "DEADLINE_EXCEEDED": (
            f"No answer within {timeout:g}s; the server may still be loading newly added models: poll model "
            "status, or reload with a longer timeout."
        ),
        "UNAVAILABLE": "The server did not answer: is it running and its gRPC port published?",
    }.get(code, "Check the server's logs.")
