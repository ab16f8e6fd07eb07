"""One sandbox job: read the job file, load and run the model as asked, write the result file.

The job is a JSON object; every path in it is a path inside the container (the hook mounts the inputs read-only
under ``/in`` and the job file under ``/job``; ``/out`` is the only writable directory besides ``/tmp``)::

    {"protocol": 1, "kind": "validate" | "export", "result": "/out/result.json", ...}

``validate``: ``model`` (a SavedModel directory), ``signature_name``, ``inputs`` (the golden rows: a list of rows
for a single-input signature, or ``{input name: rows}``), ``latency_runs`` (0: no latency measured). Result::

    {"signatures": {name: {"inputs": {alias: dtype}, "outputs": {alias: dtype}}},   # as TF Serving reads them
     "outputs": {alias: predictions} | null,    # null: the signature is missing, nothing was run
     "error": "..." | null,                     # the model could not be loaded or run on the golden rows
     "latency_p50_ms": float | null}            # median of latency_runs single-row calls, after one warm call

``export``: ``keras`` (a ``.keras`` file, loaded with Keras' ``safe_mode=True`` and exported as a SavedModel with
the ``serve`` and ``serving_default`` signatures into ``out``) and/or ``saved_model`` (a SavedModel directory),
and ``warmup`` (``{"signature_name", "inputs", "path"}`` or null): TF Serving's warmup records (one
``PredictRequest`` per golden row given) written to ``path``, from the exported model or the SavedModel. Result::

    {"exported": bool, "warmup": {"written": n, "signature_name": s} | {"skipped": reason} | null}

Every result also has ``"ok": true``; a job that could not be done at all has ``{"ok": false, "error": "..."}``
and the process exits 1.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PROTOCOL = 1
DEFAULT_JOB = "/job/job.json"
DEFAULT_RESULT = "/out/result.json"
MAX_ERROR = 4000


class JobError(Exception):
    """The job file asks for something this sandbox does not do."""


def main(argv: list[str]) -> int:
    job_path = Path(argv[0] if argv else DEFAULT_JOB)
    result_path = Path(DEFAULT_RESULT)
    try:
        job = json.loads(job_path.read_text())
        if not isinstance(job, dict):
            raise JobError(f"{job_path} holds {type(job).__name__}, not a job object")
        result_path = Path(job.get("result") or DEFAULT_RESULT)
        if job.get("protocol") != PROTOCOL:
            raise JobError(f"job protocol {job.get('protocol')!r}; this sandbox speaks {PROTOCOL}: rebuild the image")
        kind = job.get("kind")
        if kind not in KINDS:
            raise JobError(f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
        doc: dict[str, Any] = {"ok": True, **KINDS[kind](job)}
        status = 0
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the result
        traceback.print_exc()
        doc = {"ok": False, "error": _describe(exc)}
        status = 1
    tmp = result_path.with_name(f".{result_path.name}.tmp")
    tmp.write_text(json.dumps(doc, default=_jsonable))
    os.replace(tmp, result_path)
    return status


# --------------------------------------------------------------------------- validate


def validate(job: dict[str, Any]) -> dict[str, Any]:
    model = str(job["model"])
    name = str(job["signature_name"])
    signatures = served_signatures(model)
    result: dict[str, Any] = {"signatures": signatures, "outputs": None, "error": None, "latency_p50_ms": None}
    if name not in signatures:
        return result
    try:
        import numpy as np
        import tensorflow as tf

        fn = tf.saved_model.load(model).signatures[name]
        feeds = {
            alias: tf.constant(np.asarray(rows_for(job["inputs"], alias)), dtype=tf.as_dtype(dtype))
            for alias, dtype in signatures[name]["inputs"].items()
        }
        outputs = fn(**feeds)
        result["outputs"] = {alias: tensor.numpy().tolist() for alias, tensor in outputs.items()}
        runs = int(job.get("latency_runs") or 0)
        if runs > 0:
            one = {alias: tensor[:1] for alias, tensor in feeds.items()}
            fn(**one)
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn(**one)
                samples.append((time.perf_counter() - t0) * 1e3)
            result["latency_p50_ms"] = statistics.median(samples)
    except Exception as exc:  # noqa: BLE001 - the model's own failure: reported, judged by the caller
        traceback.print_exc()
        result["error"] = _describe(exc)
    return result


def served_signatures(saved_model_dir: str) -> dict[str, dict[str, dict[str, str]]]:
    """Signatures of the ``serve`` MetaGraph as TF Serving sees them: {name: {inputs, outputs: {alias: dtype}}}."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    pb = saved_model_pb2.SavedModel.FromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    meta = next((m for m in pb.meta_graphs if "serve" in m.meta_info_def.tags), None)
    if meta is None:
        return {}
    return {
        name: {
            "inputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
            "outputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.outputs.items()},
        }
        for name, sig in meta.signature_def.items()
        if not name.startswith("__")
    }


def rows_for(inputs: Any, alias: str) -> Any:
    """The golden rows of one input: ``inputs[alias]`` for per-input rows, the rows themselves otherwise."""
    if isinstance(inputs, dict):
        if alias not in inputs:
            raise JobError(f"the golden inputs have no rows for input {alias!r} (they have: {', '.join(inputs)})")
        return inputs[alias]
    return inputs


# --------------------------------------------------------------------------- export


def export(job: dict[str, Any]) -> dict[str, Any]:
    model_dir = job.get("saved_model")
    result: dict[str, Any] = {"exported": False, "warmup": None}
    if job.get("keras"):
        import tensorflow as tf

        keras_model = tf.keras.models.load_model(str(job["keras"]), safe_mode=True)
        keras_model.export(str(job["out"]), format="tf_saved_model")  # signatures `serve` and `serving_default`
        model_dir = str(job["out"])
        result["exported"] = True
    if job.get("warmup"):
        if not model_dir:
            raise JobError("warmup needs a model: give keras or saved_model")
        result["warmup"] = write_warmup(str(model_dir), job["warmup"])
    return result


def write_warmup(saved_model: str, spec: dict[str, Any]) -> dict[str, Any]:
    """TF Serving replays ``assets.extra/tf_serving_warmup_requests`` at load: one PredictRequest per golden row."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    signature = str(spec.get("signature_name") or "serving_default")
    loaded = tf.saved_model.load(saved_model)
    if signature not in loaded.signatures:
        return {"skipped": f"the model has no {signature!r} signature (it has: {', '.join(loaded.signatures)})"}
    specs = loaded.signatures[signature].structured_input_signature[1]
    rows = {name: rows_for(spec["inputs"], name) for name in specs}
    count = min((len(r) for r in rows.values()), default=0)
    with tf.io.TFRecordWriter(str(spec["path"])) as writer:
        for i in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            for name, tensor_spec in specs.items():
                value = np.asarray(rows[name][i : i + 1], dtype=tensor_spec.dtype.as_numpy_dtype)
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return {"written": count, "signature_name": signature}


KINDS = {"validate": validate, "export": export}


# --------------------------------------------------------------------------- helpers


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


if __name__ == "__main__":  # pragma: no cover - `python -m tfdeploy_sandbox` is the entry point
    sys.exit(main(sys.argv[1:]))
