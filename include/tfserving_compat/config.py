"""models.config: parsing (protobuf text_format) and the checks TF Serving's ServerCore makes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from .errors import FailedPrecondition, InvalidArgument, NotFound

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


# ---------------------------------------------------------------------------- batching parameters
# tensorflow.serving.BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto) is not in
# the tensorflow-serving-api wheel: declared here with protobuf's descriptor API (same package, names and field
# numbers), so --batching_parameters_file parses with text_format exactly as TF Serving's ParseProtoTextFile does.
_BATCHING_FILE = "tensorflow_serving/servables/tensorflow/session_bundle_config.proto"


def _batching_parameters_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_BATCHING_FILE)
    except KeyError:
        pool.FindFileByName(wrappers_pb2.DESCRIPTOR.name)  # the wrapper types must be in the pool
        fdp = descriptor_pb2.FileDescriptorProto(
            name=_BATCHING_FILE,
            package="tensorflow.serving",
            syntax="proto3",
            dependency=[wrappers_pb2.DESCRIPTOR.name],
        )
        msg = fdp.message_type.add(name="BatchingParameters")
        wrapped = [
            ("max_batch_size", 1, "Int64Value"),
            ("batch_timeout_micros", 2, "Int64Value"),
            ("max_enqueued_batches", 3, "Int64Value"),
            ("num_batch_threads", 4, "Int64Value"),
            ("thread_pool_name", 5, "StringValue"),
            ("enable_large_batch_splitting", 8, "BoolValue"),
            ("max_execution_batch_size", 9, "Int64Value"),
        ]
        for name, number, wrapper in wrapped:
            msg.field.add(name=name, number=number, type=11, label=1, type_name=f".google.protobuf.{wrapper}")
        msg.field.add(name="allowed_batch_sizes", number=6, type=3, label=3)  # repeated int64
        msg.field.add(name="pad_variable_length_inputs", number=7, type=8, label=1)  # bool
        pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


def read_batching_parameters(path: str) -> Any:
    """ParseProtoTextFile<BatchingParameters> (tensorflow_serving/util/proto_util.h), as server.cc calls it."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError as exc:  # Env::NewReadOnlyMemoryRegionFromFile's error
        raise NotFound(f"{path}; No such file or directory") from exc
    except OSError as exc:
        raise InvalidArgument(f"Could not read batching parameters file {path}: {exc.strerror}") from exc
    params = BatchingParameters()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid protobuf file: '{path}': {exc}") from exc
    return params
