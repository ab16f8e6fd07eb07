"""What a model_deploy run deploys, its inputs (model, source, version, golden examples), and where they come from.

A run a person starts (the trigger form, the REST API's ``conf``, or a time schedule) takes them from the DAG's
Params. A run started by an update of the trained-models Asset has no ``conf``: it takes them from the Asset
event's ``extra`` (``model``, ``source``, ``golden_path``, optionally ``version``), never from the Params' defaults,
and an event without them fails the run before anything changes. Either way the run's first task (``plan_release``)
checks the values against the same Params' JSON Schema (``model_name``'s pattern is :mod:`tfdeploy.core.names`'
rule) and hands them on to every later task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tfdeploy.core.errors import InvalidModelName, InvalidRunInputs
from tfdeploy.core.names import validate_model_name

# The run's inputs by Param name.
RUN_INPUTS = ("model_name", "source", "version", "golden_path")
# The Asset event's extra key of each input (a training pipeline's words: `model`, not `model_name`).
EXTRA_KEYS = {"model": "model_name", "source": "source", "version": "version", "golden_path": "golden_path"}
REQUIRED_EXTRA_KEYS = ("model", "source", "golden_path")
EXTRA_EXAMPLE = {
    "model": "demo_regressor",
    "source": "webhdfs:///data/demo_regressor/saved_model",
    "golden_path": "/data/demo_regressor/golden.json",
    "version": 7,
}


def extra_key(name: str) -> str:
    """The Asset event's extra key of the input ``name`` (``model_name`` -> ``model``)."""
    return next(key for key, param in EXTRA_KEYS.items() if param == name)


def inputs_from_extra(extra: object, *, event: str) -> dict[str, Any]:
    """The run's inputs (by Param name) from an Asset event's ``extra``; ``event`` describes the event for messages.

    Raises :class:`InvalidRunInputs` naming the missing or invalid key. Other keys of ``extra`` are ignored; the
    values' types and ranges are the Params' to check (see the module doc).
    """
    how = (
        f"Announce a model with extra={json.dumps(EXTRA_EXAMPLE)} (version optional: empty for the next free one). "
        "Nothing was deployed"
    )
    if not isinstance(extra, Mapping) or not extra:
        raise InvalidRunInputs(f"{event} has no extra, so this run does not know what to deploy. {how}")
    missing = [key for key in REQUIRED_EXTRA_KEYS if extra.get(key) in (None, "")]
    if missing:
        raise InvalidRunInputs(
            f"{event} has no {', '.join(repr(k) for k in missing)} in its extra (it has: "
            f"{', '.join(sorted(map(str, extra))) or 'nothing'}). {how}"
        )
    try:
        validate_model_name(extra["model"])
    except InvalidModelName as exc:
        raise InvalidRunInputs(f"{event}: extra key 'model' is invalid: {exc.message}. {how}") from None
    return {param: extra.get(key) for key, param in EXTRA_KEYS.items()}
