"""Fixtures of the deployment checks: the chart rendered by helm, the paths of the tools `make deploy-check` installs.

These tests need helm and the Starlark interpreter under .tools/, which only `make deploy-check` installs: any other
pytest run deselects them (and says so in its summary: "N deselected"). Under `make deploy-check` a missing tool is a
failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "cag"
VALUES_CPU = REPO / "deploy" / "k8s" / "values-cpu.yaml"
VALUES_GPU = REPO / "deploy" / "k8s" / "values-gpu.yaml"
VALUES_DEV = REPO / "deploy" / "tilt" / "values-dev.yaml"
RELEASE = "cag"
SERVICES = ("registry", "router", "cachepool", "compiler", "fallback")
# Each service's gRPC port (its settings' default address), where the chart's probes must ask the health service.
GRPC_PORTS = {"registry": 50051, "cachepool": 50052, "router": 50053, "compiler": 50054, "fallback": 50055}
ENABLED = os.environ.get("CAG_DEPLOY_CHECK") == "1"
HERE = Path(__file__).resolve().parent

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    deselected = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def helm() -> str:
    path = os.environ.get("HELM", "")
    assert path and Path(path).is_file(), "HELM must name the helm binary: run these tests through `make deploy-check`"
    return path


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """`helm template` of the chart with values files and --set pairs, as a list of manifests."""
    cache: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Manifest]] = {}

    def run(values: Iterable[Path] = (), sets: Iterable[str] = ()) -> list[Manifest]:
        key = (tuple(str(v) for v in values), tuple(sets))
        if key not in cache:
            command = [
                helm,
                "template",
                RELEASE,
                str(CHART),
                "--kube-version",
                os.environ.get("KUBE_VERSION", "1.35.0"),
            ]
            for value in key[0]:
                command += ["-f", value]
            for pair in key[1]:
                command += ["--set", pair]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr}"
            cache[key] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return [dict(doc) for doc in cache[key]]

    return run


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def component(manifest: Manifest) -> str | None:
    """The service a manifest belongs to, from its labels or, failing that, its name."""
    meta = manifest.get("metadata", {})
    labels = meta.get("labels") or {}
    value = labels.get("app.kubernetes.io/component")
    if isinstance(value, str):
        return value
    name = str(meta.get("name", ""))
    return next((s for s in SERVICES if name.endswith(s) or f"-{s}-" in f"{name}-"), None)


def pod_spec(workload: Manifest) -> Manifest:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])
