"""The REST API on --rest_api_port, routed and checked in the order TF Serving's handler uses."""

from __future__ import annotations

import logging
import re
import string
import threading
import time
import urllib.parse
import zlib
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
# kHTTPRestApiHandlerPathRegex (http_rest_api_util.h), matched by RestApiRequestDispatcher::Dispatch
# (http_server.cc) against uri_path(), which is path?query#fragment (evhttp_request.cc), not the path alone.
_V1 = re.compile(r"(?i)/v1/.*")

_STATE_ENUM = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


class RestApi:
    """Request processing, independent of the HTTP server so it can be tested and timed on its own."""

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        *,
        timeout_in_ms: int = 0,
        enable_cors_support: bool = False,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        # --rest_api_timeout_in_ms: HttpRestApiHandler puts it in the RunOptions of every Predict/Classify/
        # Regress Session::Run (http_rest_api_handler.cc); TensorFlow fails the run with DEADLINE_EXCEEDED
        # "Timed out waiting for notification" (HTTP 504). 0 or less: no timeout.
        self.timeout_in_ms = max(0, int(timeout_in_ms or 0))
        # --rest_api_enable_cors_support: AddCORSHeaders on every /v1 answer (http_server.cc).
        self.enable_cors_support = bool(enable_cors_support)

    def process(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str, str, str]:
        """Returns (HTTP status, JSON body, model name, API method, status code name) for a /v1 request."""
        model, api = "", ""
        try:
            if method == "POST" and (m := _PREDICT.fullmatch(path)):
                model, version, label, api = _decode(m.group(1)), m.group(2), m.group(3), m.group(4)
                version, label = _version(version), _decode(label) if label else None
                # The regex is case-insensitive but ProcessRequest compares the method case-sensitively
                # (http_rest_api_handler.cc): ":PREDICT" parses and then stays "Malformed request".
                if api not in ("classify", "regress", "predict"):
                    raise InvalidArgument(f"Malformed request: {method} {path}")
                out = self._post(api, model, version, label, body)
            elif method == "GET" and (m := _STATUS.fullmatch(path)):
                model = _decode(m.group(1)) if m.group(1) else ""
                if not model:
                    raise InvalidArgument("Missing model name in request.")
                version = _version(m.group(2))
                label = _decode(m.group(3)) if m.group(3) else None
                # `model_subresource == "metadata"` is case-sensitive: ".../METADATA" is a status request.
                metadata = m.group(4) == "metadata"
                out = self._metadata(model, version, label) if metadata else self._status(model, version)
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
                outputs = servable.run(sig, tensors, timeout_in_ms=self.timeout_in_ms)
                self.metrics.runtime(model, "Predict", time.perf_counter() - t0)
            return codec.encode_predict_outputs(outputs, fmt)
        signature = codec.signature_name(doc)
        examples = codec.decode_examples(doc)
        from .requests import serialized_examples

        serialized = serialized_examples(examples)
        with self.manager.handle(model, version, label) as servable:
            t0 = time.perf_counter()
            call = servable.classify if api == "classify" else servable.regress
            result = call(signature, serialized, timeout_in_ms=self.timeout_in_ms)
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


# ------------------------------------------------------------------ HTTP layer (TF Serving's net_http on libevent)

# libevent 2.1.12 evhttp_uri_parse (http.c end_of_path): a path holds unreserved characters, sub-delims, ":",
# "@", "/" and %XX escapes; a query or fragment may also hold "?". Anything else fails the parse.
_URI_CHARS = frozenset(string.ascii_letters + string.digits + "-._~" + "!$&'()*+,;=" + ":@/")
_HEX = frozenset(string.hexdigits)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# evutil_strtoll(line, &end, 16) in evhttp_handle_chunked_read: the size must be followed by nothing or " ".
_CHUNK_SIZE = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX])?([0-9A-Fa-f]+)")
_MAX_UNCOMPRESSED = 100 * 1024 * 1024  # ZLib::kMaxUncompressedBytes (util/net_http/compression/gzip_zlib.h)
_PHRASES = {400: "Bad Request", 404: "Not Found", 413: "Request Entity Too Large", 501: "Not Implemented"}


def _end_of_part(text: str, pos: int, allow_query: bool) -> int:
    while pos < len(text):
        char = text[pos]
        if char in _URI_CHARS or (allow_query and char == "?"):
            pos += 1
        elif char == "%" and pos + 2 < len(text) and text[pos + 1] in _HEX and text[pos + 2] in _HEX:
            pos += 3
        else:
            break
    return pos


def uri_path(target: str) -> str | None:
    """EvHTTPRequest::uri_path(): `path[?query][#fragment]` of the request target as ParsedEvRequest::decode
    builds it from evhttp_uri_parse (evhttp_request.cc), or None when libevent cannot parse the target (TF
    Serving then answers 400 from EvHTTPServer::DispatchEvRequest)."""
    rest, has_scheme = target, False
    colon = rest.find(":")
    if colon > 0 and _SCHEME.fullmatch(rest[:colon]):
        rest, has_scheme = rest[colon + 1 :], True
    got_authority = rest.startswith("//")
    if got_authority:
        end = 2
        while end < len(rest) and rest[end] not in "?#/":
            end += 1
        rest = rest[end:]
    pos = _end_of_part(rest, 0, allow_query=False)
    path, out = rest[:pos], rest[:pos]
    if pos < len(rest) and rest[pos] == "?":
        end = _end_of_part(rest, pos + 1, allow_query=True)
        out, pos = out + rest[pos:end], end
    if pos < len(rest) and rest[pos] == "#":
        end = _end_of_part(rest, pos + 1, allow_query=True)
        out, pos = out + rest[pos:end], end
    if pos != len(rest):
        return None
    if not got_authority and path.startswith("//"):
        return None
    if got_authority and path and not path.startswith("/"):
        return None
    if not has_scheme and ":" in path.split("/", 1)[0]:
        return None  # path_matches_noscheme: no colon in a scheme-less first segment
    return out


