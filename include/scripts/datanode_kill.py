"""Kill an HDFS DataNode of the local stack in the middle of a model store upload (SIGKILL, by PID).

Used by tests/integration/test_hdfs_datanodes.py and bench/hdfs_datanode_kill.py. While a
:class:`MidUploadKill` is active, the upload of the ``nth`` file of a ``ModelStoreHook`` (counted in the order
their bytes start to flow to a DataNode) is held after its first chunk has left; then the DataNode that upload
streams through (``which="receiving"``: the client's connection breaks), the other one (``"other"``: the
block pipeline loses a member) or both (``"both"``: nothing can be written) is killed, and the upload goes on.
:meth:`restart` starts the killed DataNodes again (``stack.up_datanode``) and waits until they serve.

It hooks two seams, for the test's duration only: ``tfdeploy.core.manifest.open_in_tree`` (how the publish
reads each file) and the hook's ``hdfs`` client's ``_request`` (to learn which DataNode a stream goes to).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from types import TracebackType
from typing import Any, BinaryIO
from unittest import mock
from urllib.parse import urlsplit

import stack
from tfdeploy.core import manifest as mf
from tfdeploy.settings import Settings


class MidUploadKill:
    """SIGKILL a DataNode (or both) while the ``nth`` file of ``store``'s upload is half sent (module doc)."""

    def __init__(self, settings: Settings, store: Any, *, nth: int = 2, which: str = "receiving") -> None:
        if which not in ("receiving", "other", "both"):
            raise ValueError(f"which must be 'receiving', 'other' or 'both', got {which!r}")
        self.settings = settings
        self.store = store
        self.nth = nth
        self.which = which
        self.killed: list[str] = []  # the DataNodes' names, once killed
        self.receiving: str | None = None  # the DataNode the held upload streamed through
        self.killed_at: float | None = None  # time.monotonic()
        self._by_http_port = {dn.http_port: dn.name for dn in stack.datanodes(settings)}
        self._url = threading.local()
        self._started = 0
        self._lock = threading.Lock()
        self._patches: list[Any] = []

    # seams ---------------------------------------------------------------------------------------------------

    def _datanode_of_thread(self) -> str | None:
        url = getattr(self._url, "value", None)
        return self._by_http_port.get(urlsplit(url).port or 0) if url else None

    def _record_url(self, original: Any) -> Any:
        def request(method: str, url: str, **kwargs: Any) -> Any:
            self._url.value = url
            return original(method, url, **kwargs)

        return request

    def _open(self, original: Any) -> Any:
        kill = self

        class Held:
            """The file, read as before; the nth upload kills a DataNode before its second chunk is read."""

            def __init__(self, fh: BinaryIO) -> None:
                self._fh = fh
                self._ordinal = 0
                self._reads = 0

            def read(self, size: int = -1) -> bytes:
                receiving = kill._datanode_of_thread()
                if receiving is not None:  # streaming to a DataNode (not hashing the file)
                    if self._ordinal == 0:
                        with kill._lock:
                            kill._started += 1
                            self._ordinal = kill._started
                    self._reads += 1
                    if self._ordinal == kill.nth and self._reads == 2:
                        kill._kill(receiving)
                return self._fh.read(size)

            def __enter__(self) -> Held:
                return self

            def __exit__(self, *exc: object) -> None:
                self._fh.close()

        def open_in_tree(root: Any, rel: str) -> Any:
            return Held(original(root, rel))

        return open_in_tree

    def _kill(self, receiving: str) -> None:
        with self._lock:
            if self.killed:
                return
            names = [dn.name for dn in stack.datanodes(self.settings)]
            others = [n for n in names if n != receiving]
            victims = {"receiving": [receiving], "other": others[:1], "both": [receiving, *others]}[self.which]
            pids = [pid for victim in victims if (pid := stack.running_pid(self.settings, victim)) is not None]
            if len(pids) != len(victims):
                raise RuntimeError(f"DataNodes {victims} are not all running: nothing to kill")
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(stack._alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.receiving, self.killed, self.killed_at = receiving, victims, time.monotonic()

    # use -----------------------------------------------------------------------------------------------------

    def __enter__(self) -> MidUploadKill:
        client = self.store.client
        self._patches = [
            mock.patch.object(mf, "open_in_tree", self._open(mf.open_in_tree)),
            mock.patch.object(client, "_request", self._record_url(client._request)),
        ]
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for patch in reversed(self._patches):
            with contextlib.suppress(RuntimeError):
                patch.stop()

    def restart(self) -> float:
        """Start the killed DataNodes again and wait until they serve; returns the seconds that took (0 if none
        was killed)."""
        t0 = time.monotonic()
        for name in self.killed:
            stack.up_datanode(self.settings, name)
        return time.monotonic() - t0 if self.killed else 0.0


def restart_stopped_datanodes(settings: Settings) -> list[str]:
    """Start every DataNode of the stack that does not run (after a test killed one); returns their names."""
    started = []
    for dn in stack.datanodes(settings):
        if stack.running_pid(settings, dn.name) is None:
            stack.up_datanode(settings, dn.name)
            started.append(dn.name)
    return started
