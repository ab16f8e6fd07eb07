"""Loading a model version as TF Serving does: open the SavedModel, then replay its warmup requests.

Dependencies flow one way: this module uses both `servable` (the loaded model) and `requests` (the
proto-level request handling that warmup replays), and neither of them imports it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .errors import InvalidArgument, ServingError, Unimplemented
from .requests import run_classify, run_predict, run_regress
from .servable import Servable, tf_error_message

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000
# PredictionLog.log_type field numbers, as TF Serving prints log_type_case() in its message.
_LOG_TYPE_CASE = {"predict_streamed_log": 7, "session_run_log": 5, "multi_inference_log": 4}


def replay_warmup(servable: Servable, metrics: Any = None) -> int:
    """saved_model_warmup.cc RunWarmupRequest / saved_model_warmup_util.cc RunSavedModelWarmup.

    Replays assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog); any error fails the load.
    Accepted: predict_log, classify_log, regress_log, multi_inference_log (which this server cannot run:
    UNIMPLEMENTED); predict_streamed_log and session_run_log fail with UNIMPLEMENTED "Unsupported log_type
    for warmup: <field number>"; a record with no log_type set is skipped (the switch's default). The
    model_warmup_latency and model_warmup_records_read metrics are recorded when the file exists."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    import tensorflow as tf  # heavy: imported on first load, never at module import
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    t0 = time.monotonic()
    status = "OK"
    try:
        try:
            for raw in tf.compat.v1.io.tf_record_iterator(path):
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise InvalidArgument(
                        f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
                    )
                try:
                    log = prediction_log_pb2.PredictionLog.FromString(raw)
                except Exception as exc:
                    raise InvalidArgument(f"Failed to parse warmup record from {path}") from exc
                kind = log.WhichOneof("log_type")
                if kind == "predict_log":
                    run_predict(servable, log.predict_log.request)
                elif kind == "classify_log":
                    run_classify(servable, log.classify_log.request)
                elif kind == "regress_log":
                    run_regress(servable, log.regress_log.request)
                elif kind == "multi_inference_log":
                    raise Unimplemented("MultiInference is not supported by this server (warmup record)")
                elif kind is not None:
                    raise Unimplemented(f"Unsupported log_type for warmup: {_LOG_TYPE_CASE.get(kind, kind)}")
        except tf.errors.DataLossError as exc:
            raise ServingError(
                f"{tf_error_message(exc)}. Please verify your warmup data is in TFRecord format.", "DATA_LOSS"
            ) from exc
    except ServingError as exc:
        status = f"{exc.code}: {exc.message}"
        raise
    finally:
        if metrics is not None:
            metrics.warmup(servable.path, status, time.monotonic() - t0, count)
    return count


def saved_model_error(path: str, exc: BaseException) -> ServingError:
    """The status TensorFlow's C++ LoadSavedModel returns, which TF Serving reports as the version's error.

    A saved_model.pb that does not parse: ReadBinaryProto's DATA_LOSS "Can't parse <dir>/saved_model.pb as
    binary proto" (tensorflow/cc/saved_model/reader.cc). A failing restore (truncated or corrupt variables):
    the kernel's status, e.g. OUT_OF_RANGE "Read less bytes than requested" for a truncated data file."""
    cause = exc.__cause__ if isinstance(exc, ServingError) and exc.__cause__ is not None else exc
    text = str(cause)
    if isinstance(cause, OSError) and text.startswith("Cannot parse file"):
        pb = os.path.join(path, "saved_model.pb" if "saved_model.pb" in text else "saved_model.pbtxt")
        if pb.endswith(".pb"):
            return ServingError(f"Can't parse {pb} as binary proto", "DATA_LOSS")
        return ServingError(f"Can't parse {pb} as text proto", "INVALID_ARGUMENT")
    code = getattr(cause, "error_code", None)
    if isinstance(code, int) and not isinstance(cause, ServingError):
        import grpc

        names = {c.value[0]: c.name for c in grpc.StatusCode}
        return ServingError(_session_message(tf_error_message(cause)), names.get(code, "UNKNOWN"))
    if isinstance(exc, ServingError):
        return exc
    return ServingError(text, "UNKNOWN")


def _session_message(message: str) -> str:
    """Session::Run's text for a kernel error, without the Python client's additions."""
    lines = message.split("\n")
    keep = [
        line
        for line in lines
        if line
        and line != "Graph execution error:"
        and not line.startswith("Detected at node")
        and not line.startswith("Node: ")
    ]
    text = "\n".join(keep)
    return text.split("\n\nOriginal stack trace", 1)[0].split("\nOriginal stack trace", 1)[0].strip()


def load_timed(
    name: str, version: int, path: str, *, warmup: bool, method_name_check: bool = False, metrics: Any = None
) -> tuple[Servable, float, float]:
    """Load (and warm up) a version; returns the servable with load and warmup seconds."""
    t0 = time.monotonic()
    try:
        servable = Servable(name, version, path, method_name_check=method_name_check)
    except Exception as exc:
        if metrics is not None:
            metrics.load_attempt(path, False)
        raise saved_model_error(path, exc) from exc
    t1 = time.monotonic()
    if metrics is not None:
        metrics.load_attempt(path, True, t1 - t0)
    if warmup:
        try:
            replay_warmup(servable, metrics)
        except ServingError:
            servable.close()
            raise
        except Exception as exc:
            servable.close()
            raise InvalidArgument(f"Warmup failed for {path}: {exc}") from exc
    return servable, t1 - t0, time.monotonic() - t1
