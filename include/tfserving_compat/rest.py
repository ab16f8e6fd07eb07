"""The REST API on --rest_api_port, routed and checked in the order TF Serving's handler uses."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format

from . import rest_codec as codec
from .errors import InvalidArgument, ServingError
from .manager import ModelManager
from .metrics import Metrics

log = logging.getLogger("tfserving_compat.rest")

# TF Serving's kPredictionApiGegex / kModelStatusApiRegex (http_rest_api_util.cc).
_PREDICT = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
_V1 = re.compile(r"(?i)/v1/.*")

_STATE_ENUM = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


class RestApi:
    """Request processing, independent of the HTTP server so it can be tested and timed on its own."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def process(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str, str, str]:
        """Returns (HTTP status, JSON body, model name, API method, status code name) for a /v1 request."""
        model, api = "", ""
        try:
            if method == "POST" and (m := _PREDICT.fullmatch(path)):
                model, version, label, api = _decode(m.group(1)), m.group(2), m.group(3), m.group(4).lower()
                out = self._post(api, model, _version(version), _decode(label) if label else None, body)
            elif method == "GET" and (m := _STATUS.fullmatch(path)):
                model = _decode(m.group(1)) if m.group(1) else ""
                if not model:
                    raise InvalidArgument("Missing model name in request.")
                version = _version(m.group(2))
                label = _decode(m.group(3)) if m.group(3) else None
                out = self._metadata(model, version, label) if m.group(4) else self._status(model, version)
            else:
                raise InvalidArgument(f"Malformed request: {method} {path}")
            return 200, out, model, api, "OK"
        except ServingError as exc:
            return exc.http_status, codec.error_body(exc.message), model, api, exc.code
        except Exception as exc:  # never a traceback to the client
            log.exception("internal error on %s %s", method, path)
            return 500, codec.error_body(f"Internal error: {exc}"), model, api, "INTERNAL"

    def _post(self, api: str, model: str, version: int | None, label: str | None, body: bytes) -> bytes:
        doc = codec.parse_body(body)
        if api == "predict":
            signature = codec.signature_name(doc)
            with self.manager.handle(model, version, label) as servable:
                sig = servable.signature(signature)
                tensors, fmt = codec.decode_predict_inputs(doc, {a: dt for a, (_, dt) in sig.inputs.items()})
                t0 = time.perf_counter()
                outputs = servable.run(sig, tensors)
                self.metrics.runtime(model, "Predict", time.perf_counter() - t0)
            return codec.encode_predict_outputs(outputs, fmt)
        signature = codec.signature_name(doc)
        examples = codec.decode_examples(doc)
        from .requests import serialized_examples

        serialized = serialized_examples(examples)
        with self.manager.handle(model, version, label) as servable:
            t0 = time.perf_counter()
            if api == "classify":
                result = servable.classify(signature, serialized)
            else:
                result = servable.regress(signature, serialized)
            self.metrics.runtime(model, api.capitalize(), time.perf_counter() - t0)
        if api == "classify":
            return codec.encode_classify_results(result)
        return codec.encode_regress_results(result)

    def _status(self, model: str, version: int | None) -> bytes:
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        fill_status(response, self.manager.status(model, version))
        return _json(response)

    def _metadata(self, model: str, version: int | None, label: str | None) -> bytes:
        import json

        with self.manager.handle(model, version, label) as servable:
            sigs = servable.signature_def_map()
            served_version = servable.version
        doc = {
            "model_spec": {"name": model, "signature_name": "", "version": str(served_version)},
            "metadata": {"signature_def": json_format.MessageToDict(sigs, **_JSON_OPTS)},
        }
        return json.dumps(doc, separators=(",", ":")).encode()


_JSON_OPTS: dict[str, Any] = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}


def fill_status(response: Any, rows: list[tuple[int, str, ServingError | None]]) -> None:

    for version, state, error in rows:
        entry = response.model_version_status.add()
        entry.version = version
        entry.state = _STATE_ENUM[state]
        entry.status.SetInParent()  # always present, error_code OK when healthy
        if error is not None:
            entry.status.error_code = error.grpc_code.value[0]
            entry.status.error_message = error.message


def _json(message: Any) -> bytes:
    return json_format.MessageToJson(message, indent=None, **_JSON_OPTS).encode()


def _decode(segment: str) -> str:
    return urllib.parse.unquote(segment)


def _version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value >= 2**63:
        raise InvalidArgument(f"Failed to convert version: {text} to numeric.")
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfserving-compat"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall on keep-alive
    api: RestApi
    metrics_path: str | None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        log.debug(format, *args)

    def _respond(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urllib.parse.urlsplit(self.path).path
        if self.metrics_path and path == self.metrics_path and self.command == "GET":
            self._respond(200, self.api.metrics.exposition(), "text/plain; version=0.0.4")
            return
        if not _V1.fullmatch(path):
            self._respond(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html")
            return
        t0 = time.perf_counter()
        status, out, model, api, code = self.api.process(self.command, path, body)
        self._respond(status, out, "application/json")
        self.api.metrics.request(model, api, "REST", code, time.perf_counter() - t0)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class RestServer:
    def __init__(self, api: RestApi, host: str, port: int, metrics_path: str | None) -> None:
        handler = type("Handler", (_Handler,), {"api": api, "metrics_path": metrics_path})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
