"""The Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object validates
strictly against the Kubernetes schema, and the Deployment fits the service it runs."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from service.server.app import create_app
from service.server.settings import Settings
from tests.conftest import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
KUBECTL = shutil.which("kubectl")
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir())


def render(overlay: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (apt-get install kubernetes-client)")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate_strictly(objects: list[dict]) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any unknown or wrong field


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_validates_strictly(overlay):
    objects = render(overlay)
    assert set(by_kind(objects)) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    validate_strictly(objects)
    validate_strictly([yaml.safe_load((KUBE / "examples" / "hpa-queue-depth.yaml").read_text())])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_deployment_fits_the_service_it_runs(overlay):
    kinds = by_kind(render(overlay))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == int(env["PORT"])
    # Probes name paths the app serves, on the container's port.
    paths = set(create_app(Settings()).openapi()["paths"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in paths and get["port"] == "http", probe
        assert container[probe]["timeoutSeconds"] >= 3, probe  # generous: 1 s would restart busy pods
    # The grace period covers the preStop sleep, the drain window and the in-flight work after it.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    finish = float(env["REQUEST_TIMEOUT_S"]) + 5  # service/server/main.py: timeout_graceful_shutdown
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(env["DRAIN_DELAY_S"]) + finish
    # Hardened: non-root, read-only root, no capabilities, the runtime's seccomp profile.
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    grpc = next(p for p in container["ports"] if p["name"] == "grpc")
    assert (
        grpc["containerPort"] == int(env["GRPC_PORT"]) and kinds["Service"]["spec"]["ports"][1]["targetPort"] == "grpc"
    )
    allowed = {p["port"] for rule in kinds["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {port["containerPort"], grpc["containerPort"]}
    selector = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = kinds[kind]["spec"]
        assert (spec["selector"].get("matchLabels") or spec["selector"]) == selector, kind
    gpu = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpu == 1 and env["DEVICE"] == "cuda") if overlay == "gpu" else (gpu is None and env["DEVICE"] == "cpu")


def test_the_kserve_example_speaks_v2_on_the_services_port():
    isvc = yaml.safe_load((KUBE / "examples" / "inferenceservice.yaml").read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    (container,) = isvc["spec"]["predictor"]["containers"]
    paths = set(create_app(Settings()).openapi()["paths"])
    assert container["ports"][0]["containerPort"] == 8000
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths and container[probe]["httpGet"]["port"] == 8000


def test_the_kserve_grpc_example_names_its_port_h2c_as_kserve_routes_grpc():
    isvc = yaml.safe_load((KUBE / "examples" / "inferenceservice-grpc.yaml").read_text())
    (container,) = isvc["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["ports"] == [{"name": "h2c", "containerPort": int(env["GRPC_PORT"]), "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["port"] == int(env["PORT"])
