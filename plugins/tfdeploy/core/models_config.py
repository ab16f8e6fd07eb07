"""TF Serving's ``models.config`` (a ``ModelServerConfig``) as data: build, print, parse, and read back.

TF Serving has no API to read its current config back, so the pipeline owns the desired config: it keeps a
list of :class:`ServedModel` (name, base path, the exact versions to serve, labels), turns it into a
``ModelServerConfig`` with :func:`build_model_config`, and sends it (gRPC reload) or writes it
(:func:`to_text`, protobuf text format). Every model is served with a ``specific`` version policy, so which
versions are loaded is always stated, never inferred from the directory listing.

Checks are those TF Serving applies (unique names, absolute base paths) plus the pipeline's own (versions
listed, labels pointing at listed versions), so a wrong config fails here with a clear message instead of
as a gRPC error, or worse, as a line in the server's log when it polls a config file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

from tfdeploy.core.errors import InvalidModelConfig, InvalidModelName
from tfdeploy.core.names import check_version, validate_model_name

__all__ = [
    "MODEL_PLATFORM",
    "InvalidModelConfig",
    "ModelServerConfig",
    "ServedModel",
    "build_model_config",
    "parse_text",
    "served_models",
    "to_text",
]

MODEL_PLATFORM = "tensorflow"


def _no_labels() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ServedModel:
    """One model as TF Serving should serve it: exactly ``versions`` from ``base_path``, with ``labels``.

    ``base_path`` is the path as the SERVER sees it (in a container: ``/models/<name>``). ``labels`` maps a
    label (``stable``, ``canary``) to one of ``versions``; TF Serving accepts a label only for a version that
    is already AVAILABLE, so adding a version and labelling it takes two reloads.
    """

    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=_no_labels)

    def __post_init__(self) -> None:
        # Normalise to immutable containers so a ServedModel is a value (hashable, safe to share).
        object.__setattr__(self, "versions", tuple(self.versions))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __hash__(self) -> int:
        return hash((self.name, self.base_path, self.versions, tuple(sorted(self.labels.items()))))

    def validate(self) -> None:
        """Raise :class:`InvalidModelConfig` (a ValueError) if TF Serving or the pipeline would refuse this model."""
        try:
            validate_model_name(self.name)
        except InvalidModelName as exc:
            raise InvalidModelConfig(str(exc)) from None
        if not isinstance(self.base_path, str) or not posixpath.isabs(self.base_path):
            raise InvalidModelConfig(
                f"base_path {self.base_path!r} of model {self.name!r} is not an absolute path; TF Serving refuses "
                "relative base paths: give the directory as the server sees it, e.g. '/models/" + self.name + "'"
            )
        if not self.versions:
            raise InvalidModelConfig(
                f"model {self.name!r} lists no versions; give at least one version to serve "
                "(to stop serving the model, leave it out of the config)"
            )
        for version in self.versions:
            try:
                check_version(version)
            except ValueError:
                raise InvalidModelConfig(
                    f"version {version!r} of model {self.name!r} is not a version number; versions are "
                    "non-negative integers (the names of the numeric version directories)"
                ) from None
        if len(set(self.versions)) != len(self.versions):
            raise InvalidModelConfig(f"model {self.name!r} lists a version twice: {list(self.versions)}")
        for label, version in self.labels.items():
            if not isinstance(label, str) or not label:
                raise InvalidModelConfig(f"model {self.name!r} has an empty or non-string label {label!r}")
            if version not in self.versions:
                raise InvalidModelConfig(
                    f"label {label!r} of model {self.name!r} points at version {version!r}, which is not among "
                    f"the versions served {sorted(self.versions)}; add the version first (and wait until it is "
                    "AVAILABLE) or point the label at a served version"
                )


def build_model_config(models: Sequence[ServedModel]) -> ModelServerConfig:
    """The ``ModelServerConfig`` serving exactly ``models`` (platform ``tensorflow``, ``specific`` versions).

    Raises :class:`InvalidModelConfig` (a ValueError) for duplicate names, relative base paths, empty version
    lists, or labels pointing at versions not listed. An empty sequence gives an empty model list (a reload
    with it unloads every model).
    """
    config = ModelServerConfig()
    config.model_config_list.SetInParent()
    seen: set[str] = set()
    for model in models:
        if not isinstance(model, ServedModel):
            raise InvalidModelConfig(f"expected ServedModel, got {type(model).__name__}: {model!r}")
        model.validate()
        if model.name in seen:
            raise InvalidModelConfig(
                f"model {model.name!r} is listed more than once; TF Serving refuses duplicate model names: "
                "merge its versions and labels into one entry"
            )
        seen.add(model.name)
        entry: ModelConfig = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = MODEL_PLATFORM
        entry.model_version_policy.specific.versions.extend(model.versions)
        for label, version in sorted(model.labels.items()):
            entry.version_labels[label] = version
    return config


def to_text(config: ModelServerConfig) -> str:
    """``config`` in protobuf text format, as TF Serving reads ``--model_config_file`` (map keys sorted)."""
    return text_format.MessageToString(config)


def parse_text(text: str) -> ModelServerConfig:
    """Parse a ``models.config`` in protobuf text format; raises :class:`InvalidModelConfig` on a syntax error."""
    try:
        return text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as exc:
        raise InvalidModelConfig(f"not a valid models.config (protobuf text format ModelServerConfig): {exc}") from exc


def served_models(config: ModelServerConfig) -> list[ServedModel]:
    """The inverse of :func:`build_model_config`: the models ``config`` serves, in config order.

    Raises :class:`InvalidModelConfig` for configs the pipeline does not write: a custom model config, a
    platform other than ``tensorflow``, or a ``latest``/``all`` version policy (no explicit version list).
    """
    kind = config.WhichOneof("config")
    if kind is None:
        return []
    if kind != "model_config_list":
        raise InvalidModelConfig(f"config holds a {kind}; only model_config_list is supported (as TF Serving's reload)")
    models = []
    for entry in config.model_config_list.config:
        if entry.model_platform != MODEL_PLATFORM:
            raise InvalidModelConfig(
                f"model {entry.name!r} has model_platform {entry.model_platform!r}; "
                f"only {MODEL_PLATFORM!r} is supported"
            )
        policy = entry.model_version_policy.WhichOneof("policy_choice")
        if policy != "specific":
            raise InvalidModelConfig(
                f"model {entry.name!r} has version policy {policy or 'none (default: latest 1)'}; only 'specific' "
                "policies state which versions are served: rewrite it with build_model_config"
            )
        models.append(
            ServedModel(
                name=entry.name,
                base_path=entry.base_path,
                versions=tuple(entry.model_version_policy.specific.versions),
                labels=dict(entry.version_labels),
            )
        )
    return models
