"""Golden examples, metrics and the thresholds validation judges a version by."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfdeploy.core.golden import GoldenError, judge, load_golden, metric_value


def test_load_golden_and_its_errors(tmp_path):
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"inputs": [[1.0], [2.0]], "labels": [1.0, 2.0]}))
    golden = load_golden(good)
    assert (golden.signature_name, golden.count, golden.rows("x")) == ("serving_default", 2, [[1.0], [2.0]])
    with pytest.raises(GoldenError, match="does not exist"):
        load_golden(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": [[1.0]], "labels": [1.0, 2.0]}))
    with pytest.raises(GoldenError, match="2 labels but inputs of sizes"):
        load_golden(bad)
    bad.write_text("{")
    with pytest.raises(GoldenError, match="not valid JSON"):
        load_golden(bad)


def test_metrics():
    assert metric_value("mae", np.array([[1.0], [3.0]]), [2.0, 2.0]) == pytest.approx(1.0)
    assert metric_value("accuracy", np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), [1, 0, 0]) == pytest.approx(2 / 3)
    with pytest.raises(GoldenError, match="unknown metric"):
        metric_value("f1", np.array([1.0]), [1.0])


def test_absolute_and_change_thresholds():
    assert judge("mae", 0.1, threshold=0.5, baseline=None, max_regression=None) == []
    assert judge("mae", 0.6, threshold=0.5, baseline=None, max_regression=None) == ["mae 0.6 is above the maximum 0.5"]
    [problem] = judge("mae", 0.3, threshold=None, baseline=0.1, max_regression=0.05)
    assert problem.startswith("mae 0.3 is worse than production's 0.1 by 0.2")
    assert judge("accuracy", 0.9, threshold=0.95, baseline=0.92, max_regression=0.01) == [
        "accuracy 0.9 is below the minimum 0.95",
        "accuracy 0.9 is worse than production's 0.92 by 0.02 (allowed: 0.01)",
    ]
    assert judge("accuracy", 0.93, threshold=0.9, baseline=0.92, max_regression=0.0) == []
