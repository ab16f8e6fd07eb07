"""Monitoring configuration (no services): Prometheus' and Alertmanager's generated configs per stack, the relabelling
that finds this stack's serving replicas, and the alert rules (checked and unit-tested with promtool, amtool)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

import stack
from tfdeploy.settings import PROJECT_ROOT, Settings

RULES = PROJECT_ROOT / "include" / "monitoring" / "rules.yml"
RULES_TEST = PROJECT_ROOT / "include" / "monitoring" / "rules_test.yml"
ALERTS = {
    "ServingReplicaDown",
    "ModelErrorRateHigh",
    "ModelP99High",
    "ModelUnavailable",
    "RouterBackendDown",
    "ReleaseStuck",
}
# every alert about one model names it in the `model` label (the rules build it from TF Serving's model_name)
MODEL_ALERTS = {"ServingReplicaDown", "ModelErrorRateHigh", "ModelP99High", "ModelUnavailable", "ReleaseStuck"}
PORT_VARS = ("PROMETHEUS_PORT", "ALERTMANAGER_PORT", "AIRFLOW_PORT", "ROUTER_STATS_PORT", "DOCKER_HOST")


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (Debian's prometheus / prometheus-alertmanager: `make setup`)")
    return path


def _stack(monkeypatch, name: str, state_dir: Path) -> Settings:
    for var in (*PORT_VARS, "TFDEPLOY_STATE_DIR", "SERVING_STABLE_REPLICAS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TFDEPLOY_STACK", name)
    monkeypatch.setenv("TFDEPLOY_STATE_DIR", str(state_dir))
    return Settings()


@pytest.fixture
def stacks(monkeypatch, tmp_path) -> dict[str, Settings]:
    return {
        name: _stack(monkeypatch, name, tmp_path / state)
        for name, state in (("dev", ".state"), ("test", ".state-test"))
    }


def _scrape(config: dict, job: str) -> dict:
    [scrape] = [c for c in config["scrape_configs"] if c["job_name"] == job]
    return scrape


def test_monitoring_ports_per_profile(stacks):
    dev, test = stacks["dev"], stacks["test"]
    assert (dev.prometheus_port, dev.alertmanager_port) == (9090, 9093)
    assert (test.prometheus_port, test.alertmanager_port) == (19090, 19093)
    assert dev.ports["PROMETHEUS_PORT"] == 9090 and test.ports["ALERTMANAGER_PORT"] == 19093
    assert dev.prometheus_url == "http://127.0.0.1:9090"


@pytest.mark.parametrize("name", ["dev", "test"])
def test_prometheus_config_scrapes_this_stack(stacks, name):
    s = stacks[name]
    config = yaml.safe_load(stack.prometheus_config(s))
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    assert config["global"]["external_labels"] == {"stack": name}
    assert config["rule_files"] == [str(s.state_dir / "prometheus" / "rules.yml")]
    [am] = config["alerting"]["alertmanagers"]
    assert am["static_configs"] == [{"targets": [f"127.0.0.1:{s.alertmanager_port}"]}]
    statics = {
        job: (_scrape(config, job)["static_configs"][0]["targets"], _scrape(config, job)["metrics_path"])
        for job in ("prometheus", "alertmanager", "router", "registry")
    }
    assert statics == {
        "prometheus": ([f"127.0.0.1:{s.prometheus_port}"], "/metrics"),
        "alertmanager": ([f"127.0.0.1:{s.alertmanager_port}"], "/metrics"),
        "router": ([f"127.0.0.1:{s.router_stats_port}"], "/metrics"),
        "registry": ([f"127.0.0.1:{s.airflow_port}"], "/registry/metrics"),
    }
    serving = _scrape(config, "serving")
    assert serving["metrics_path"] == "/monitoring/prometheus/metrics"
    assert "static_configs" not in serving  # never a static list: found as the pipeline creates replicas
    # one discovery per Docker host the `local` target runs replicas on (the second: docker2, over TLS)
    sd, *second = serving["docker_sd_configs"]
    assert len(second) == s.serving_hosts - 1
    assert sd["host"] == s.docker_host == "unix:///var/run/docker.sock"
    assert sd["refresh_interval"] == "5s"
    assert sd["filters"] == [{"name": "label", "values": ["tfdeploy.serving.managed=true"]}]


def test_the_two_stacks_configs_share_no_port_nor_path(stacks):
    dev, test = (stack.prometheus_config(stacks[n]) for n in ("dev", "test"))
    for s in (stacks["dev"],):
        for port in (s.prometheus_port, s.alertmanager_port, s.router_stats_port, s.airflow_port):
            assert f"127.0.0.1:{port}" in dev and f"127.0.0.1:{port}" not in test
    assert str(stacks["test"].state_dir) not in dev
    assert f"{stacks['dev'].state_dir}/" not in test


def test_alertmanager_config_posts_to_the_registry_with_its_token(stacks):
    for s in stacks.values():
        config = yaml.safe_load(stack.alertmanager_config(s))
        assert config["route"] == {
            "receiver": "registry",
            "group_by": ["alertname", "model"],
            "group_wait": "5s",
            "group_interval": "10s",
            "repeat_interval": "1h",
        }
        [receiver] = config["receivers"]
        [hook] = receiver["webhook_configs"]
        assert hook["url"] == f"http://127.0.0.1:{s.airflow_port}/registry/v1/alerts"
        assert hook["send_resolved"] is True
        auth = hook["http_config"]["authorization"]
        assert auth["type"] == "Bearer"
        token_file = Path(auth["credentials_file"])
        assert token_file.parent.parent == s.state_dir
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # the token Airflow serves the registry with (REGISTRY_API_TOKEN), never written into the config
        token = stack.airflow_env(s)["REGISTRY_API_TOKEN"]
        assert token_file.read_text().strip() == token
        assert token not in stack.alertmanager_config(s)


def test_airflow_has_a_connection_to_prometheus(stacks):
    for s in stacks.values():
        conn = json.loads(stack.airflow_env(s)["AIRFLOW_CONN_PROMETHEUS_DEFAULT"])
        assert conn == {"conn_type": "http", "host": "127.0.0.1", "port": s.prometheus_port}


def test_services_start_after_the_router_and_alertmanager_before_prometheus():
    order = list(stack.SERVICES)
    assert order.index("router") < order.index("alertmanager") < order.index("prometheus") < order.index("airflow")
    assert stack.SERVICES["prometheus"][2] == ("prometheus",)
    assert stack.SERVICES["alertmanager"][2] == ("alertmanager",)


# ----------------------------------------------------------------------------- relabelling (Prometheus' semantics)


def _relabel(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabelling (replace/keep, anchored regexes, `$1` groups) of one discovered target."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if not match:
                return None
            continue
        if match:
            groups = ("", *(g or "" for g in match.groups()))
            labels[rule["target_label"]] = re.sub(
                r"\$(\d+)", lambda m, groups=groups: groups[int(m.group(1))], rule.get("replacement", "$1")
            )
    return {k: v for k, v in labels.items() if not k.startswith("__meta_")}


def _discovered(name: str, model_root: str, private: int = 8501, public: str = "18511") -> dict[str, str]:
    """What docker_sd_configs gives for one port of a container (the engine's names start with '/')."""
    return {
        "__address__": f"172.17.0.2:{private}",
        "__meta_docker_container_name": f"/{name}",
        "__meta_docker_container_label_tfdeploy_serving_managed": "true",
        "__meta_docker_container_label_tfdeploy_serving_model_root": model_root,
        "__meta_docker_port_private": str(private),
        "__meta_docker_port_public": public,
        "__meta_docker_port_public_ip": "127.0.0.1",
    }


def test_relabelling_keeps_this_stacks_replicas_on_their_published_rest_port(stacks):
    dev, test = stacks["dev"], stacks["test"]
    rules = stack.serving_relabel_configs(test)
    base = f"{test.state_dir}/serving"

    target = _relabel(rules, _discovered("tfserving-test-local-1", f"{base}/local", public="18513"))
    assert target == {
        "__address__": "127.0.0.1:18513",
        "container": "tfserving-test-local-1",
        "pool": "stable",
        "replica": "1",
        "serving_target": "local",
        "router_backend": "local_rest",
        "router_server": "replica2",
    }
    first = _relabel(rules, _discovered("tfserving-test-local", f"{base}/local"))
    assert first is not None
    assert (first["replica"], first["router_server"], first["__address__"]) == ("0", "replica1", "127.0.0.1:18511")
    canary = _relabel(rules, _discovered("tfserving-test-local-canary", f"{base}/local-canary", public="18521"))
    assert canary is not None
    assert (canary["pool"], canary["replica"], canary["serving_target"]) == ("canary", "0", "local")
    assert (canary["router_backend"], canary["router_server"]) == ("local_canary_rest", "canary1")
    # a container of this stack that is not one of the pipeline's replicas: scraped, no router names
    other = _relabel(rules, _discovered("tfdeploy-test-monitoring-ab12cd34", f"{test.state_dir}/monitoring/x"))
    assert other is not None and "router_server" not in other and other["pool"] == "stable"

    # the gRPC port, an unpublished port, and every container outside this stack's state dir are dropped
    assert _relabel(rules, _discovered("tfserving-test-local", f"{base}/local", private=8500)) is None
    assert _relabel(rules, _discovered("tfserving-test-local", f"{base}/local", public="")) is None
    for root in (
        f"{dev.state_dir}/serving/local",
        f"{test.state_dir}2/serving/local",
        "/tmp/model-root",
        "",
        str(test.state_dir),
    ):
        assert _relabel(rules, _discovered("tfserving-test-local", root)) is None, root
    # and the dev stack's relabelling takes the dev stack's containers, not the test stack's
    dev_rules = stack.serving_relabel_configs(dev)
    assert _relabel(dev_rules, _discovered("tfserving-local", f"{dev.state_dir}/serving/local")) is not None
    assert _relabel(dev_rules, _discovered("tfserving-test-local", f"{base}/local")) is None


def test_state_dirs_with_regex_characters_are_matched_literally(monkeypatch, tmp_path):
    s = _stack(monkeypatch, "test", tmp_path / "a.b+c")
    rules = stack.serving_relabel_configs(s)
    assert _relabel(rules, _discovered("tfserving-test-local", f"{tmp_path}/a.b+c/serving/local")) is not None
    assert _relabel(rules, _discovered("tfserving-test-local", f"{tmp_path}/aXb+c/serving/local")) is None


def test_router_names_are_the_pipelines(stacks, monkeypatch):
    from tfdeploy.hooks import serving_host
    from tfdeploy.services.targets import get_target

    assert stack.SERVING_LABEL_MANAGED == serving_host.LABEL_MANAGED
    assert stack.SERVING_LABEL_MODEL_ROOT == serving_host.LABEL_MODEL_ROOT
    assert stack.SERVING_METRICS_PATH in serving_host.MONITORING_CONFIG
    assert stack.SERVING_CONTAINER_REST_PORT == serving_host.REST_PORT
    s = stacks["test"]  # the environment is the test stack's now (get_target reads it)
    stable, canary = get_target("local"), get_target("local", pool="canary")
    expected = [
        (stable.container(i), stable.router_backends[0], stable.router_server(i)) for i in range(s.stable_replicas)
    ]
    expected.append((canary.container(0), canary.router_backends[0], canary.router_server(0)))
    assert stack._replica_router_names(s) == expected
    router = stack.router_config(s)
    for _, backend, server in expected:
        assert re.search(rf"^backend {backend}\n(?:    .*\n)*?    server {server} ", router, re.M), (backend, server)


# ----------------------------------------------------------------------------- promtool / amtool


def test_generated_configs_pass_promtool_and_amtool(stacks):
    promtool, amtool = _tool("promtool"), _tool("amtool")
    for s in stacks.values():
        home = s.state_dir / "prometheus"
        home.mkdir(parents=True)
        (home / "prometheus.yml").write_text(stack.prometheus_config(s))
        (home / "rules.yml").write_text(RULES.read_text())
        done = subprocess.run(
            [promtool, "check", "config", str(home / "prometheus.yml")], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        am = s.state_dir / "alertmanager.yml"
        am.write_text(stack.alertmanager_config(s))
        done = subprocess.run([amtool, "check-config", str(am)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_promtool_check_and_their_unit_tests():
    promtool = _tool("promtool")
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        t["alertname"] for case in yaml.safe_load(RULES_TEST.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert tested == ALERTS


def test_every_alert_has_severity_and_annotations_and_models_are_labelled():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[sm]", rule["for"]), rule["alert"]
        if rule["alert"] in MODEL_ALERTS:
            # TF Serving's and the registry's model label is turned into `model`
            assert '"model", "$1", "model_name", "(.+)"' in rule["expr"], rule["alert"]
    severities = {r["alert"]: r["labels"]["severity"] for r in rules}
    assert severities["ModelP99High"] == severities["ReleaseStuck"] == "warning"
    assert {severities[a] for a in ALERTS - {"ModelP99High", "ReleaseStuck"}} == {"critical"}


def test_rules_leave_out_the_stacks_health_probes():
    """The router's and the pipeline's probes ask TF Serving for a model that does not exist (NOT_FOUND): counted by
    TF Serving, so every rule over request counts must leave them out, or they would alert all the time."""
    text = "\n".join(r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"])
    excluded = re.findall(r'model_name!~"([^"]*)"', text)
    assert excluded and set(excluded) == {"|tfdeploy-.+-probe"}
    selectors = re.findall(r":tensorflow:serving:request_(?:count|latency_bucket)\{[^}]*\}", text)
    assert len(selectors) == 8 and all('model_name!~"|tfdeploy-.+-probe"' in sel for sel in selectors), selectors
    sources = (
        stack.router_config(Settings()),
        (PROJECT_ROOT / "plugins" / "tfdeploy" / "hooks" / "serving_host.py").read_text(),
        (PROJECT_ROOT / "plugins" / "tfdeploy" / "hooks" / "tfserving.py").read_text(),
    )
    probes = {p for src in sources for p in re.findall(r"/v1/models/(tfdeploy-[a-z-]+)", src)}
    assert probes == {"tfdeploy-router-probe", "tfdeploy-readiness-probe"}
    for probe in probes:
        assert re.fullmatch("|tfdeploy-.+-probe", probe)
