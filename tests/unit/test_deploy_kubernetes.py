"""deploy/kubernetes: every manifest valid against Kubernetes' schemas, offline, and whole.

Schemas: the PyPI package kubernetes-validate, which carries the JSON schemas of every
Kubernetes release it supports (no network), strict (unknown fields are errors), for the
oldest release the base supports and the newest the package knows. Then what a schema cannot
see: the kustomization lists exactly the files there are, every Deployment has probes,
resources and a locked-down securityContext, selectors match the pods they mean, Services,
PodDisruptionBudgets and the HorizontalPodAutoscaler name what exists, and every ConfigMap and
Secret a pod reads is generated, listed, or one of the example Secrets the docs ask for.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs, no py.typed
import pytest
import yaml

from switchboard_devstack.stack import Ports

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy/kubernetes/base"
EXAMPLES = ROOT / "deploy/kubernetes/examples"
# The oldest Kubernetes the base is written for (policy/v1, autoscaling/v2, sizeLimit...),
# and the newest release whose schemas the installed kubernetes-validate carries.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SERVICES = ("router", "catalog", "metering")

Manifest = dict[str, Any]


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return document


def documents(path: Path) -> Iterator[Manifest]:
    for document in yaml.safe_load_all(path.read_text()):
        if document:
            yield document


def manifests() -> list[tuple[str, Manifest]]:
    """(file, manifest) of every resource the kustomization lists."""
    return [
        (name, document)
        for name in kustomization()["resources"]
        for document in documents(BASE / name)
    ]


def of_kind(kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for _, m in manifests() if m["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, Manifest]]:
    for kind in ("Deployment", "Job"):
        for name, manifest in of_kind(kind).items():
            yield f"{kind}/{name}", manifest["spec"]["template"]["spec"]


def examples() -> list[Manifest]:
    return [m for path in sorted(EXAMPLES.glob("*.yaml")) for m in documents(path)]


def schema_errors(manifest: Manifest, version: str) -> str | None:
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{manifest['kind']}/{manifest['metadata']['name']}: {error}"
    return None


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    everything = [m for _, m in manifests()] + examples()
    errors = [e for m in everything if (e := schema_errors(m, version)) is not None]
    assert not errors, "\n".join(errors)
    assert len(everything) >= 15


def test_the_schema_check_refuses_a_broken_manifest() -> None:
    deployment = of_kind("Deployment")["router"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # misspelt
    assert schema_errors(broken, VERSIONS[0]) is not None
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "three"
    assert schema_errors(broken, VERSIONS[0]) is not None


def test_kustomization_lists_every_file() -> None:
    listed = set(kustomization()["resources"])
    generated = {
        file for generator in kustomization().get("configMapGenerator", [])
        for file in generator.get("files", [])
    }  # fmt: skip
    present = {path.name for path in BASE.iterdir()} - {"kustomization.yaml"}
    assert listed | generated == present
    assert len(kustomization()["resources"]) == len(listed), "a resource is listed twice"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_renders_the_base_to_valid_manifests() -> None:
    """Where kubectl is at hand, its built-in kustomize renders the base as a cluster would
    receive it (namespace, labels, the generated ConfigMap's name); the result is valid too."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents_out = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(documents_out) == len(manifests()) + len(kustomization()["configMapGenerator"])
    errors = [e for m in documents_out if (e := schema_errors(m, VERSIONS[-1])) is not None]
    assert not errors, "\n".join(errors)
    assert all(m["metadata"].get("namespace") == "switchboard" for m in documents_out
               if m["kind"] != "Namespace")  # fmt: skip


def test_deployments_are_the_services_on_make_runs_ports() -> None:
    deployments = of_kind("Deployment")
    assert set(deployments) == set(SERVICES)
    ports = Ports()
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"switchboard_{name}"]
        declared = {port["name"]: port["containerPort"] for port in container["ports"]}
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert declared["grpc"] == getattr(ports, name) == int(env["SWITCHBOARD_GRPC_PORT"])
        metrics = getattr(ports, f"{name}_metrics")
        assert declared["metrics"] == metrics == int(env["SWITCHBOARD_METRICS_PORT"])
    router = deployments["router"]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in router["env"]}
    assert int(env["SWITCHBOARD_HTTP_PORT"]) == ports.router_http
    assert {p["name"]: p["containerPort"] for p in router["ports"]}["http"] == ports.router_http


