"""Loading a model version as TF Serving does: open the SavedModel, then replay its warmup requests.

Dependencies flow one way: this module uses both `servable` (the loaded model) and `requests` (the
proto-level request handling that warmup replays), and neither of them imports it.
"""

from __future__ import annotations

import os
import time

from .errors import InvalidArgument, ServingError
from .requests import run_classify, run_predict, run_regress
from .servable import Servable, tf_error_message

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def replay_warmup(servable: Servable) -> int:
    """Replay assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog); any error fails the load."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    import tensorflow as tf  # heavy: imported on first load, never at module import
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    try:
        for raw in tf.compat.v1.io.tf_record_iterator(path):
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
            else:
                raise InvalidArgument(f"Unsupported log_type for warmup: {kind}")
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise InvalidArgument(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
    except tf.errors.DataLossError as exc:
        raise ServingError(
            f"{tf_error_message(exc)}. Please verify your warmup data is in TFRecord format.", "DATA_LOSS"
        ) from exc
    return count


def load_timed(
    name: str, version: int, path: str, *, warmup: bool, method_name_check: bool = False
) -> tuple[Servable, float, float]:
    """Load (and warm up) a version; returns the servable with load and warmup seconds."""
    t0 = time.monotonic()
    servable = Servable(name, version, path, method_name_check=method_name_check)
    t1 = time.monotonic()
    if warmup:
        try:
            replay_warmup(servable)
        except ServingError:
            servable.close()
            raise
        except Exception as exc:
            servable.close()
            raise InvalidArgument(f"Warmup failed for {path}: {exc}") from exc
    return servable, t1 - t0, time.monotonic() - t1
