"""Export: a SavedModel (or a .keras file, exported with a serving signature first) published to HDFS at
`<base>/<model>/<version>/` atomically, with a manifest of every file's size and sha256.

Same version and content again: a no-op. Same version, different content: an error (never overwritten).
Without a version, content already published is found again (so a retry does not mint a new version),
else the next free integer is taken. An Asset event tells other DAGs a model version was published."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from tfdeploy.hooks.model_store import ModelStoreHook, build_manifest, encode_manifest, manifest_sha256
from tfdeploy.operators.base import DeployStep

MODEL_STORE = Asset("tfdeploy://model-store", extra={"what": "model versions published to HDFS"})
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


class ExportModelOperator(DeployStep):
    template_fields = (*DeployStep.template_fields, "source", "version", "golden_path")

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
        self.source = source
        self.version = version
        self.golden_path = golden_path
        self.write_warmup = write_warmup
        self.warmup_records = warmup_records
        self.base_path = base_path
        self.webhdfs_conn_id = webhdfs_conn_id

    def execute(self, context: Any) -> dict:
        model = self.checked_model_name()
        store = ModelStoreHook(self.webhdfs_conn_id, base_path=self.base_path)
        version = _version(self.version)
        with tempfile.TemporaryDirectory(prefix=f"export-{model}-") as tmp:
            local = self._saved_model(Path(tmp), store)
            if self.write_warmup and self.golden_path:
                self._warmup(local)
            digest = manifest_sha256(encode_manifest(build_manifest(local)))
            if version is None:
                version = self._same_content(store, model, digest) or store.next_version(model)
            result = store.publish(str(local), model, version)
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
        }

    # ------------------------------------------------------------------------------------------------

    def _saved_model(self, tmp: Path, store: ModelStoreHook) -> Path:
        """A local SavedModel directory we may add files to (the source is never modified)."""
        out = tmp / "saved_model"
        src = self.source
        if src.startswith(("webhdfs://", "hdfs://")):
            from urllib.parse import urlsplit

            store.client.download(urlsplit(src).path, str(tmp / "download"), n_threads=4)
            found = next((p.parent for p in (tmp / "download").rglob("saved_model.pb")), None)
            if found is None:
                raise FileNotFoundError(f"no saved_model.pb under {src} on HDFS")
            shutil.copytree(found, out)
            return out
        path = Path(src)
        if path.suffix == ".keras" and path.is_file():
            import tensorflow as tf  # heavy: only inside the task

            keras_model = tf.keras.models.load_model(path)
            keras_model.export(str(out), format="tf_saved_model")  # signatures `serve` and `serving_default`
            return out
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(
                f"source {src} is neither a SavedModel directory (no saved_model.pb) nor a .keras file"
            )
        shutil.copytree(path, out)
        return out

    def _same_content(self, store: ModelStoreHook, model: str, digest: str) -> int | None:
        for existing in reversed(store.versions(model)):
            try:
                if manifest_sha256(encode_manifest(store.read_manifest(model, existing))) == digest:
                    self.log.info("content already published as v%s (a retry?): reusing it", existing)
                    return existing
            except Exception:  # noqa: BLE001 - a version without a readable manifest is simply not a match
                continue
        return None

    def _warmup(self, saved_model: Path) -> None:
        """TF Serving replays assets.extra/tf_serving_warmup_requests at load: the first golden rows."""
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

        golden = json.loads(Path(str(self.golden_path)).read_text())
        signature = golden.get("signature_name", "serving_default")
        loaded = tf.saved_model.load(str(saved_model))
        if signature not in loaded.signatures:
            self.log.warning("no %r signature: no warmup file written (validation will judge the model)", signature)
            return
        specs = loaded.signatures[signature].structured_input_signature[1]
        (saved_model / WARMUP).parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(saved_model / WARMUP)) as writer:
            for i in range(min(self.warmup_records, len(golden["labels"]))):
                request = predict_pb2.PredictRequest()
                request.model_spec.signature_name = signature
                for name, spec in specs.items():
                    rows = golden["inputs"][name] if isinstance(golden["inputs"], dict) else golden["inputs"]
                    value = np.asarray(rows[i : i + 1], dtype=spec.dtype.as_numpy_dtype)
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())


def _version(value: Any) -> int | None:
    if value in (None, "", "None"):
        return None
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"version must be a positive integer or empty, got {value!r}") from None
    if version < 1:
        raise ValueError(f"version must be a positive integer or empty, got {version}")
    return version
