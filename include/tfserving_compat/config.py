"""models.config: parsing (protobuf text_format) and the checks TF Serving's ServerCore makes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from .errors import FailedPrecondition, InvalidArgument

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class VersionPolicy:
    """Which numeric version directories to serve: latest N (the default, N=1), all, or specific ones."""

    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def from_proto(cls, config: Any) -> VersionPolicy:
        policy = config.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return cls("all")
        if choice == "specific":
            return cls("specific", versions=frozenset(policy.specific.versions))
        if choice == "latest" and policy.latest.num_versions > 0:
            return cls("latest", num_versions=policy.latest.num_versions)
        return cls("latest", num_versions=1)

    def select(self, available: list[int]) -> set[int]:
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions & set(available))
        return set(sorted(available, reverse=True)[: self.num_versions])


def parse_text(text: str, source: str = "model config") -> Any:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid protobuf file: '{source}': {exc}") from exc
    return config


def read_file(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise InvalidArgument(f"Could not read model config file {path}: {exc.strerror}") from exc
    return parse_text(text, path)


def single_model(name: str, base_path: str) -> Any:
    """The config --model_name/--model_base_path stand for."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def platform_of(model: Any) -> str:
    if model.model_type:  # deprecated field
        if model.model_platform:
            raise InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {model.name}"
            )
        if model.model_type != 1:  # ModelType.TENSORFLOW
            raise InvalidArgument(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        return "tensorflow"
    if not model.model_platform:
        raise InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    return model.model_platform


def validate(new: Any, old: Any | None) -> None:
    """The checks ServerCore::ReloadConfig makes before anything changes."""
    if new.WhichOneof("config") != "model_config_list":
        raise FailedPrecondition(
            "Cannot transition to requested config. It is only legal to transition from one ModelConfigList to another."
        )
    seen: set[str] = set()
    for model in new.model_config_list.config:
        if model.name in seen:
            raise InvalidArgument(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
    for model in new.model_config_list.config:
        if not (model.base_path.startswith("/") or _URI.match(model.base_path)):
            raise InvalidArgument(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}"
            )
    old_platforms = {m.name: platform_of(m) for m in old.model_config_list.config} if old is not None else {}
    for model in new.model_config_list.config:
        platform = platform_of(model)
        if platform != "tensorflow":
            raise FailedPrecondition(f"PlatformConfigMap has no entry for platform {platform}")
        if model.name in old_platforms and old_platforms[model.name] != platform:
            raise InvalidArgument(
                f"Illegal to change a model's platform. For model {model.name} platform was "
                f"{old_platforms[model.name]} and new platform requested is {platform}"
            )
