# ruff: noqa: E501  (the usage texts are main.cc's, kept verbatim on one line each)
"""tensorflow_model_server's command line, parsed as TF Serving parses it.

TF Serving (tensorflow_serving/model_servers/main.cc) declares its flags as a `std::vector<tensorflow::Flag>`
and parses them with `tensorflow::Flags::Parse` (tensorflow/core/util/command_line_flags.cc). This module
mirrors both, flag for flag (same names, types, defaults, order and usage text):

- a value flag matches only `--name=value`; int32/int64/float values are read with sscanf("%d%c") semantics
  (leading blanks and a sign allowed, nothing may follow the number);
- a bool flag matches `--name`, `--name=true`, `--name=false`; anything else that starts with `--name`
  (`--enable_batching=1`, `--enable_batchingX`) is a value error;
- the first flag (in declaration order) that claims an argument wins; an argument no flag claims (and
  everything from a bare `--` on) is passed through as unknown;
- a value error, or `--help` as the first unknown argument, makes Parse fail: main() prints the usage to
  stdout and returns -1 (exit status 255);
- otherwise main() prints `unknown argument: <first unknown>` and the usage, and starts anyway.

One flag TF Serving lacks is appended: `--bind_address` (the stand-in's own; default 0.0.0.0, as TF Serving).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("tfserving_compat")

PROGRAM = "tensorflow_model_server"


def _cpus() -> int:
    """port::NumSchedulableCPUs(): the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_CPUS = _cpus()
_CPUS4 = int(4.0 * _CPUS)


@dataclass(frozen=True)
class _Flag:
    name: str
    type: str  # int32 | int64 | bool | string | float
    default: Any
    usage: str


