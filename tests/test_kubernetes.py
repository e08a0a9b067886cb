"""The Kubernetes manifests agree with each other and with what they deploy.

No cluster runs here, so this checks what a dry run would not: selectors reach the pods, every Service port
lands on a declared container port, probes use endpoints the servers have, the frontend reaches the
tritonserver of its own pod, the profile the pod renders exists and asks for as many GPUs as the pod gets,
and the autoscaler reads a metric the llm model exports, under the name prometheus-adapter serves it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from frontend.middleware import OPEN_PATHS
from tests.servers import ROOT

KUBERNETES = ROOT / "docker" / "kubernetes"
# Where docker/Dockerfile.triton puts the repository.
IMAGE_ROOT = "/opt/tritonllm/"
TRITON_PROBE_PATHS = {"/v2/health/ready", "/v2/health/live"}


def documents(name: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all((KUBERNETES / name).read_text()) if document]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """Every object the kustomization applies, by kind."""
    kustomization = documents("kustomization.yaml")[0]
    found = {}
    for name in kustomization["resources"]:
        for document in documents(name):
            assert document["kind"] not in found, f"two {document['kind']} objects"
            found[document["kind"]] = document
    return found


def containers(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["containers"]}


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's target port, by number or by the container port's name."""
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    if isinstance(port, int):
        assert port in ports.values(), (container["name"], port)
        return port
    return ports[port]


def argument(container: dict[str, Any], flag: str) -> str:
    values = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith(f"{flag}=")]
    assert len(values) == 1, (flag, container["args"])
    return values[0]


def test_every_manifest_is_applied(objects: dict[str, dict[str, Any]]) -> None:
    applied = set(documents("kustomization.yaml")[0]["resources"])
    # The adapter's Helm values are not a Kubernetes object.
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter-values.yaml"}
    assert applied == on_disk
    assert set(objects) == {"PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler"}


def test_selectors_reach_the_pods(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()


def test_service_ports_land_on_container_ports(objects: dict[str, dict[str, Any]]) -> None:
    """Each Service port reaches the container port of the same number (the one the docs name)."""
    declared = {
        entry["name"]: entry["containerPort"] for container in containers(objects).values() for entry in container["ports"]
    }
    service_ports = objects["Service"]["spec"]["ports"]
    assert {port["name"] for port in service_ports} == set(declared)
    for port in service_ports:
        target = port["targetPort"]
        assert (declared[target] if isinstance(target, str) else target) == port["port"], port


def test_probes_use_the_servers_health_endpoints(objects: dict[str, dict[str, Any]]) -> None:
    by_name = containers(objects)
    for name, container in by_name.items():
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind not in container:
                continue
            probe = container[kind]["httpGet"]
            port = port_number(container, probe["port"])
            if name == "triton":
                assert probe["path"] in TRITON_PROBE_PATHS and port == 8000, (name, kind, probe)
            else:
                # Probes carry no API key.
                assert probe["path"] in OPEN_PATHS and port == int(argument(container, "--port")), (name, kind)
    # Liveness must not follow Triton's readiness, or a loading tritonserver gets its frontend restarted.
    assert by_name["frontend"]["livenessProbe"]["httpGet"]["path"] != "/health"


def test_the_frontend_reaches_its_own_tritonserver(objects: dict[str, dict[str, Any]]) -> None:
    by_name = containers(objects)
    host, port = argument(by_name["frontend"], "--triton-url").rsplit(":", 1)
    assert host in {"127.0.0.1", "localhost"}
    assert port_number(by_name["triton"], "triton-grpc") == int(port)


def test_streams_get_time_to_finish_when_a_pod_stops(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    exit_timeout = int(argument(containers(objects)["triton"], "--exit-timeout-secs"))
    assert 30 < exit_timeout < pod["terminationGracePeriodSeconds"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_renders_the_kustomization() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    kinds = [document["kind"] for document in yaml.safe_load_all(rendered) if document]
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service"]


def test_the_pod_gets_the_gpus_its_profile_shards_over(objects: dict[str, dict[str, Any]]) -> None:
    by_name = containers(objects)
    profile_path = {entry["name"]: entry["value"] for entry in by_name["triton"]["env"]}["TRITONLLM_PROFILE"]
    assert profile_path.startswith(IMAGE_ROOT)
    profile = yaml.safe_load((ROOT / profile_path.removeprefix(IMAGE_ROOT)).read_text())
    gpus = by_name["triton"]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == profile["tensor_parallel_size"] * profile["llm_instances"]
    # The frontend templates and tokenizes with the checkpoint the engine serves.
    assert argument(by_name["frontend"], "--model") == profile["model"]
    checkpoints = objects["PersistentVolumeClaim"]["metadata"]["name"]
    volumes = {volume["name"]: volume for volume in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    for container in by_name.values():
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == checkpoints
    # The checkpoints the profile names are on that volume, speech recognition's included.
    assert profile["model"].startswith("/models/") and profile["whisper_model"].startswith("/models/")


def test_the_autoscaler_reads_a_metric_llm_exports(objects: dict[str, dict[str, Any]]) -> None:
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == objects["Deployment"]["metadata"]["name"]
    (metric,) = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = set(re.findall(r'"(llm_[a-z_]+)"', (ROOT / "triton_adapters" / "llm_metrics.py").read_text()))
    assert name in exported
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port_number(containers(objects)["triton"], "metrics")
    (rule,) = documents("prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    assert rule["seriesQuery"].startswith(f"{name}{{") and rule["name"]["as"] == name
