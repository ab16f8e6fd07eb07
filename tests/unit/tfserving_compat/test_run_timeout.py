"""--rest_api_timeout_in_ms: TF Serving's HttpRestApiHandler puts it in the RunOptions of each Predict, Classify
and Regress session run (http_rest_api_handler.cc); a run that outlives it fails with DEADLINE_EXCEEDED, which
REST answers as 504. Checked with a SavedModel whose output waits on an empty queue: it can only end by the
timeout."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tfserving_compat.errors import ServingError
from tfserving_compat.servable import Servable


@pytest.fixture(scope="module")
def blocking_model(tmp_path_factory):
    import tensorflow as tf

    path = tmp_path_factory.mktemp("blocking") / "1"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape=[None], name="x")
        queue = tf.queue.FIFOQueue(1, tf.float32, shapes=[[]])
        y = tf.identity(x + queue.dequeue(), name="y")
        with tf.compat.v1.Session(graph=graph) as session:
            tf.compat.v1.saved_model.simple_save(session, str(path), inputs={"x": x}, outputs={"y": y})
    return path


def test_a_run_longer_than_the_timeout_fails_with_deadline_exceeded(blocking_model):
    servable = Servable("blocking", 1, str(blocking_model))
    try:
        sig = servable.signature("serving_default")
        t0 = time.monotonic()
        with pytest.raises(ServingError) as err:
            servable.run(sig, {"x": np.array([1.0], dtype=np.float32)}, timeout_in_ms=200)
        assert err.value.code == "DEADLINE_EXCEEDED"
        assert time.monotonic() - t0 < 5
    finally:
        servable.close()


def test_the_rest_api_passes_its_timeout_to_every_run():
    from tfserving_compat.metrics import Metrics
    from tfserving_compat.rest import RestApi

    api = RestApi(manager=None, metrics=Metrics(), timeout_in_ms=1234)  # type: ignore[arg-type]
    assert api.timeout_in_ms == 1234
    assert RestApi(manager=None, metrics=Metrics()).timeout_in_ms == 0  # type: ignore[arg-type]