# main.cc's flag_list, in its order (the order decides which flag claims an argument first).
FLAGS: tuple[_Flag, ...] = (
    _Flag("port", "int32", 8500, "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero."),
    _Flag(
        "grpc_socket_path",
        "string",
        "",
        "If non-empty, listen to a UNIX socket for gRPC API on the given path. Can be either relative or absolute path.",
    ),
    _Flag(
        "rest_api_port",
        "int32",
        0,
        "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported. This port must be different than the one specified in --port.",
    ),
    _Flag(
        "rest_api_num_threads",
        "int32",
        _CPUS4,
        "Number of threads for HTTP/REST API processing. If not set, will be auto set based on number of CPUs.",
    ),
    _Flag("rest_api_timeout_in_ms", "int32", 30000, "Timeout for HTTP/REST API calls."),
    _Flag("rest_api_enable_cors_support", "bool", False, "Enable CORS headers in response"),
    _Flag("enable_batching", "bool", False, "enable batching"),
    _Flag(
        "allow_version_labels_for_unavailable_models",
        "bool",
        False,
        "If true, allows assigning unused version labels to models that are not available yet.",
    ),
    _Flag(
        "batching_parameters_file",
        "string",
        "",
        "If non-empty, read an ascii BatchingParameters protobuf from the supplied file name and use the contained values instead of the defaults.",
    ),
    _Flag(
        "enable_per_model_batching_parameters",
        "bool",
        False,
        "Enables model specific batching params like batch sizes, timeouts, batching feature flags to be read from `batching_params.pbtxt` file present in SavedModel dir of the model. Associated params in the global config from --batching_parameters_file are *ignored*. Only threadpool (name and size) related params are used from the global config, as this threadpool is shared across all the models that want to batch requests. This option is only applicable when --enable_batching flag is set.",
    ),
    _Flag(
        "model_config_file",
        "string",
        "",
        "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file name, and serve the models in that file. This config file can be used to specify multiple models to serve and other advanced parameters including non-default version policy. (If used, --model_name, --model_base_path are ignored.)",
    ),
    _Flag(
        "model_config_file_poll_wait_seconds",
        "int32",
        0,
        "Interval in seconds between each poll of the filesystemfor model_config_file. If unset or set to zero, poll will be done exactly once and not periodically. Setting this to negative is reserved for testing purposes only.",
    ),
    _Flag("model_name", "string", "default", "name of model (ignored if --model_config_file flag is set)"),
    _Flag(
        "model_base_path",
        "string",
        "",
        "path to export (ignored if --model_config_file flag is set, otherwise required)",
    ),
    _Flag(
        "num_load_threads",
        "int32",
        0,
        "The number of threads in the thread-pool used to load servables. If set as 0, we don't use a thread-pool, and servable loads are performed serially in the manager's main work loop, may casue the Serving request to be delayed. Default: 0",
    ),
    _Flag(
        "num_unload_threads",
        "int32",
        0,
        "The number of threads in the thread-pool used to unload servables. If set as 0, we don't use a thread-pool, and servable loads are performed serially in the manager's main work loop, may casue the Serving request to be delayed. Default: 0",
    ),
    _Flag(
        "max_num_load_retries",
        "int32",
        5,
        "maximum number of times it retries loading a model after the first failure, before giving up. If set to 0, a load is attempted only once. Default: 5",
    ),
    _Flag(
        "load_retry_interval_micros",
        "int64",
        60000000,
        "The interval, in microseconds, between each servable load retry. If set negative, it doesn't wait. Default: 1 minute",
    ),
    _Flag(
        "file_system_poll_wait_seconds",
        "int32",
        1,
        "Interval in seconds between each poll of the filesystem for new model version. If set to zero poll will be exactly done once and not periodically. Setting this to negative value will disable polling entirely causing ModelServer to indefinitely wait for a new model at startup. Negative values are reserved for testing purposes only.",
    ),
    _Flag(
        "flush_filesystem_caches",
        "bool",
        True,
        "If true (the default), filesystem caches will be flushed after the initial load of all servables, and after each subsequent individual servable reload (if the number of load threads is 1). This reduces memory consumption of the model server, at the potential cost of cache misses if model files are accessed after servables are loaded.",
    ),
    _Flag(
        "tensorflow_session_parallelism",
        "int64",
        0,
        "Number of threads to use for running a Tensorflow session. Auto-configured by default.Note that this option is ignored if --platform_config_file is non-empty.",
    ),
    _Flag(
        "tensorflow_session_config_file",
        "string",
        "",
        "If non-empty, read an ascii TensorFlow Session ConfigProto protobuf from the supplied file name. Note, parts of the session config (threads, parallelism etc.) can be overridden if needed, via corresponding command line flags.",
    ),
    _Flag(
        "tensorflow_intra_op_parallelism",
        "int64",
        0,
        "Number of threads to use to parallelize the executionof an individual op. Auto-configured by default.Note that this option is ignored if --platform_config_file is non-empty.",
    ),
    _Flag(
        "tensorflow_inter_op_parallelism",
        "int64",
        0,
        "Controls the number of operators that can be executed simultaneously. Auto-configured by default.Note that this option is ignored if --platform_config_file is non-empty.",
    ),
    _Flag("use_alts_credentials", "bool", False, "Use Google ALTS credentials"),
    _Flag(
        "ssl_config_file",
        "string",
        "",
        "If non-empty, read an ascii SSLConfig protobuf from the supplied file name and set up a secure gRPC channel",
    ),
    _Flag(
        "platform_config_file",
        "string",
        "",
        "If non-empty, read an ascii PlatformConfigMap protobuf from the supplied file name, and use that platform config instead of the Tensorflow platform. (If used, --enable_batching is ignored.)",
    ),
    _Flag(
        "per_process_gpu_memory_fraction",
        "float",
        0.0,
        "Fraction that each process occupies of the GPU memory space the value is between 0.0 and 1.0 (with 0.0 as the default) If 1.0, the server will allocate all the memory when the server starts, If 0.0, Tensorflow will automatically select a value.",
    ),
    _Flag(
        "saved_model_tags",
        "string",
        "serve",
        "Comma-separated set of tags corresponding to the meta graph def to load from SavedModel.",
    ),
    _Flag(
        "grpc_channel_arguments",
        "string",
        "",
        "A comma separated list of arguments to be passed to the grpc server. (e.g. grpc.max_connection_age_ms=2000)",
    ),
    _Flag("grpc_max_threads", "int32", _CPUS4, "Max grpc server threads to handle grpc messages."),
    _Flag(
        "enable_model_warmup",
        "bool",
        True,
        "Enables model warmup, which triggers lazy initializations (such as TF optimizations) at load time, to reduce first request latency.",
    ),
    _Flag(
        "num_request_iterations_for_warmup",
        "int32",
        0,
        "Number of times a request is iterated during warmup replay. This value is used only if > 0.",
    ),
    _Flag("version", "bool", False, "Display version"),
    _Flag(
        "monitoring_config_file",
        "string",
        "",
        "If non-empty, read an ascii MonitoringConfig protobuf from the supplied file name",
    ),
    _Flag(
        "remove_unused_fields_from_bundle_metagraph",
        "bool",
        True,
        "Removes unused fields from MetaGraphDef proto message to save memory.",
    ),
    _Flag(
        "prefer_tflite_model",
        "bool",
        False,
        "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Prefer TensorFlow Lite model from `model.tflite` file in SavedModel directory, instead of the TensorFlow model from `saved_model.pb` file. If no TensorFlow Lite model found, fallback to TensorFlow model.",
    ),
    _Flag(
        "num_tflite_pools",
        "int32",
        _CPUS,
        "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Number of TFLite interpreters in an interpreter pool of TfLiteSession. Typically there is one TfLiteSession for each TF Lite model that is loaded. If not set, will be auto set based on number of CPUs.",
    ),
    _Flag(
        "num_tflite_interpreters_per_pool",
        "int32",
        1,
        "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Number of TFLite interpreters in an interpreter pool of TfLiteSession. Typically there is one TfLiteSession for each TF Lite model that is loaded. If not set, will be 1.",
    ),
    _Flag(
        "enable_signature_method_name_check",
        "bool",
        False,
        "Enable method_name check for SignatureDef. Disable this if serving native TF2 regression/classification models.",
    ),
    _Flag(
        "xla_cpu_compilation_enabled",
        "bool",
        False,
        "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Enable XLA:CPU JIT (default is disabled). With XLA:CPU JIT disabled, models utilizing this feature will return bad Status on first compilation request.",
    ),
    _Flag(
        "xla_gpu_compilation_enabled",
        "bool",
        False,
        "EXPERIMENTAL; CAN BE REMOVED ANYTIME! Enable both XLA:CPU JIT and XLA:GPU JIT (default is disabled).",
    ),
    _Flag("enable_profiler", "bool", True, "Enable profiler service."),
    _Flag(
        "thread_pool_factory_config_file",
        "string",
        "",
        "If non-empty, read an ascii ThreadPoolConfig protobuf from the supplied file name.",
    ),
    _Flag("mixed_precision", "string", "", "specify mixed_precision mode"),
    _Flag("skip_initialize_tpu", "bool", False, "Whether to skip auto initializing TPU."),
    _Flag("enable_grpc_healthcheck_service", "bool", False, "Enable the standard gRPC healthcheck service."),
    _Flag(
        "enable_serialization_as_tensor_content",
        "bool",
        False,
        "Enable serialization of predict response as tensor content.",
    ),
)

