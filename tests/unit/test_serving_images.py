"""Serving images come from an allowlist (SERVING_IMAGES, default SERVING_IMAGE alone): the DAGs' Param is a choice
of it (tests/unit/test_dag_integrity.py) and get_target, where every serving step gets its image, refuses any other
at execute time, naming the allowed ones, before anything starts."""

from __future__ import annotations

import pytest

from tfdeploy.core.errors import ServingImageNotAllowed
from tfdeploy.services.targets import get_target, serving_image_param
from tfdeploy.settings import Settings

DEFAULT = "local/tfserving-compat:latest"


@pytest.fixture
def images(monkeypatch: pytest.MonkeyPatch):
    def configure(allowed: str | None, default: str | None = None) -> None:
        for name, value in (("SERVING_IMAGES", allowed), ("SERVING_IMAGE", default)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    return configure


def test_the_allowlist_is_serving_image_alone_by_default(images):
    images(None)
    s = Settings()
    assert s.serving_images == (s.serving_image,) == (DEFAULT,)
    assert get_target("local").image == DEFAULT
    assert get_target("local", "").image == DEFAULT  # empty: the default image


def test_the_allowlist_is_comma_separated_and_must_hold_the_default(images):
    images(
        " tensorflow/serving:2.19.0 ,, tensorflow/serving:2.18.0,tensorflow/serving:2.19.0", "tensorflow/serving:2.19.0"
    )
    assert Settings().serving_images == ("tensorflow/serving:2.19.0", "tensorflow/serving:2.18.0")
    assert get_target("local", "tensorflow/serving:2.18.0", pool="canary").image == "tensorflow/serving:2.18.0"
    images("tensorflow/serving:2.18.0", "tensorflow/serving:2.19.0")
    with pytest.raises(
        ValueError, match=r"SERVING_IMAGE='tensorflow/serving:2.19.0' is not in SERVING_IMAGES=.*add it"
    ):
        Settings()


@pytest.mark.parametrize("pool", ["stable", "canary"])
def test_an_image_outside_the_allowlist_is_refused_naming_the_allowed_ones(images, pool):
    images(f"{DEFAULT},tensorflow/serving:2.19.0", DEFAULT)
    with pytest.raises(ServingImageNotAllowed) as info:
        get_target("local", "attacker/miner:latest", pool=pool)
    message = str(info.value)
    assert "'attacker/miner:latest' is not allowed" in message
    assert f"(SERVING_IMAGES): {DEFAULT}, tensorflow/serving:2.19.0" in message
    assert isinstance(info.value, ValueError)


def test_a_serving_step_refuses_it_at_execute_time_before_building_anything():
    """The operators get their pools through get_target: an image the Param would refuse (a conf sent around the
    form, an old DAG version) fails there, before any container, config or router is touched."""
    from tfdeploy.operators.rollout import RolloutOperator

    op = RolloutOperator(task_id="rollout", model_name="demo_regressor", serving_image="attacker/miner:latest")
    with pytest.raises(ServingImageNotAllowed, match="attacker/miner:latest"):
        op.service  # noqa: B018 - building the pool is what refuses
    with pytest.raises(ServingImageNotAllowed):
        op.canary  # noqa: B018


def test_the_param_is_a_choice_of_the_allowlist_defaulting_to_serving_image(images):
    images("tensorflow/serving:2.18.0,tensorflow/serving:2.19.0", "tensorflow/serving:2.19.0")
    param = serving_image_param()
    assert param.value == "tensorflow/serving:2.19.0"
    assert param.schema["enum"] == ["tensorflow/serving:2.18.0", "tensorflow/serving:2.19.0"]
