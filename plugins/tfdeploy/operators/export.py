"""Export: a SavedModel (or a .keras file, exported with a serving signature first) published to HDFS at
``<base>/<model>/<version>/`` atomically, with a manifest of every file's size and sha256.

It also decides, before anything changes, what this run is: the content's digest finds the version that
already holds it (if any), and the registry's state of that version says whether to release it, do
nothing (already in production), or refuse (superseded, rejected, archived: with the reason).
Same version and content again: a no-op. Same version, different content: an error (never overwritten).
An Asset event tells other DAGs a model version was published. Model code (loading a ``.keras`` file, the warmup
records) runs only in the sandbox (``hooks/sandbox.py``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from tfdeploy.core.errors import NotFound
from tfdeploy.core.golden import load_golden
from tfdeploy.core.manifest import build_manifest, check_links, encode_manifest, manifest_sha256
from tfdeploy.core.states import ReleaseAction, plan_release
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.base import typed
from tfdeploy.operators.sandboxed import SandboxStep
from tfdeploy.settings import get_settings

MODEL_STORE = Asset("tfdeploy://model-store", extra={"what": "model versions published to HDFS"})
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


class ExportModelOperator(SandboxStep):
    """Publishes a trained model to the HDFS model store as an immutable version, and plans the release.

    :param source: a SavedModel directory, a ``.keras`` file, or ``webhdfs:///path`` of a SavedModel on HDFS.
    :param version: the version to publish as; None: the version that already holds this content, else the
        next free one.
    :param golden_path: golden examples JSON (under one of ``GOLDEN_ROOTS``); its first rows become TF Serving's
        warmup requests.
    :param write_warmup: write ``assets.extra/tf_serving_warmup_requests`` (needs ``golden_path``).
    :param warmup_records: how many golden rows to replay at load.
    :param base_path: the model store's root on HDFS.
    :param webhdfs_conn_id: the HDFS provider's Connection.
    :param kwargs: ``SandboxStep``'s (``sandbox_limits``, ``sandbox_image``, ``sandbox_conn_id``: a ``.keras``
        source is exported, and warmup records written, only in the sandbox) and ``DeployStep``'s.
    """

    template_fields = (*SandboxStep.template_fields, "source", "version", "golden_path")

    def __init__(
        self,
        *,
        source: str,
        version: int | str | None = None,
        golden_path: str | None = None,
        write_warmup: bool = True,
        warmup_records: int = 10,
        base_path: str = "/models",
        webhdfs_conn_id: str = "webhdfs_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("outlets", [MODEL_STORE])
        super().__init__(**kwargs)
        if not source:
            raise ValueError(f"{self.task_id}: source is required (a SavedModel directory or a .keras file)")
        if warmup_records < 1:
            raise ValueError(f"{self.task_id}: warmup_records must be at least 1, got {warmup_records}")
        self.source = source
        self.version = version
        self.golden_path = golden_path
        self.write_warmup = write_warmup
        self.warmup_records = warmup_records
        self.base_path = base_path
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        version = typed(self.version, int, "version", optional=True)
        if version is not None and version < 1:
            raise AirflowFailException(f"version must be a positive integer or empty, got {version}")
        store = ModelStoreHook(self.webhdfs_conn_id, base_path=self.base_path)
        with tempfile.TemporaryDirectory(prefix=f"export-{model}-") as tmp:
            local = self._saved_model(Path(tmp), store)
            manifest = build_manifest(local, max_workers=store.max_workers)
            digest = manifest_sha256(encode_manifest(manifest))
            if version is None:
                version = store.find_version(model, digest)
                if version is not None:
                    self.log.info("this content is already published as v%s: reusing it", version)
                else:
                    version = store.next_version(model)
            action, reason = plan_release(model, version, self._state(model, version))
            self.log.info("release plan: %s (%s)", action.value, reason)
            if action == ReleaseAction.REFUSE:
                raise AirflowFailException(f"release refused, nothing changed: {reason}")
            result = store.publish(str(local), model, version, manifest=manifest)
        self.log.info(
            "%s %s v%s at %s (%d files, %d bytes, manifest %s)",
            "Published" if result.created else "Already had",
            model,
            result.version,
            result.uri,
            result.files,
            result.bytes,
            result.manifest_sha256[:12],
        )
        context["outlet_events"][MODEL_STORE].extra = {"model": model, "version": result.version, "uri": result.uri}
        return {
            "model": model,
            "version": result.version,
            "uri": result.uri,
            "manifest_sha256": result.manifest_sha256,
            "source": self.source,
            "created": result.created,
            "action": action.value,
            "reason": reason,
        }

    # ------------------------------------------------------------------------------------------------

    def _state(self, model: str, version: int) -> Any:
        try:
            return self.registry.get_version(model, version).state
        except NotFound:
            return None

    def _saved_model(self, tmp: Path, store: ModelStoreHook) -> Path:
        """A local SavedModel directory we may add files to (the source is never modified), with TF Serving's
        warmup records when asked. A ``.keras`` file is loaded and exported only in the sandbox."""
        out = tmp / "saved_model"
        src = self.source
        warmup = self._warmup_spec()
        if src.startswith(("webhdfs://", "hdfs://")):
            store.download_tree(urlsplit(src).path, tmp / "download")
            found = next((p.parent for p in (tmp / "download").rglob("saved_model.pb")), None)
            if found is None:
                raise FileNotFoundError(f"no saved_model.pb under {src} on HDFS")
            shutil.copytree(found, out)
        else:
            path = Path(src)
            if path.suffix == ".keras" and path.is_file():
                copy = tmp / "source.keras"  # the sandbox gets our own copy, read-only
                shutil.copyfile(path, copy)
                result, produced, run = self.sandbox.export(work_dir=tmp, keras_file=copy, warmup=warmup)
                self.log.info("exported %s in the sandbox: %s", src, run.describe())
                os.rename(produced / "saved_model", out)
                self._place_warmup(result, produced, out)
                return out
            if not (path / "saved_model.pb").is_file():
                raise FileNotFoundError(
                    f"source {src} is neither a SavedModel directory (no saved_model.pb) nor a .keras file"
                )
            check_links(path)  # copytree follows links: none may lead out of the model directory
            shutil.copytree(path, out)
        if warmup is not None:
            result, produced, run = self.sandbox.export(work_dir=tmp, saved_model=out, warmup=warmup)
            self.log.info("warmup records written in the sandbox: %s", run.describe())
            self._place_warmup(result, produced, out)
        return out

    def _warmup_spec(self) -> dict[str, Any] | None:
        """What the sandbox needs for TF Serving's warmup records: the first golden rows and their signature."""
        if not (self.write_warmup and self.golden_path):
            return None
        golden = load_golden(str(self.golden_path), roots=get_settings().golden_roots)
        return {"signature_name": golden.signature_name, "inputs": golden.first(self.warmup_records)}

    def _place_warmup(self, result: dict[str, Any], produced: Path, saved_model: Path) -> None:
        """TF Serving replays assets.extra/tf_serving_warmup_requests at load: the file the sandbox wrote."""
        warmup = result.get("warmup")
        if not warmup:
            return
        if "skipped" in warmup:
            self.log.warning("no warmup file written (validation will judge the model): %s", warmup["skipped"])
            return
        (saved_model / WARMUP).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(produced / WARMUP.name, saved_model / WARMUP)
        self.log.info("warmup file: %s records of %r", warmup.get("written"), warmup.get("signature_name"))
