"""RegisterModelOperator: the exported version and its lineage go into the (fake) registry."""

from __future__ import annotations

import pytest

from tests.unit.operators.conftest import MODEL, SHA, FakeRegistry, Lineage, exported, inject, make_context
from tfdeploy.core.errors import Conflict
from tfdeploy.core.states import ModelState
from tfdeploy.operators.register import RegisterModelOperator


def register(registry: FakeRegistry) -> RegisterModelOperator:
    return inject(RegisterModelOperator(task_id="register", model_name=MODEL), registry=registry)


def test_registers_the_exported_version_with_its_lineage(registry: FakeRegistry, lineage: Lineage) -> None:
    context = make_context("register", {"export": exported(3)})

    result = register(registry).execute(context)

    assert result == {"model": MODEL, "version": 3, "state": "registered"}
    record = registry.versions[(MODEL, 3)]
    assert record.state == ModelState.REGISTERED
    assert (record.hdfs_uri, record.manifest_sha256, record.source) == (
        f"webhdfs://namenode/models/{MODEL}/3",
        SHA,
        "/data/saved_model",
    )
    assert (record.dag_id, record.run_id, record.created_by) == ("model_deploy", context["dag_run"].run_id, "alice")
    [write] = registry.writes_of("register_version")
    assert write.args["reason"] == f"exported by model_deploy/{context['dag_run'].run_id}"
    assert write.args["context"]["taskId"] == "register"
    assert len(lineage.calls) == 1


def test_rerun_registers_nothing_again(registry: FakeRegistry) -> None:
    context = make_context("register", {"export": exported(3)})

    first = register(registry).execute(context)
    second = register(registry).execute(context)

    assert first == second
    assert len(registry.writes_of("register_version")) == 1


def test_a_version_further_on_keeps_its_state(registry: FakeRegistry) -> None:
    registry.seed(3, "validated", hdfs_uri=f"webhdfs://namenode/models/{MODEL}/3")

    result = register(registry).execute(make_context("register", {"export": exported(3)}))

    assert result["state"] == "validated"
    assert registry.writes == []


def test_same_version_with_other_content_is_a_conflict(registry: FakeRegistry) -> None:
    registry.seed(3, "registered", manifest_sha256="cd" * 32)

    with pytest.raises(Conflict):
        register(registry).execute(make_context("register", {"export": exported(3)}))
    assert registry.writes == []


@pytest.mark.parametrize("xcom", [None, {}])
def test_missing_export_result_fails(registry: FakeRegistry, lineage: Lineage, xcom: dict | None) -> None:
    with pytest.raises(RuntimeError, match="run the export step first"):
        register(registry).execute(make_context("register", {"export": xcom}))
    assert registry.writes == []
    assert lineage.calls == []