def gunzip_body(data: bytes) -> bytes:
    """EvHTTPRequest::ReadRequestGzipBytes + ZLib::UncompressGzipAndAllocate (evhttp_request.cc, gzip_zlib.cc):
    the buffer is sized from the gzip footer's length (refused above 100 MiB) and must hold the whole,
    valid stream. On any failure TF Serving only logs "Failed to uncompress the gzipped body" and the
    handler gets an empty body."""
    isize = int.from_bytes(data[-4:], "little") if len(data) > 4 else 0
    if isize > _MAX_UNCOMPRESSED:
        log.error("Failed to uncompress the gzipped body")
        return b""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, isize + 1)
    except zlib.error:
        out = None
    if out is None or not inflater.eof or len(out) != isize or inflater.unused_data or inflater.unconsumed_tail:
        log.error("Failed to uncompress the gzipped body")
        return b""
    return out


class _BadBody(Exception):
    """A body libevent refuses (a malformed chunk): it answers 413 and closes (evhttp_connection_incoming_fail)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfserving-compat"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall on keep-alive
    api: RestApi
    metrics_path: str | None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        log.debug(format, *args)

    def _respond(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _libevent_error(self, status: int) -> None:
        """evhttp_send_error(req, status, nullptr): libevent's HTML page, Content-Type text/html, and close."""
        phrase = _PHRASES[status]
        page = f"<HTML><HEAD>\n<TITLE>{status} {phrase}</TITLE>\n</HEAD><BODY>\n<H1>{phrase}</H1>\n</BODY></HTML>\n"
        self.close_connection = True
        self._respond(status, page.encode(), [("Content-Type", "text/html"), ("Connection", "close")])

    def _read_body(self) -> bytes:
        """The body as libevent hands it over (http.c evhttp_get_body): none for HEAD; chunked when
        Transfer-Encoding is "chunked" (any case); else Content-Length bytes. Then, as
        EvHTTPRequest::ReadRequestBytes does, gunzipped when Content-Encoding contains "gzip"."""
        if self.command == "HEAD":
            return b""
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            body = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        if body and "gzip" in (self.headers.get("Content-Encoding") or ""):
            body = gunzip_body(body)
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _BadBody("connection closed in a chunked body")
            text = line.rstrip(b"\r\n").decode("latin-1")
            if not text:
                continue  # the CRLF after a chunk's data (libevent skips empty lines)
            m = _CHUNK_SIZE.match(text)
            if not m or (m.end() < len(text) and text[m.end()] != " ") or (m.group(1) == "-" and int(m.group(2), 16)):
                raise _BadBody(f"bad chunk size line {text!r}")
            size = int(m.group(2), 16)
            if size == 0:
                break
            data = self.rfile.read(size)
            if len(data) != size:
                raise _BadBody("connection closed in a chunk")
            parts.append(data)
        while True:  # trailer headers, up to an empty line (evhttp_read_trailer)
            line = self.rfile.readline(65537)
            if not line or line in (b"\r\n", b"\n"):
                break
        return b"".join(parts)

    def _handle(self) -> None:
        target = self.requestline.split(" ")[1] if self.requestline.count(" ") >= 1 else self.path
        path = uri_path(target)
        if path is None:  # EvHTTPServer::DispatchEvRequest: decode() failed
            self._libevent_error(400)
            return
        try:
            body = self._read_body()
        except _BadBody as exc:
            log.debug("refusing request body: %s", exc)
            self._libevent_error(413)
            return
        raw_path = path.split("?", 1)[0].split("#", 1)[0]
        if self.metrics_path and raw_path == self.metrics_path:
            # Registered by exact path (uri_handlers_.find(path)), any method; ProcessPrometheusRequest then
            # compares uri_path() (with the query) to the path (http_server.cc).
            headers = [("Content-Type", "text/plain")]
            if path != self.metrics_path:
                message = f"Unexpected path: {path}. Should be {self.metrics_path}"
                self._respond(400, message.encode(), headers)
            else:
                self._respond(200, self.api.metrics.exposition(), headers)
            return
        if not _V1.fullmatch(path):
            self._libevent_error(404)  # no dispatcher took it: evhttp_send_error(req, HTTP_NOTFOUND)
            return
        t0 = time.perf_counter()
        if self.command == "OPTIONS":
            # RestApiRequestDispatcher::ProcessRequest (http_server.cc): a CORS preflight is OK when Origin
            # contains http:// or https://, else FAILED_PRECONDITION; either way the body is empty and no
            # Content-Type is set, so libevent's default applies.
            origin = self.headers.get("Origin") or ""
            status, out, model, api = (200 if re.search(r"https?://", origin) else 400), b"", "", ""
            code = "OK" if status == 200 else "FAILED_PRECONDITION"
            headers = [("Content-Type", "text/html; charset=ISO-8859-1")]
        else:
            status, out, model, api, code = self.api.process(self.command, path, body)
            headers = [("Content-Type", "application/json")]
        if self.api.enable_cors_support:  # AddCORSHeaders (http_rest_api_util.cc)
            headers += [
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"),
            ]
        self._respond(status, out, headers)
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
