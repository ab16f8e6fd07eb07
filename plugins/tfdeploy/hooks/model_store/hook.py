"""ModelStoreHook: the HDFS model store, ``<base_path>/<model>/<version>/`` = one TensorFlow SavedModel.

Publishing is atomic. Every file is uploaded (in parallel) into a non-numeric temp dir beside the target
(``<model_dir>/.tmp-<version>-<uuid8>``, which TF Serving ignores), the manifest is written next to them,
the sizes are checked with one listing pass, and only then is the temp dir moved into place with WebHDFS
RENAME *with rename2 semantics* (``renameoptions=NONE``): the NameNode refuses when the target exists, so a
numeric version directory is never half-written, never overwritten and never nested into. (The ``hdfs``
client's ``rename`` uses the old semantics, which move the source INTO an existing directory and succeed.)

Publishing is idempotent: the sha256 of the manifest bytes identifies the content, so re-publishing the
same content to an existing version is a no-op (``created=False``) and different content is a
``VersionConflict``. A publisher that loses a race for the same version applies the same rule to the
winner's manifest. Temp dirs that a crashed publisher left behind are removed by later publishes.

Fetching downloads a version (in parallel) into a non-numeric local temp dir, checks every file's size
and sha256 against the manifest while downloading, then renames it to ``<local_dir>/<version>``.

Connection: the HDFS provider's ``webhdfs_default`` (``webhdfs://airflow@127.0.0.1:9870`` locally), used
through the provider's ``WebHDFSHook`` with timeouts (``client.py``: extra ``timeout``, default 5 s to connect and
60 s to answer): one ``hdfs`` client, built lazily, used through its public methods. Every public method raises
``ModelStoreUnavailable`` naming the server when HDFS refuses or does not answer in time. A file upload or download
broken by a DataNode that died (or that the NameNode still redirects to) is made again, whole, for up to 16 s
(``client.DATANODE_RETRY_DELAYS``) before that.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from tfdeploy.core.manifest import Manifest
from tfdeploy.hooks.model_store import fetch as _fetch
from tfdeploy.hooks.model_store import publish as _publish
from tfdeploy.hooks.model_store.listing import ModelStoreBase, hdfs_call


class ModelStoreHook(ModelStoreBase):
    """The HDFS model store (see the module docstring).

    :param webhdfs_conn_id: the HDFS provider's Connection.
    :param base_path: the store's root directory on HDFS.
    :param max_workers: parallel uploads/downloads (at most requests' connection pool size).
    :param timeout: (connect, read) seconds for every WebHDFS request; None: the Connection's extra ``timeout``
        (a number or ``[connect, read]``), else 5 s and 60 s (``client.DEFAULT_TIMEOUT``). A server that does not
        answer in time raises ``ModelStoreUnavailable`` naming it.
    """

    # Publish, fetch, cleanup -------------------------------------------------------------------------------

    @hdfs_call
    def publish(
        self, local_dir: str | os.PathLike[str], model: str, version: int, *, manifest: Manifest | None = None
    ) -> _publish.PublishResult:
        """Publish the SavedModel in local_dir as model/version, atomically and idempotently (module doc).

        ``manifest``: the one the caller already built for local_dir (``build_manifest``), so the files are
        not hashed twice; every file is still checked against it while it is uploaded.
        """
        return _publish.publish_version(self, local_dir, model, version, manifest=manifest)

    @hdfs_call
    def clean_stale_temp(self, model: str, *, older_than: timedelta = _publish.STALE_AFTER) -> list[str]:
        """Delete the model's leftover ``.tmp-*`` dirs whose newest entry is older than older_than."""
        return _publish.clean_stale_temp(self, model, older_than=older_than)

    @hdfs_call
    def fetch(
        self,
        model: str,
        version: int,
        local_dir: str | os.PathLike[str],
        *,
        expected_manifest_sha256: str | None = None,
        durable: bool = False,
    ) -> Path:
        """Download model/version into ``local_dir/<version>``, verified; returns that directory.

        ``expected_manifest_sha256`` (what the registry recorded) pins the exact content. An existing
        ``local_dir/<version>`` is verified in full and kept. ``durable`` fsyncs every file and directory
        before the rename (for a directory TF Serving watches).
        """
        return _fetch.fetch_version(
            self, model, version, local_dir, expected_manifest_sha256=expected_manifest_sha256, durable=durable
        )

    @hdfs_call
    def put_file(self, path: str, data: bytes) -> str:
        """Write ``data`` as the HDFS file ``path`` (any absolute path, not only under ``base_path``) atomically:
        a hidden temp name beside it, then rename2; never overwrites. Returns its ``webhdfs://`` URI."""
        return _publish.put_file(self, path, data)

    @hdfs_call
    def download_tree(self, hdfs_path: str, local_dir: str | os.PathLike[str]) -> Path:
        """Download any HDFS directory (or file) into local_dir (absent or empty); returns local_dir."""
        return _fetch.download_tree(self, hdfs_path, local_dir)