# Not a TF Serving flag: the stand-in binds 0.0.0.0 like TF Serving unless told otherwise (tests use 127.0.0.1).
BIND_ADDRESS = _Flag(
    "bind_address", "string", "0.0.0.0", "Not a TF Serving flag: the address the gRPC and REST ports listen on."
)
ALL_FLAGS: tuple[_Flag, ...] = (*FLAGS, BIND_ADDRESS)

_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_FLOAT = re.compile(
    r"[ \t\n\v\f\r]*([+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan))", re.IGNORECASE
)
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _scan(pattern: re.Pattern[str], text: str) -> str | None:
    """sscanf("%d%c") == 1: a number, then nothing at all."""
    match = pattern.match(text)
    if match is None or match.end() != len(text):
        return None
    return match.group(1)


def _int(text: str, bits: int) -> int | None:
    digits = _scan(_INT, text)
    if digits is None:
        return None
    value = min(max(int(digits), _I64_MIN), _I64_MAX)  # glibc: strtol/strtoll clamp on overflow
    if bits == 32:  # %d stores the long into an int: wraps
        value = (value + 2**31) % 2**32 - 2**31
    return value


def _parse_one(flag: _Flag, arg: str) -> tuple[bool, bool, Any]:
    """Flag::Parse: (claimed, value_ok, value)."""
    prefix = "--" + flag.name
    if not arg.startswith(prefix):
        return False, True, None
    rest = arg[len(prefix) :]
    if flag.type == "bool":
        if rest in ("", "=true"):
            return True, True, True
        if rest == "=false":
            return True, True, False
        log.error("Couldn't interpret value %s for flag %s.", rest, flag.name)
        return True, False, None
    if not rest.startswith("="):
        return False, True, None
    value_text = rest[1:]
    if flag.type == "string":
        return True, True, value_text
    if flag.type == "float":
        number = _scan(_FLOAT, value_text)
        value: Any = float(number) if number is not None else None
    else:
        value = _int(value_text, 32 if flag.type == "int32" else 64)
    if value is None:
        log.error("Couldn't interpret value %s for flag %s.", value_text, flag.name)
        return True, False, None
    return True, True, value


@dataclass
class ParseResult:
    flags: SimpleNamespace  # one attribute per flag name, defaults filled in
    unknown: list[str]  # arguments no flag claimed, in order (TF Serving reports only the first)
    ok: bool  # Flags::Parse's result: False on a value error or a leading --help


def defaults() -> SimpleNamespace:
    return SimpleNamespace(**{f.name: f.default for f in ALL_FLAGS})


def parse(argv: list[str]) -> ParseResult:
    """tensorflow::Flags::Parse over argv (without the program name)."""
    values = defaults()
    unknown: list[str] = []
    ok = True
    for i, arg in enumerate(argv):
        if arg == "--":
            unknown.extend(argv[i:])
            break
        claimed = False
        for flag in ALL_FLAGS:
            claimed, value_ok, value = _parse_one(flag, arg)
            if not value_ok:
                ok = False
            elif claimed:
                setattr(values, flag.name, value)
            if claimed:
                break
        if not claimed:
            unknown.append(arg)
    ok = ok and not (unknown and unknown[0] == "--help")
    return ParseResult(values, unknown, ok)


def _display(flag: _Flag) -> str:
    if flag.type == "bool":
        return f"--{flag.name}={'true' if flag.default else 'false'}"
    if flag.type == "string":
        return f'--{flag.name}="{flag.default}"'
    if flag.type == "float":
        return f"--{flag.name}={flag.default:f}"
    return f"--{flag.name}={flag.default}"


def usage(program: str = PROGRAM) -> str:
    """Flags::Usage: `usage: <program>`, `Flags:`, then one tab-separated line per flag."""
    lines = [f"usage: {program}", "Flags:"]
    lines += [f"\t{_display(f):<33}\t{f.type}\t{f.usage}" for f in ALL_FLAGS]
    return "\n".join(lines) + "\n"
