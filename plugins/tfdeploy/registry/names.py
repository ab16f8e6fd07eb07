"""Model names must be safe as TF Serving model names, URL path segments and HDFS/local directory names."""

from __future__ import annotations

import re

from .errors import InvalidName

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', starting with a letter "
            "or digit, without '..', '/' or spaces (it becomes a TF Serving model name and a directory)"
        )
    return name
