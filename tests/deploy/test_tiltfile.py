"""The Tiltfile, evaluated by a Starlark interpreter with stub Tilt builtins that record every call.

Tilt itself is not installable here; the stubs stand for its API (docker_build, helm, k8s_yaml, k8s_resource, sync,
port_forward and the restart_process extension). The Tiltfile must build an image per service from the Dockerfile's
targets, deploy this chart with the dev values, forward the router's gRPC port and sync the Python sources; and what
it names (images, workloads) must match what the chart renders with those values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, GRPC_PORTS, REPO, SERVICES, VALUES_DEV, Render, of_kind

TILTFILE = REPO / "Tiltfile"
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Tilt:
    """What the Tiltfile asked of Tilt, in order."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for call, args, kwargs in self.calls if call == name]


# Tilt builtins the stubs provide: each returns a record of its call, so values passed on (helm() into k8s_yaml(),
# sync() into live_update) can be checked where they land.
BUILTINS = (
    "docker_build",
    "custom_build",
    "k8s_yaml",
    "helm",
    "k8s_resource",
    "local_resource",
    "port_forward",
    "sync",
    "run",
    "fall_back_on",
    "restart_container",
    "link",
    "probe",
    "tcp_socket_action",
    "allow_k8s_contexts",
    "update_settings",
    "watch_file",
)
EXTENSIONS = {"ext://restart_process": ("docker_build_with_restart", "custom_build_with_restart")}


@pytest.fixture(scope="module")
def tilt() -> Tilt:
    import starlark as sl

    recorded = Tilt()

    def stub(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
            recorded.calls.append((name, args, kwargs))
            return {"tilt": name, "args": list(args), "kwargs": kwargs}

        return call

    def load(module_id: str) -> Any:
        assert module_id in EXTENSIONS, f"the Tiltfile loads an unknown extension {module_id}"
        module = sl.Module()
        for name in EXTENSIONS[module_id]:
            module.add_callable(name, stub(name))
        return module.freeze()

    dialect = sl.Dialect.extended()
    dialect.enable_top_level_stmt = True
    module = sl.Module()
    for name in BUILTINS:
        module.add_callable(name, stub(name))
    ast = sl.parse("Tiltfile", TILTFILE.read_text(), dialect)
    sl.eval(module, ast, sl.Globals.standard(), sl.FileLoader(load))
    return recorded


def image_builds(tilt: Tilt) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return tilt.named("docker_build") + tilt.named("docker_build_with_restart")


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE | re.IGNORECASE))


def test_builds_one_image_per_service_from_dockerfile_targets(tilt: Tilt) -> None:
    builds = image_builds(tilt)
    assert builds, "the Tiltfile builds no image"
    refs = {args[0] for args, _ in builds}
    targets = dockerfile_targets()
    built = {kwargs["target"] for _, kwargs in builds if "target" in kwargs}
    assert built <= targets, f"targets the Dockerfile does not have: {built - targets}"
    for service in SERVICES:
        assert any(str(t).startswith(service) for t in built), f"no image built for {service}"
    for args, kwargs in builds:
        assert args[1] == ".", "images build from the repository root"
        if "dockerfile_contents" in kwargs:
            base = re.search(r"^FROM\s+(\S+)", kwargs["dockerfile_contents"], flags=re.MULTILINE)
            assert base and base.group(1) in refs, f"{args[0]} builds on an image the Tiltfile does not build"
        else:
            assert kwargs.get("dockerfile", "Dockerfile") == "Dockerfile"
            assert "target" in kwargs, f"{args[0]} builds the Dockerfile's last stage, not a service target"


def test_deploys_the_chart_with_dev_values(tilt: Tilt) -> None:
    charts = tilt.named("helm")
    assert len(charts) == 1
    args, kwargs = charts[0]
    assert (REPO / args[0]).resolve() == CHART
    assert [(REPO / v).resolve() for v in kwargs.get("values", [])] == [VALUES_DEV]
    deployed = [args[0] for args, _ in tilt.named("k8s_yaml")]
    assert any(isinstance(d, dict) and d.get("tilt") == "helm" for d in deployed), "helm() output is not deployed"


def test_forwards_the_router_grpc_port(tilt: Tilt) -> None:
    forwards = [
        (args[0], fwd) for args, kwargs in tilt.named("k8s_resource") for fwd in kwargs.get("port_forwards", [])
    ]
    router = [(workload, fwd) for workload, fwd in forwards if str(workload).endswith("router")]
    assert router, "the router's port is not forwarded"
    for _, fwd in router:
        ports = fwd["args"] if isinstance(fwd, dict) else [int(p) for p in str(fwd).split(":")]
        assert GRPC_PORTS["router"] in ports[-1:], f"the router forward does not reach its gRPC port: {fwd}"


