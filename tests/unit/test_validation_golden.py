"""Golden examples (read only under the configured roots), metrics and the thresholds validation judges a
version by."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tfdeploy.core.errors import GoldenPathNotAllowed
from tfdeploy.core.golden import GoldenError, allowed_golden_path, judge, load_golden, metric_value
from tfdeploy.settings import get_settings, settings_for


def test_load_golden_and_its_errors(tmp_path):
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"inputs": [[1.0], [2.0]], "labels": [1.0, 2.0]}))
    golden = load_golden(good, roots=[tmp_path])
    assert (golden.signature_name, golden.count, golden.rows("x")) == ("serving_default", 2, [[1.0], [2.0]])
    assert golden.first(1) == [[1.0]]
    with pytest.raises(GoldenError, match="does not exist"):
        load_golden(tmp_path / "missing.json", roots=[tmp_path])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": [[1.0]], "labels": [1.0, 2.0]}))
    with pytest.raises(GoldenError, match="2 labels but inputs of sizes"):
        load_golden(bad, roots=[tmp_path])
    bad.write_text(json.dumps({"inputs": "abc", "labels": [1.0, 2.0, 3.0]}))
    with pytest.raises(GoldenError, match="'inputs' a list or an object"):
        load_golden(bad, roots=[tmp_path])
    bad.write_text("{")
    with pytest.raises(GoldenError, match="not valid JSON"):
        load_golden(bad, roots=[tmp_path])


def test_per_input_rows(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"inputs": {"a": [[1], [2], [3]], "b": [[4], [5], [6]]}, "labels": [0, 1, 0]}))
    golden = load_golden(path, roots=[tmp_path])
    assert golden.rows("b") == [[4], [5], [6]]
    assert golden.first(2) == {"a": [[1], [2]], "b": [[4], [5]]}


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """A golden root holding ``g.json``, and a directory outside it holding ``secret.json`` (valid golden JSON)."""
    root, outside = tmp_path / "golden", tmp_path / "outside"
    for d in (root / "sub", outside):
        d.mkdir(parents=True)
    doc = json.dumps({"inputs": [[1.0]], "labels": [1.0]})
    (root / "sub" / "g.json").write_text(doc)
    (outside / "secret.json").write_text(doc)
    return root, outside


def test_golden_files_are_read_under_the_roots_only(roots):
    root, outside = roots
    assert load_golden(root / "sub" / "g.json", roots=[outside, root]).count == 1
    with pytest.raises(GoldenPathNotAllowed) as err:
        load_golden(outside / "secret.json", roots=[root])
    message = str(err.value)
    assert f"golden examples file {outside / 'secret.json'} is outside" in message
    assert str(root) in message and "GOLDEN_ROOTS" in message and "os.pathsep- or comma-separated" in message
    with pytest.raises(GoldenPathNotAllowed, match="none configured"):
        load_golden(root / "sub" / "g.json", roots=[])


@pytest.mark.parametrize("escape", ["dotdot", "file_link", "dir_link", "prefix"])
def test_no_escape_from_a_root(roots, escape):
    root, outside = roots
    if escape == "dotdot":
        path = root / "sub" / ".." / ".." / "outside" / "secret.json"
    elif escape == "file_link":
        path = root / "link.json"
        path.symlink_to(outside / "secret.json")
    elif escape == "dir_link":
        (root / "elsewhere").symlink_to(outside, target_is_directory=True)
        path = root / "elsewhere" / "secret.json"
    else:  # a sibling whose name starts with the root's: not under it
        sibling = root.with_name(root.name + "-evil")
        sibling.mkdir()
        path = sibling / "g.json"
        path.write_text((root / "sub" / "g.json").read_text())
    with pytest.raises(GoldenPathNotAllowed, match="is outside the directories") as err:
        load_golden(path, roots=[root])
    if escape in ("file_link", "dir_link", "dotdot"):
        assert f"resolves to {outside / 'secret.json'}" in str(err.value)


def test_links_and_dots_that_stay_inside_and_a_linked_root_are_fine(roots, tmp_path):
    root, _ = roots
    (root / "alias.json").symlink_to(root / "sub" / "g.json")
    assert allowed_golden_path(root / "alias.json", [root]) == (root / "sub" / "g.json").resolve()
    assert allowed_golden_path(root / "sub" / ".." / "sub" / "g.json", [root]) == (root / "sub" / "g.json").resolve()
    linked_root = tmp_path / "linked-root"
    linked_root.symlink_to(root, target_is_directory=True)
    assert load_golden(root / "sub" / "g.json", roots=[str(linked_root)]).count == 1
    assert load_golden(linked_root / "sub" / "g.json", roots=[root]).count == 1


def test_golden_roots_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("GOLDEN_ROOTS", raising=False)
    dev, test = settings_for("dev"), settings_for("test")
    assert dev.golden_roots == (dev.example_dir,) == (dev.state_dir / "example",)
    assert test.golden_roots[0] == test.example_dir
    assert test.golden_roots[1].name.startswith("pytest-of-")  # where the tests build their examples
    monkeypatch.setenv("GOLDEN_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}, {tmp_path / 'c'},,")
    assert settings_for("dev").golden_roots == (dev.example_dir, tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert get_settings().sandbox_image == "local/tfdeploy-sandbox:latest"


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
