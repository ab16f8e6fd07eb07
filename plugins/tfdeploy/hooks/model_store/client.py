"""The model store's one WebHDFS client, built with timeouts (the only place it is built).

The HDFS provider's ``WebHDFSHook`` builds ``hdfs.InsecureClient`` (or ``KerberosClient``) without a timeout
and probes each NameNode with a blocking socket, so a NameNode (or DataNode) that accepts connections and never
answers would hang the task until its ``execution_timeout``. :class:`TimedWebHDFSHook` is that hook with a
(connect, read) timeout on the probe and on every request of the client (``hdfs.Client``'s ``timeout``), taken
from the Connection's extra ``timeout``: seconds as a number (both) or ``[connect, read]``; default
:data:`DEFAULT_TIMEOUT`. The read timeout bounds each wait for bytes, not a whole transfer, so large files
still stream. A server that does not answer raises :class:`ModelStoreUnavailable` naming it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook
from hdfs import HdfsError

from tfdeploy.core.errors import ModelStoreUnavailable

Timeout = tuple[float, float]
_T = TypeVar("_T")
# (connect, read) seconds: a NameNode answers metadata calls in milliseconds; 60 s covers a busy one.
DEFAULT_TIMEOUT: Timeout = (5.0, 60.0)


def parse_timeout(value: Any, *, conn_id: str) -> Timeout:
    """(connect, read) seconds from a Connection's extra ``timeout`` (a number, ``[connect, read]``, or either as
    JSON text); :data:`DEFAULT_TIMEOUT` when absent. ValueError naming the Connection if it is not one."""
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    pair = value if isinstance(value, list | tuple) else [value, value]
    if len(pair) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in pair):
        return float(pair[0]), float(pair[1])
    raise ValueError(
        f"Connection {conn_id!r}: extra.timeout must be seconds > 0, as a number or [connect, read], got {value!r}"
    )


def describe(exc: BaseException) -> str:
    """One line for a failed request: the exception's class and message (requests' name the host and port)."""
    return f"{type(exc).__name__}: {exc}"


class TimedWebHDFSHook(WebHDFSHook):
    """The provider's ``WebHDFSHook`` with timeouts: the NameNode probe and every request of the client.

    :param webhdfs_conn_id: the HDFS provider's Connection.
    :param timeout: (connect, read) seconds.
    """

    def __init__(self, webhdfs_conn_id: str, *, timeout: Timeout) -> None:
        super().__init__(webhdfs_conn_id=webhdfs_conn_id)
        self.timeout = timeout

    def _find_valid_server(self) -> Any:
        """The first NameNode of the Connection that answers ``GETFILESTATUS /`` within the timeout, as the
        provider's probe does; :class:`ModelStoreUnavailable` naming each one tried otherwise."""
        conn = self.get_connection(self.webhdfs_conn_id)
        tried = []
        for namenode in str(conn.host or "").split(","):
            address = f"{namenode}:{conn.port}"
            try:
                socket.create_connection((namenode, conn.port), timeout=self.timeout[0]).close()
                client = self._get_client(
                    namenode, conn.port, conn.login, conn.password, conn.schema, conn.extra_dejson
                )
                client.status("/")
            except (OSError, HdfsError) as exc:  # requests' errors are OSErrors too
                self.log.warning("NameNode %s did not answer: %s", address, describe(exc))
                tried.append(f"{address} ({describe(exc)})")
                continue
            self.log.info("Using NameNode %s (timeouts: %gs to connect, %gs to answer)", address, *self.timeout)
            return client
        raise ModelStoreUnavailable(
            f"no NameNode of Connection {self.webhdfs_conn_id!r} answered within {self.timeout[0]:g}s to connect and "
            f"{self.timeout[1]:g}s to answer: {'; '.join(tried) or 'it names no host'}. Check that HDFS is up "
            "(`make status`), then retry"
        )

    def _get_client(self, *args: Any, **kwargs: Any) -> Any:
        client = super()._get_client(*args, **kwargs)
        # hdfs.Client's `timeout` constructor argument, which the provider leaves unset: sent with every request
        client._timeout = self.timeout
        return client


# A WebHDFS upload or download streams through one DataNode (the NameNode redirects to it). If that DataNode
# dies, the transfer breaks (connection reset or refused), and for a few seconds after, the NameNode may still
# redirect to it: until it counts the DataNode as stale, 3 s after its last heartbeat on the local stack, which its
# heartbeat check (every 5 s at most) notices 3-8 s after the death. Such a transfer is made again, whole, after
# each of these pauses (seconds): every second at first, so a retry follows soon after the NameNode has stopped
# choosing the dead DataNode; 16 s in all. Only if the last attempt breaks too does the error propagate
# (ModelStoreUnavailable). A DataNode dying elsewhere in a block pipeline is handled inside HDFS (README "HDFS").
DATANODE_RETRY_DELAYS = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0)
DATANODE_FAILURES = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


def retry_datanode_failures(client: Any, log: Any, doing: str, transfer: Callable[[int], _T]) -> _T:
    """``transfer(attempt)`` (attempt 0, 1, ...), made again after a DataNode failure (DATANODE_RETRY_DELAYS).

    Only a connection to a DataNode that was refused, reset or cut is one: a NameNode that does not answer (the
    ``hdfs`` client's ``url``), or a timeout anywhere, fails at once (hung servers must fail within the timeout)."""
    namenodes = {urlsplit(url).netloc for url in str(client.url).split(";")}
    for attempt, delay in enumerate((*DATANODE_RETRY_DELAYS, None)):
        try:
            return transfer(attempt)
        except DATANODE_FAILURES as exc:
            failed = urlsplit(getattr(exc.request, "url", None) or "").netloc
            if delay is None or isinstance(exc, requests.Timeout) or failed in namenodes:
                raise
            log.warning("%s broke (%s): a DataNode may have died; again in %gs", doing, describe(exc), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def unavailable(exc: requests.RequestException, *, conn_id: str, timeout: Timeout, doing: str) -> ModelStoreUnavailable:
    """The error for a WebHDFS request that got no answer (refused, reset or timed out), naming the server."""
    url = getattr(exc.request, "url", None) or ""
    server = urlsplit(url).netloc or "HDFS"
    return ModelStoreUnavailable(
        f"the model store's HDFS server {server} (Connection {conn_id!r}) did not answer while {doing} "
        f"(timeouts: {timeout[0]:g}s to connect, {timeout[1]:g}s to answer): {describe(exc)}. Nothing is left "
        "half-written; check that HDFS is up (`make status`), then retry"
    )
