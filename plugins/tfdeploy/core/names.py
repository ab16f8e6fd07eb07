"""The model-name rule and the version-directory rule, written once.

A model name becomes a TF Serving model name, a URL path segment, an HDFS directory and a local
directory, so it must be safe as all four. ``MODEL_NAME_PATTERN`` is the rule as a regular expression
that Python's ``re`` and JSON Schema (the DAG Params' ``pattern``) read the same way.

A serving host's model root holds one directory per model AND the host's own files (``SERVING_ROOT_FILES``:
the server's config, its monitoring config, the config lock); a model named like one of them would be written
over it, so those names are refused (names starting with '.', which the host uses for temp files and the
lock, never match the rule). ``hooks/serving_host.py`` writes its files under these constants.

A version is a non-negative integer; TF Serving's file-system source takes every child directory whose
name parses as an int64 as a version (``007`` is version 7), so the pipeline reads names the same way.
"""

from __future__ import annotations

import re

from tfdeploy.core.errors import InvalidModelName

# The serving host's own files in its model root, beside the model directories (hooks/serving_host.py).
SERVING_CONFIG_NAME = "models.config"  # the server's --model_config_file
SERVING_MONITORING_NAME = "monitoring.config"  # the server's --monitoring_config_file
SERVING_LOCK_NAME = ".config.lock"  # serializes config changes on the host
SERVING_ROOT_FILES = (SERVING_CONFIG_NAME, SERVING_MONITORING_NAME, SERVING_LOCK_NAME)

MODEL_NAME_MAX = 128
# 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit, never containing '..', and not one
# of the serving host's own files (exact, case-sensitive names, as on the host's Linux file system)
_RESERVED = "|".join(re.escape(name) for name in SERVING_ROOT_FILES)
MODEL_NAME_PATTERN = rf"^(?!.*\.\.)(?!(?:{_RESERVED})$)[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MODEL_NAME_MAX - 1}}}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)

INT64_MAX = 2**63 - 1
_INT64 = re.compile(r"-?[0-9]+")


def validate_model_name(name: object) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidModelName` saying the rule."""
    if isinstance(name, str) and name in SERVING_ROOT_FILES:
        raise InvalidModelName(
            f"invalid model name {name!r}: the serving host keeps its own file of that name beside the model "
            f"directories (reserved: {', '.join(SERVING_ROOT_FILES)}); choose another name"
        )
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1-{MODEL_NAME_MAX} letters, digits, '_', '-' or '.', starting "
            "with a letter or digit, without '..', '/' or spaces, and not a serving host's own file name "
            f"({', '.join(SERVING_ROOT_FILES)}): it becomes a TF Serving model name and a directory"
        )
    return name


def check_version(version: object) -> int:
    """Return ``version`` if it is a version number (a non-negative int64), else raise ValueError."""
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= INT64_MAX:
        raise ValueError(f"version {version!r} is not a version number (a non-negative integer)")
    return version


def parse_version_dir(name: str) -> int | None:
    """The version a directory named ``name`` holds for TF Serving (``"007"`` -> 7), or None if it is not one.

    TF Serving parses child names as int64 and ignores the rest (``.tmp-3-ab12``, ``1.tmp``); negative
    numbers are not versions the pipeline writes or serves.
    """
    if not _INT64.fullmatch(name):
        return None
    value = int(name)
    return value if 0 <= value <= INT64_MAX else None
