"""tensorflow.serving.MonitoringConfig, which the tensorflow-serving-api wheel does not ship.

Declared here with protobuf's descriptor API (same package, names and field numbers as
tensorflow_serving/config/monitoring_config.proto) so --monitoring_config_file parses with text_format.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_FILE = "tensorflow_serving/config/monitoring_config.proto"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def _build():
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:
        fdp = descriptor_pb2.FileDescriptorProto(name=_FILE, package="tensorflow.serving", syntax="proto3")
        prometheus = fdp.message_type.add(name="PrometheusConfig")
        prometheus.field.add(name="enable", number=1, type=8, label=1)  # bool
        prometheus.field.add(name="path", number=2, type=9, label=1)  # string
        monitoring = fdp.message_type.add(name="MonitoringConfig")
        monitoring.field.add(
            name="prometheus_config", number=1, type=11, label=1, type_name=".tensorflow.serving.PrometheusConfig"
        )
        pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfig = _build()


def prometheus_path(text: str) -> str | None:
    """The path to export metrics on, or None when Prometheus is not enabled."""
    config = MonitoringConfig()
    text_format.Parse(text, config)
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