def test_live_updates_python_sources(tilt: Tilt) -> None:
    live = [(args, kwargs) for args, kwargs in image_builds(tilt) if kwargs.get("live_update")]
    assert {args[0] for args, _ in live} == {f"cag-{service}" for service in SERVICES}
    for args, kwargs in live:
        steps = kwargs["live_update"]
        synced = {step["args"][0] for step in steps if step.get("tilt") == "sync"}
        for source in ("libs/cag", "services/cag", "cli/cag"):
            assert source in synced, f"{source} is not synced into {args[0]}"
            assert (REPO / source).is_dir()
            only = kwargs.get("only")
            assert only is None or source in only, f"{source} is outside {args[0]}'s build context"
        destinations = {step["args"][1] for step in steps if step.get("tilt") == "sync"}
        for destination in destinations:
            assert destination in kwargs.get("dockerfile_contents", ""), f"{args[0]} may not write {destination}"
        fall_backs = [step for step in steps if step.get("tilt") == "fall_back_on"]
        assert not fall_backs or steps.index(fall_backs[0]) == 0, "fall_back_on must come first"
        assert kwargs.get("entrypoint") == ["python", "-m", "cag." + args[0].removeprefix("cag-")]


def plain_manifests(tilt: Tilt) -> list[dict[str, Any]]:
    """The manifests of the files the Tiltfile deploys as they are (not through helm)."""
    files: list[str] = []
    for args, _ in tilt.named("k8s_yaml"):
        if isinstance(args[0], str):
            files.append(args[0])
        elif isinstance(args[0], list):
            files += [f for f in args[0] if isinstance(f, str)]
    return [doc for f in files for doc in yaml.safe_load_all((REPO / f).read_text()) if doc]


def test_what_the_tiltfile_names_is_what_it_deploys(tilt: Tilt, render: Render) -> None:
    chart = render([VALUES_DEV])
    plain = plain_manifests(tilt)
    assert plain, "the Tiltfile deploys no development NATS or Postgres"
    kinds = ("Deployment", "StatefulSet")
    chart_workloads = {m["metadata"]["name"]: m for kind in kinds for m in of_kind(chart, kind)}
    assert chart_workloads, "the chart renders no workload with the dev values"
    workloads = set(chart_workloads) | {m["metadata"]["name"] for kind in kinds for m in of_kind(plain, kind)}
    resources = {args[0] for args, _ in tilt.named("k8s_resource")} | {a[0] for a, _ in tilt.named("local_resource")}
    for args, kwargs in tilt.named("k8s_resource"):
        assert args[0] in workloads, f"k8s_resource({args[0]!r}): nothing deployed has that name"
        for dep in kwargs.get("resource_deps", []):
            assert dep in resources, f"k8s_resource({args[0]!r}) waits for {dep!r}, which is no resource"
    for name in chart_workloads:
        assert name in resources, f"the chart's {name} is not grouped as a Tilt resource"
    refs = {args[0] for args, _ in image_builds(tilt)}
    for name, workload in chart_workloads.items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            repository = container["image"].rsplit(":", 1)[0]
            assert repository in refs, f"{name} runs {container['image']}, which the Tiltfile does not build"


def test_chart_and_dev_infrastructure_share_one_namespace(tilt: Tilt) -> None:
    (_, kwargs), *_ = tilt.named("helm")
    namespace = kwargs.get("namespace")
    assert namespace, "the chart is deployed in whatever namespace the kube context has"
    for manifest in plain_manifests(tilt):
        if manifest["kind"] == "Namespace":
            assert manifest["metadata"]["name"] == namespace
        else:
            assert manifest["metadata"].get("namespace") == namespace, manifest["metadata"]["name"]
    for _, kwargs in tilt.named("local_resource"):
        assert namespace in str(kwargs.get("cmd", namespace)), "a local command works in another namespace"


def test_dev_secrets_are_the_ones_the_chart_and_postgres_reference(tilt: Tilt, render: Render) -> None:
    script = (REPO / "deploy" / "tilt" / "dev-secrets.sh").read_text()
    referenced: set[str] = set()
    for manifest in render([VALUES_DEV]) + plain_manifests(tilt):
        referenced |= set(re.findall(r"'(?:secretName|name)': '([^']+)'", str(manifest.get("spec", {}))))
    secrets = {name for name in referenced if re.search(rf"create secret generic {re.escape(name)}\b", script)}
    wanted = {"cag-auth", "cag-nats", "cag-database", "cag-postgres-dev"}
    assert wanted <= secrets, f"Secrets the dev release needs that dev-secrets.sh does not make: {wanted - secrets}"


def test_dev_values_allow_the_source_sync(render: Render) -> None:
    workloads = of_kind(render([VALUES_DEV]), "Deployment") + of_kind(render([VALUES_DEV]), "StatefulSet")
    assert workloads, "the chart renders no workload with the dev values"
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            context = container.get("securityContext") or {}
            assert not context.get("readOnlyRootFilesystem"), f"{container['name']}: live update needs a writable root"


def test_files_the_tiltfile_reads_exist() -> None:
    text = TILTFILE.read_text()
    for path in re.findall(r'"((?:helm|deploy|libs|services|cli|benchmarks)/[^"]*)"', text):
        path = path.split()[0]  # a command's first word
        assert (REPO / path).exists(), f"the Tiltfile names {path}, which does not exist"
    assert Path(DOCKERFILE).is_file()
