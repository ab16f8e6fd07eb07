"""REST drifts from TF Serving fixed in issue 10 (items 4, 9, 11), against the server as a process and as a container.

Each test names the TF Serving (or libevent 2.1.12, which TF Serving's net_http uses) source it follows.
"""

from __future__ import annotations

import gzip
import json
import socket

import pytest
import requests

from .conftest import HP2_2V, HP2_CPU, TESTDATA, copy_model

TWO = "saved_model_half_plus_two_2_versions"
LIBEVENT_PAGE = "<HTML><HEAD>\n<TITLE>{0} {1}</TITLE>\n</HEAD><BODY>\n<H1>{1}</H1>\n</BODY></HTML>\n"
METRICS = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(kind, launcher, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-models")
    copy_model(HP2_2V, root / TWO)
    copy_model(HP2_CPU, root / "half_plus_two")
    (root / "monitoring.config").write_text((TESTDATA / "monitoring_config.txt").read_text())
    config = (
        "model_config_list {\n"
        f"  config {{ name: '{TWO}' base_path: '{{root}}/{TWO}' model_platform: 'tensorflow'\n"
        "           model_version_policy { all {} } }\n"
        "  config { name: 'half_plus_two' base_path: '{root}/half_plus_two' model_platform: 'tensorflow' }\n"
        "}\n"
    )
    seen = "/models" if kind == "container" else str(root)
    (root / "models.config").write_text(config.replace("{root}", seen))
    return launcher(
        root, ["--model_config_file={root}/models.config", "--monitoring_config_file={root}/monitoring.config"]
    )


def raw(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client normalisation); returns status, headers (lower-case names), body."""
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def error_of(resp: requests.Response) -> str:
    assert resp.headers["Content-Type"] == "application/json", resp.headers
    return resp.json()["error"]


PREDICT = json.dumps({"instances": [1.0, 2.0, 5.0]})


# ------------------------------------------------------------------ item 4: query strings (http_server.cc Dispatch,
# evhttp_request.cc ParsedEvRequest::decode: uri_path() is path?query#fragment and every regex sees all of it)


def test_query_string_on_predict_is_malformed(server):
    resp = requests.post(f"{server.url}/v1/models/half_plus_two:predict?x=1", data=PREDICT, timeout=10)
    assert resp.status_code == 400
    assert error_of(resp) == "Malformed request: POST /v1/models/half_plus_two:predict?x=1"


def test_query_string_on_status_becomes_part_of_model_name(server):
    resp = requests.get(f"{server.url}/v1/models/half_plus_two?x=1", timeout=10)
    assert resp.status_code == 404
    assert error_of(resp) == "Could not find any versions of model half_plus_two?x=1"


def test_query_string_on_metadata_is_malformed(server):
    resp = requests.get(f"{server.url}/v1/models/half_plus_two/metadata?x=1", timeout=10)
    assert resp.status_code == 400
    assert error_of(resp) == "Malformed request: GET /v1/models/half_plus_two/metadata?x=1"


def test_query_string_on_metrics_path(server):
    # Registered by exact path; ProcessPrometheusRequest compares uri_path() with the query (http_server.cc).
    resp = requests.get(f"{server.url}{METRICS}?x=1", timeout=10)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "text/plain"
    assert resp.text == f"Unexpected path: {METRICS}?x=1. Should be {METRICS}"
    assert requests.post(f"{server.url}{METRICS}", timeout=10).status_code == 200  # any method


def test_unparseable_uri_is_libevent_400(server):
    # EvHTTPServer::DispatchEvRequest: evhttp_uri_parse fails -> evhttp_send_error(req, HTTP_BADREQUEST).
    status, headers, body = raw(server, b"GET /v1/models/x%zz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 400 and headers["content-type"] == "text/html"
    assert body.decode() == LIBEVENT_PAGE.format(400, "Bad Request")


def test_unknown_path_is_libevent_404(server):
    resp = requests.get(f"{server.url}/v2/models/x", timeout=10)
    assert resp.status_code == 404 and resp.headers["Content-Type"] == "text/html"
    assert resp.text == LIBEVENT_PAGE.format(404, "Not Found")


# ------------------------------------------------------------------ item 11: case, leading zeros
# (http_rest_api_util.cc kPredictionApiGegex/kModelStatusApiRegex are (?i); ProcessRequest in
# http_rest_api_handler.cc compares the method and "metadata" case-sensitively; names are looked up as given)


def test_path_case_insensitive_but_method_is_not(server):
    resp = requests.post(f"{server.url}/V1/MODELS/{TWO}/VERSIONS/123:predict", data=PREDICT, timeout=10)
    assert resp.status_code == 200 and resp.json() == {"predictions": [2.5, 3.0, 4.5]}
    resp = requests.post(f"{server.url}/v1/models/{TWO}:PREDICT", data=PREDICT, timeout=10)
    assert resp.status_code == 400 and error_of(resp) == f"Malformed request: POST /v1/models/{TWO}:PREDICT"


def test_uppercase_metadata_is_a_status_request(server):
    resp = requests.get(f"{server.url}/v1/models/half_plus_two/METADATA", timeout=10)
    assert resp.status_code == 200 and "model_version_status" in resp.json()


def test_model_name_is_case_sensitive(server):
    resp = requests.get(f"{server.url}/v1/models/Half_Plus_Two", timeout=10)
    assert resp.status_code == 404 and error_of(resp) == "Could not find any versions of model Half_Plus_Two"


def test_version_with_leading_zeros(server):
    # ParseModelInfo: absl::SimpleAtoi("000124") == 124.
    resp = requests.post(f"{server.url}/v1/models/{TWO}/versions/000124:predict", data=PREDICT, timeout=10)
    assert resp.status_code == 200
    resp = requests.get(f"{server.url}/v1/models/{TWO}/versions/000124", timeout=10)
    assert [v["version"] for v in resp.json()["model_version_status"]] == ["124"]


# ------------------------------------------------------------------ item 11: predict edge messages (json_tensor.cc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"instances": [[1.0, 2.0], [3.0]]},
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting tensor size: 2 but got: 1",
        ),
        ({"instances": [{"x": [1.0]}, [2.0]]}, "Expecting object but got list at item 1 of input list"),
        ({"instances": [[1.0], {"x": [2.0]}]}, "Expecting value/list but got object at item 1 of input list"),
    ],
)
def test_predict_edge_messages(server, body, message):
    resp = requests.post(f"{server.url}/v1/models/half_plus_two:predict", data=json.dumps(body), timeout=10)
    assert resp.status_code == 400 and error_of(resp) == message


def test_predict_empty_instances(server):
    resp = requests.post(f"{server.url}/v1/models/half_plus_two:predict", data='{"instances": []}', timeout=10)
    assert resp.status_code == 400 and error_of(resp).endswith(" No values in 'instances' array")


# ------------------------------------------------------------------ item 9: bodies (evhttp_request.cc, libevent http.c)


def test_gzip_body(server):
    resp = requests.post(
        f"{server.url}/v1/models/half_plus_two:predict",
        data=gzip.compress(PREDICT.encode()),
        headers={"Content-Encoding": "gzip"},
        timeout=10,
    )
    assert resp.status_code == 200 and resp.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_corrupt_gzip_body_reaches_handler_empty(server):
    # ReadRequestGzipBytes returns nullptr on a zlib error: the handler sees an empty body.
    bad = gzip.compress(PREDICT.encode())[:-6] + b"\0\0\0\0\0\0"
    resp = requests.post(
        f"{server.url}/v1/models/half_plus_two:predict", data=bad, headers={"Content-Encoding": "gzip"}, timeout=10
    )
    assert resp.status_code == 400 and error_of(resp) == "JSON Parse error: The document is empty"


def test_gzip_footer_over_100mib_is_refused(server):
    # UncompressGzipAndAllocate: the footer's length above ZLib::kMaxUncompressedBytes fails.
    body = gzip.compress(PREDICT.encode())[:-4] + (101 * 1024 * 1024).to_bytes(4, "little")
    resp = requests.post(
        f"{server.url}/v1/models/half_plus_two:predict", data=body, headers={"Content-Encoding": "x-gzip"}, timeout=10
    )
    assert resp.status_code == 400 and error_of(resp) == "JSON Parse error: The document is empty"


def test_chunked_body(server):
    data = PREDICT.encode()
    resp = requests.post(f"{server.url}/v1/models/half_plus_two:predict", data=iter([data[:5], data[5:]]), timeout=10)
    assert resp.status_code == 200 and resp.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_malformed_chunk_is_libevent_413(server):
    # evhttp_handle_chunked_read -> DATA_CORRUPTED -> EVREQ_HTTP_DATA_TOO_LONG -> HTTP_ENTITYTOOLARGE.
    req = (
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;x=y\r\nhello\r\n0\r\n\r\n"
    )
    status, _, body = raw(server, req)
    assert status == 413 and body.decode() == LIBEVENT_PAGE.format(413, "Request Entity Too Large")


# ------------------------------------------------------------------ item 9: OPTIONS (http_server.cc ProcessRequest)


def test_options_without_origin(server):
    resp = requests.options(f"{server.url}/v1/models/half_plus_two", timeout=10)
    assert resp.status_code == 400 and resp.content == b""
    assert "Access-Control-Allow-Origin" not in resp.headers  # only with --rest_api_enable_cors_support


def test_options_with_origin(server):
    resp = requests.options(f"{server.url}/v1/models/half_plus_two", headers={"Origin": "https://a.b"}, timeout=10)
    assert resp.status_code == 200 and resp.content == b""
    resp = requests.options(f"{server.url}/v1/models/half_plus_two", headers={"Origin": "ftp://a.b"}, timeout=10)
    assert resp.status_code == 400
