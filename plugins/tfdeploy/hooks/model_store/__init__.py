"""The HDFS model store: ``<base_path>/<model>/<version>/`` = one TensorFlow SavedModel and its manifest.

``hook`` (the client, paths, listing, manifest reads), ``publish`` (atomic, idempotent publishing),
``fetch`` (verified downloads). The manifest format itself is :mod:`tfdeploy.core.manifest`; the errors are
in :mod:`tfdeploy.core.errors`.
"""

from __future__ import annotations

from tfdeploy.hooks.model_store.hook import ModelStoreHook
from tfdeploy.hooks.model_store.publish import PublishResult

__all__ = ["ModelStoreHook", "PublishResult"]