@pytest.mark.parametrize("name", SERVICES)
def test_deployment_has_probes_resources_and_a_locked_down_context(name: str) -> None:
    spec = of_kind("Deployment")[name]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    # Kubelet's grpc probes on the plaintext health-only port the process serves.
    health_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert int(env["SWITCHBOARD_HEALTH_PORT"]) == health_port
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": health_port}, probe
        assert container[probe]["timeoutSeconds"] >= 3
    assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/certs", "/tmp"} <= mounts
    grace = int(
        next(
            v
            for k, v in yaml.safe_load((BASE / "configmap.yaml").read_text())["data"].items()
            if k == "SWITCHBOARD_SHUTDOWN_GRACE_SECONDS"
        )
    )
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > pause + grace


def test_selectors_match_their_pods() -> None:
    deployments = of_kind("Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
    for name, service in of_kind("Service").items():
        (target,) = [
            d for d in deployments.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        (container,) = target["spec"]["template"]["spec"]["containers"]
        named = {port["name"] for port in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, f"Service/{name}: {port['targetPort']}"
    for name, budget in of_kind("PodDisruptionBudget").items():
        matched = [
            d for d in deployments.values()
            if budget["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert len(matched) == 1, f"PodDisruptionBudget/{name}"
    assert set(of_kind("PodDisruptionBudget")) == set(deployments)


def test_services_expose_grpc_http_and_metrics() -> None:
    services = of_kind("Service")
    assert set(services) == set(SERVICES)
    ports = {
        name: {p["name"]: p["port"] for p in s["spec"]["ports"]} for name, s in services.items()
    }
    assert ports["router"] == {"grpc": 50051, "http": 8080, "metrics": 9091}
    assert ports["catalog"] == {"grpc": 50052, "metrics": 9092}
    assert ports["metering"] == {"grpc": 50053, "metrics": 9093}
    config = yaml.safe_load((BASE / "configmap.yaml").read_text())["data"]
    assert config["SWITCHBOARD_CATALOG_ADDR"] == "catalog:50052"
    assert config["SWITCHBOARD_METERING_ADDR"] == "metering:50053"


def test_the_autoscaler_scales_the_router() -> None:
    (autoscaler,) = of_kind("HorizontalPodAutoscaler").values()
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "router")
    assert target["name"] in of_kind("Deployment")
    assert "replicas" not in of_kind("Deployment")["router"]["spec"]  # the autoscaler's to set
    (container,) = of_kind("Deployment")["router"]["spec"]["template"]["spec"]["containers"]
    assert "cpu" in container["resources"]["requests"]  # utilisation needs a request
    assert autoscaler["spec"]["minReplicas"] >= 2  # with maxUnavailable 1, one pod stays


def test_every_config_and_secret_a_pod_reads_exists() -> None:
    config_maps = set(of_kind("ConfigMap")) | {
        generator["name"] for generator in kustomization()["configMapGenerator"]
    }
    secrets = {m["metadata"]["name"]: m for m in examples() if m["kind"] == "Secret"}
    secrets |= {f"switchboard-tls-{name}": secrets["switchboard-tls-router"] for name in SERVICES}
    for where, spec in pod_specs():
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, where
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], where


def test_example_secrets_hold_placeholders_only() -> None:
    for secret in examples():
        assert secret["kind"] == "Secret"
        assert "data" not in secret, "examples use readable stringData"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value or "PLACEHOLDER" in value, f"{key} looks real"
            assert "PRIVATE KEY-----\n" not in value or "PLACEHOLDER" in value


def test_the_migration_job_runs_the_generated_script() -> None:
    (job,) = of_kind("Job").values()
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    (generator,) = kustomization()["configMapGenerator"]
    (script,) = generator["files"]
    assert container["command"] == ["python", f"{mount['mountPath']}/{script}"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == generator["name"]
    assert spec["restartPolicy"] in {"OnFailure", "Never"}
    assert spec["securityContext"]["runAsNonRoot"] is True
