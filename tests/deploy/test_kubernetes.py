"""deploy/kubernetes: the kustomization renders (`kubectl kustomize`), every built-in object
passes kubernetes-validate in strict mode against the oldest and newest Kubernetes schemas it
ships, the ServiceMonitor matches the prometheus-operator CRD's structure and really selects
the Service's metrics port, the ConfigMap's TOML passes `opos-monitor check-config`, and the
shard each pod computes from its ordinal is accepted by the daemon's configuration — for every
pod, and only for those.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ._tools import CONTAINER_DIR, KUBERNETES_DIR, clean_env, opos_monitor, run, tool

try:
    import yaml  # PyYAML: comes with yamllint and kubernetes-validate
except ImportError:  # pragma: no cover
    pytest.fail("PyYAML is needed: pip install yamllint kubernetes-validate", pytrace=False)

KUBECTL_HINT = "kubectl (with its built-in kustomize) from the distribution's kubectl package"
KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "StatefulSet", "ServiceMonitor",
         "PodDisruptionBudget", "NetworkPolicy"}


def render(directory: Path) -> list[dict[str, Any]]:
    proc = run([tool("kubectl", KUBECTL_HINT), "kustomize", str(directory)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(KUBERNETES_DIR)


def one(docs, kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def sts(docs):
    return one(docs, "StatefulSet")


@pytest.fixture(scope="module")
def container(sts):
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "opos-monitor"]
    return c


@pytest.fixture(scope="module")
def config_toml(docs) -> str:
    cm = one(docs, "ConfigMap")
    assert list(cm["data"]) == ["opos-monitor.toml"]
    return cm["data"]["opos-monitor.toml"]


@pytest.fixture(scope="module")
def config(config_toml) -> dict[str, Any]:
    return tomllib.loads(config_toml)


def env_of(container) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- rendering and schemas --------------------------------------------------------------------


def test_renders_the_expected_objects_in_one_namespace(docs):
    assert {d["kind"] for d in docs} == KINDS
    assert len(docs) == len(KINDS)
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {one(docs, "Namespace")["metadata"]["name"]}
    assert not any(d["kind"] == "Secret" for d in docs), "Secrets are created by the operator, never shipped"


def _validator():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is needed: pip install kubernetes-validate", pytrace=False)
    return kubernetes_validate


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_builtin_objects_pass_strict_schema_validation(docs, which):
    kv = _validator()
    versions = sorted(kv.utils.all_versions(), key=lambda v: tuple(int(x) for x in v.split(".")))
    version = versions[0] if which == "oldest" else versions[-1]
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            with pytest.raises(kv.SchemaNotFoundError):  # a CRD: checked below instead
                kv.validate(doc, version, strict=True)
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {exc.message} at "
                        f"{'/'.join(str(p) for p in exc.path)}")


def test_strict_validation_is_not_vacuous(sts):
    kv = _validator()
    bad = json.loads(json.dumps(sts))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.utils.latest_version(), strict=True)


# The parts of monitoring.coreos.com/v1 ServiceMonitor this deployment uses, with the types
# and patterns of the prometheus-operator CRD; unknown fields are refused (as a strict check).
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"}}}},
            },
        },
    },
}


def test_servicemonitor_matches_the_crd_structure(docs):
    import jsonschema

    jsonschema.validate(one(docs, "ServiceMonitor"), SERVICEMONITOR_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        bad = json.loads(json.dumps(one(docs, "ServiceMonitor")))
        bad["spec"]["endpoints"][0]["scrapeTimeout"] = "10 s"
        jsonschema.validate(bad, SERVICEMONITOR_SCHEMA)


def _duration_s(text: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", text))


def test_servicemonitor_scrapes_the_service_metrics_port(docs, container):
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    labels = svc["metadata"]["labels"]
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in ports
        assert ep["path"] == "/metrics"
        assert _duration_s(ep["scrapeTimeout"]) < _duration_s(ep["interval"])
    # the Service reaches the container's named port, and selects the pods
    cports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(p["targetPort"] in cports for p in ports.values())
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True


def test_selectors_select_the_pods(docs, sts):
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for kind, selector in (("Service", one(docs, "Service")["spec"]["selector"]),
                           ("StatefulSet", sts["spec"]["selector"]["matchLabels"]),
                           ("PodDisruptionBudget", one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]),
                           ("NetworkPolicy", one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])):
        assert selector and all(pod_labels.get(k) == v for k, v in selector.items()), kind
    assert sts["spec"]["serviceName"] == one(docs, "Service")["metadata"]["name"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# --- the configuration ------------------------------------------------------------------------


def test_configmap_toml_passes_check_config(config_toml, tmp_path):
    path = tmp_path / "opos-monitor.toml"
    path.write_text(config_toml)
    proc = run([opos_monitor(), "check-config", str(path)], env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "configuration OK" in proc.stderr


def test_configmap_is_generated_from_the_toml_file(config_toml, sts):
    assert config_toml == (KUBERNETES_DIR / "opos-monitor.toml").read_text()
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert re.fullmatch(r"opos-monitor-config-[a-z0-9]{10}", volumes["config"]["configMap"]["name"]), \
        "a content-hashed name: a config change rolls the pods"


def _mounts(container) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def test_files_are_where_the_configuration_says(config, container, sts):
    env = env_of(container)
    mounts = _mounts(container)
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    cfg_path = Path(env["OPOS_MONITOR_CONFIG"])
    assert Path(mounts["config"]["mountPath"]) == cfg_path.parent and cfg_path.name == "opos-monitor.toml"
    token = Path(config["htcondor"]["token_file"])
    assert Path(mounts["condor-token"]["mountPath"]) == token.parent
    assert volumes["condor-token"]["secret"]["items"] == [{"key": "read.token", "path": token.name}]
    assert not volumes["condor-token"]["secret"].get("optional", False), "no token, no pod"
    password = Path(config["elasticsearch"]["password_file"])
    assert Path(mounts["elasticsearch"]["mountPath"]) == password.parent
    assert volumes["elasticsearch"]["secret"]["items"] == [{"key": "password", "path": password.name}]
    state = env["OPOS_MONITOR__STATE_DIR"]
    assert state == config["state_dir"] and mounts["state"]["mountPath"] == state
    for name in ("config", "condor-token", "elasticsearch"):
        assert mounts[name]["readOnly"] is True
    # with a read-only root file system, /tmp (query workers, the private token directory) is a volume
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]


def _quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    assert m, q
    return int(m.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]


def test_state_volume_holds_the_store(config, sts):
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    size = _quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert size >= 2 * config["store"]["max_bytes"], "the store's bound with room for checkpoints and SQLite's WAL"


def test_listen_port_probes_and_container_port_agree(config, container):
    env = env_of(container)
    port = int(env["OPOS_MONITOR__METRICS__LISTEN"].rpartition(":")[2])
    assert config["metrics"]["listen"] == env["OPOS_MONITOR__METRICS__LISTEN"]
    assert env["OPOS_MONITOR__METRICS__LISTEN"].startswith("0.0.0.0:")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_security_context(sts, container):
    pod = sts["spec"]["template"]["spec"]
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and csc["runAsNonRoot"] is True
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False and csc["privileged"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # the pod's user is the image's USER (tests/deploy/test_container.py checks the image)
    user = next(l.split()[1] for l in (CONTAINER_DIR / "Containerfile").read_text().splitlines() if l.startswith("USER "))
    uid, gid = (int(x) for x in user.split(":"))
    assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (uid, gid, gid)


def test_resources_and_graceful_stop(sts, container):
    from opos_monitor.config import Config

    drain = Config().shutdown_timeout_s + 10  # + up to 10 s for queries abandoned at the timeout
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= drain + 15
    res = container["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
    assert _quantity_bytes(res["limits"]["memory"]) >= _quantity_bytes(res["requests"]["memory"])


def test_network_policy_allows_what_the_daemon_needs(docs):
    np_ = one(docs, "NetworkPolicy")
    assert set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert np_["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    egress_ports = {(p["port"], p["protocol"]) for rule in np_["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (9618, "TCP"), (9200, "TCP")} <= egress_ports


# --- sharding ---------------------------------------------------------------------------------


def test_shard_count_follows_replicas(sts, container):
    assert env_of(container)["OPOS_SHARD_COUNT"] == str(sts["spec"]["replicas"])


def test_changing_replicas_in_the_kustomization_changes_the_shard_count(tmp_path):
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES_DIR, copy)
    k = copy / "kustomization.yaml"
    text = k.read_text()
    assert re.search(r"(?m)^  - name: opos-monitor\n    count: \d+$", text)
    k.write_text(re.sub(r"(?m)^(  - name: opos-monitor\n    count: )\d+$", r"\g<1>5", text))
    docs = render(copy)
    sts = one(docs, "StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert sts["spec"]["replicas"] == 5 and env_of(c)["OPOS_SHARD_COUNT"] == "5"


def _start_script(container) -> tuple[list[str], str]:
    assert container["command"][:2] == ["/bin/sh", "-ec"]
    (script,) = container["args"]
    return container["command"], script


def _run_start(container, config_toml: str, tmp_path: Path, pod_name: str):
    """The container's real start command, with `opos-monitor run` standing in as
    `opos-monitor check-config --show` (the real daemon's validation of what it would run with)."""
    cfg = tmp_path / "opos-monitor.toml"
    cfg.write_text(config_toml)
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    stub = bindir / "opos-monitor"
    stub.write_text(f'#!/bin/sh\n[ "$1" = run ] || exit 97\nexec {opos_monitor()} check-config --show\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = clean_env(POD_NAME=pod_name, OPOS_MONITOR_CONFIG=str(cfg), PATH=f"{bindir}:{os.environ['PATH']}")
    for name, value in env_of(container).items():
        if isinstance(value, str) and name != "OPOS_MONITOR_CONFIG":
            env[name] = value
    command, script = _start_script(container)
    return run([*command, script], env=env)


def test_every_pod_gets_its_own_valid_shard(sts, container, config_toml, tmp_path):
    replicas = sts["spec"]["replicas"]
    assert replicas >= 2
    seen = []
    for ordinal in range(replicas):
        proc = _run_start(container, config_toml, tmp_path, f"opos-monitor-{ordinal}")
        assert proc.returncode == 0, proc.stderr
        seen.append(json.loads(proc.stdout)["shard"])
    assert seen == [f"{i}/{replicas}" for i in range(replicas)]


def test_a_pod_beyond_the_shard_count_is_refused(sts, container, config_toml, tmp_path):
    """`kubectl scale` up without the kustomization: the extra pod fails, naming the key."""
    proc = _run_start(container, config_toml, tmp_path, f"opos-monitor-{sts['spec']['replicas']}")
    assert proc.returncode == 2
    assert "shard" in proc.stderr


def test_a_pod_name_without_an_ordinal_is_refused(container, config_toml, tmp_path):
    proc = _run_start(container, config_toml, tmp_path, "opos-monitor-abc")
    assert proc.returncode == 2
    assert "no StatefulSet ordinal in POD_NAME='opos-monitor-abc'" in proc.stderr


def test_start_script_execs_the_daemon(container):
    """`exec`: opos-monitor replaces the shell and receives SIGTERM itself."""
    _, script = _start_script(container)
    assert script.strip().splitlines()[-1] == "exec opos-monitor run"
    pod_name = [e for e in container["env"] if e["name"] == "POD_NAME"][0]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_prometheus_job_label_is_the_one_the_alerts_expect(docs):
    """With a ServiceMonitor, Prometheus' `job` label is the Service's name unless jobLabel is
    set; alerts/opos.rules.yml looks for up{job="opos-monitor"}."""
    from ._tools import REPO

    assert 'up{job="opos-monitor"}' in (REPO / "alerts/opos.rules.yml").read_text()
    assert one(docs, "Service")["metadata"]["name"] == "opos-monitor"
    assert "jobLabel" not in one(docs, "ServiceMonitor")["spec"]
