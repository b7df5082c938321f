"""Chart unit tests: helm/cag rendered by `helm template` with the default, CPU and GPU values, checked for what a
cluster would only show at run time: health probes on each service's gRPC port, resources on every container, the
`enabled` flags, secrets only by reference to existing Secrets, and NetworkPolicies that let only the router be
reached from outside the release."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import (
    GRPC_PORTS,
    RELEASE,
    REPO,
    SERVICES,
    VALUES_CPU,
    VALUES_DEV,
    VALUES_GPU,
    Manifest,
    Render,
    component,
    of_kind,
    pod_spec,
)

VALUE_SETS = {"default": [], "cpu": [VALUES_CPU], "gpu": [VALUES_GPU], "dev": [VALUES_DEV]}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# Every optional part switched on, so its templates are checked too.
EVERYTHING = (
    "sourcesSync.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "tls.enabled=true",
    "tls.existingSecret=cag-tls",
    "sources.existingClaim=cag-sources",
    "objectStore.existingSecret=cag-s3",
    "objectStore.endpoint=http://minio:9000",
    "otlp.endpoint=http://otel-collector:4317",
    *(f"{service}.autoscaling.enabled=true" for service in SERVICES),
    *(f"{service}.pdb.enabled=true" for service in SERVICES),
)
# The health service each probe must ask for: the gRPC service names in protos/.
HEALTH_SERVICES = {
    "registry": "cag.v1.RegistryService",
    "cachepool": "cag.v1.CachePoolService",
    "router": "cag.v1.RouterService",
    "compiler": "cag.v1.CompilerService",
    "fallback": "cag.v1.FallbackService",
}


def workloads(manifests: list[Manifest]) -> dict[str, Manifest]:
    found = {component(m): m for kind in WORKLOAD_KINDS for m in of_kind(manifests, kind)}
    return {str(name): m for name, m in found.items() if name}


def all_pod_specs(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    kinds = (*WORKLOAD_KINDS, "CronJob", "Job")
    return [(m["metadata"]["name"], pod_spec(m)) for m in manifests if m.get("kind") in kinds]


@pytest.fixture(params=list(VALUE_SETS))
def values(request: pytest.FixtureRequest) -> list[Path]:
    return list(VALUE_SETS[request.param])


def test_health_service_names_match_the_protos() -> None:
    declared = {
        line.split()[1]
        for proto in (REPO / "protos").rglob("*.proto")
        for line in proto.read_text().splitlines()
        if line.startswith("service ")
    }
    assert {name.rsplit(".", 1)[1] for name in HEALTH_SERVICES.values()} <= declared


def test_every_service_is_deployed_by_default(render: Render) -> None:
    assert set(workloads(render())) == set(SERVICES)


def test_grpc_probes_on_the_health_service(render: Render, values: list[Path]) -> None:
    found = workloads(render(values))
    assert found
    for service, workload in found.items():
        container = pod_spec(workload)["containers"][0]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert port == GRPC_PORTS[service]
        address = {e["name"]: e.get("value") for e in container.get("env", [])}.get(f"CAG_{service.upper()}_ADDRESS")
        assert address and address.endswith(f":{port}"), f"{service} does not listen on its container port"
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{service} has no {probe}"
            grpc = container[probe].get("grpc")
            assert grpc, f"{service} {probe} is not a gRPC probe"
            assert grpc["port"] == port
            assert grpc.get("service") == HEALTH_SERVICES[service]


def test_resources_on_every_container(render: Render, values: list[Path]) -> None:
    for name, spec in all_pod_specs(render(values, EVERYTHING)):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            resources = container.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            assert {"cpu", "memory"} <= set(requests), f"{name}/{container['name']}: requests {requests}"
            assert "memory" in limits, f"{name}/{container['name']}: no memory limit"


def test_pods_run_as_non_root_with_a_read_only_root(render: Render) -> None:
    for name, spec in all_pod_specs(render([], EVERYTHING)):
        assert spec.get("securityContext", {}).get("runAsNonRoot") is True, name
        for container in spec["containers"]:
            context = container.get("securityContext") or {}
            assert context.get("readOnlyRootFilesystem") is True, f"{name}/{container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, f"{name}/{container['name']}"


@pytest.mark.parametrize("service", SERVICES)
def test_enabled_flag_removes_every_object_of_a_service(render: Render, service: str) -> None:
    everything = render([], EVERYTHING)
    assert any(component(m) == service for m in everything)
    without = render([], (*EVERYTHING, f"{service}.enabled=false"))
    left = [f"{m['kind']}/{m['metadata']['name']}" for m in without if component(m) == service]
    assert not left, f"{service}.enabled=false still renders {left}"
    others = {component(m) for m in everything} - {service}
    assert others <= {component(m) for m in without}


def test_optional_parts_follow_their_flags(render: Render) -> None:
    default = {m["kind"] for m in render()}
    everything = {m["kind"] for m in render([], EVERYTHING)}
    for kind in ("CronJob", "ServiceMonitor", "HorizontalPodAutoscaler"):
        assert kind not in default, f"{kind} rendered though its flag is off"
        assert kind in everything, f"{kind} not rendered though its flag is on"


def secret_references(manifests: list[Manifest]) -> set[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if isinstance(node.get(key), dict):
                    names.add(node[key]["name"])
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                names.add(node["secret"]["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifests)
    return names


def test_no_secret_is_rendered(render: Render, values: list[Path]) -> None:
    for sets in ((), EVERYTHING):
        rendered = render(values, sets)
        assert not of_kind(rendered, "Secret"), "the chart renders a Secret: secrets come only via existingSecret"
        for name, spec in all_pod_specs(rendered):
            for container in spec["containers"]:
                for env in container.get("env", []):
                    sensitive = any(w in env["name"] for w in ("PASSWORD", "SECRET", "TOKEN", "NATS_URL", "DATABASE"))
                    assert not (sensitive and "value" in env), f"{name}: {env['name']} is a plain value"


def test_secret_references_follow_existing_secret_values(render: Render) -> None:
    renamed = (
        *EVERYTHING,
        "auth.existingSecret=my-auth",
        "nats.existingSecret=my-nats",
        "database.existingSecret=my-db",
        "objectStore.existingSecret=my-s3",
        "tls.existingSecret=my-tls",
    )
    references = secret_references(render([], renamed))
    assert {"my-auth", "my-nats", "my-db", "my-s3", "my-tls"} <= references
    assert references <= {"my-auth", "my-nats", "my-db", "my-s3", "my-tls"}, f"unexpected Secrets: {references}"


def test_object_store_credentials_only_when_a_secret_is_named(render: Render) -> None:
    assert not any("S3_ACCESS_KEY" in str(spec) for _, spec in all_pod_specs(render()))
    with_secret = render([], ("objectStore.existingSecret=my-s3",))
    assert any("CAG_S3_ACCESS_KEY_ID" in str(spec) for _, spec in all_pod_specs(with_secret))


def ingress_peers(policy: Manifest, port: str) -> list[list[Manifest]]:
    """The `from` lists of the rules that open `port` (an empty list: from anywhere)."""
    rules = policy["spec"].get("ingress") or []
    return [rule.get("from") or [] for rule in rules if any(p.get("port") == port for p in rule.get("ports", []))]


def test_network_policies_keep_internal_services_inside_the_release(render: Render, values: list[Path]) -> None:
    policies = {component(p): p for p in of_kind(render(values), "NetworkPolicy")}
    assert set(SERVICES) <= set(policies), f"services without a NetworkPolicy: {set(SERVICES) - set(policies)}"
    for service, policy in policies.items():
        assert "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        selected = policy["spec"]["podSelector"].get("matchLabels", {})
        assert selected.get("app.kubernetes.io/component") == service
        assert selected.get("app.kubernetes.io/instance") == RELEASE
        if service == "router":
            continue
        grpc_rules = ingress_peers(policy, "grpc")
        assert grpc_rules, f"{service}: no rule opens its gRPC port to the other services"
        for peers in grpc_rules:
            assert peers, f"{service}: its gRPC port is open to everyone"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"{service}: gRPC reachable from {peer}"
                assert peer["podSelector"]["matchLabels"].get("app.kubernetes.io/instance") == RELEASE


def test_router_is_reachable_from_outside_the_release(render: Render) -> None:
    router = next(p for p in of_kind(render(), "NetworkPolicy") if component(p) == "router")
    assert [] in ingress_peers(router, "grpc"), "the router's gRPC port is not open by default"
    narrowed = render([], ("networkPolicy.routerFrom[0].namespaceSelector.matchLabels.team=apps",))
    router = next(p for p in of_kind(narrowed, "NetworkPolicy") if component(p) == "router")
    peers = [peer for rule in ingress_peers(router, "grpc") for peer in rule]
    assert {"namespaceSelector": {"matchLabels": {"team": "apps"}}} in peers


def test_network_policies_follow_their_flag(render: Render) -> None:
    assert not of_kind(render([], ("networkPolicy.enabled=false",)), "NetworkPolicy")


def test_cache_pool_replicas_with_local_disk_and_cache_aware_routing(render: Render) -> None:
    found = workloads(render())
    cachepool = found["cachepool"]
    assert cachepool["spec"]["replicas"] >= 2, "several cache-pool replicas by default"
    claims = cachepool["spec"].get("volumeClaimTemplates") or []
    assert claims, "the cache pool has no local-disk volume per replica"
    router_env = {e["name"]: e.get("value") for e in pod_spec(found["router"])["containers"][0]["env"]}
    assert router_env.get("CAG_ROUTER_REPLICA_DISCOVERY") == "true"


def test_object_store_uri_reaches_the_services(render: Render) -> None:
    rendered = render([], ("objectStore.uri=s3://bucket-under-test/modules",))
    users = [name for name, spec in all_pod_specs(rendered) if "s3://bucket-under-test" in str(spec)]
    assert users, "the object-store URI is in no pod"


def test_gpu_values_ask_for_gpus_on_gpu_nodes(render: Render) -> None:
    spec = pod_spec(workloads(render([VALUES_GPU]))["cachepool"])
    limits = spec["containers"][0]["resources"].get("limits", {})
    assert any(key.endswith("/gpu") for key in limits), f"the GPU cache pool asks for no GPU: {limits}"
    assert spec.get("nodeSelector") or spec.get("affinity"), "the GPU cache pool is not placed on GPU nodes"
    assert spec.get("tolerations"), "the GPU cache pool tolerates no GPU taint"
    image = spec["containers"][0]["image"]
    assert "gpu" in image, f"the GPU values run {image}"


def test_cpu_values_ask_for_no_gpu(render: Render) -> None:
    for name, spec in all_pod_specs(render([VALUES_CPU])):
        assert "/gpu" not in str(spec.get("containers")), f"{name} asks for a GPU with the CPU values"


def settings_fields(service: str) -> set[str]:
    """The settings a service reads (the fields of its settings class, CAG_<SERVICE>_<FIELD>)."""
    from cag.settings import ServiceSettings

    module = importlib.import_module(f"cag.{service}.settings")
    [settings] = [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, ServiceSettings) and c is not ServiceSettings
    ]
    return set(settings.model_fields)


def test_prometheus_annotations_and_otlp_endpoint(render: Render) -> None:
    rendered = render([], ("otlp.endpoint=http://otel-collector:4317",))
    for service, workload in workloads(rendered).items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        container = pod_spec(workload)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        # Every service serves metrics on the port its settings name (CAG_<NAME>_METRICS_PORT).
        assert "metrics_port" in settings_fields(service)
        assert annotations.get("prometheus.io/scrape") == "true", service
        assert int(annotations["prometheus.io/port"]) == ports["metrics"]
        assert int(env[f"CAG_{service.upper()}_METRICS_PORT"]) == ports["metrics"]
        assert env[f"CAG_{service.upper()}_METRICS_HOST"] == "0.0.0.0"  # the scraper is outside the pod
        assert "http://otel-collector:4317" in str(container.get("env")), f"{service} has no OTLP endpoint"


def test_sources_sync_cronjob_runs_cag_sources_sync(render: Render) -> None:
    jobs = of_kind(render([], ("sourcesSync.enabled=true",)), "CronJob")
    assert len(jobs) == 1
    container = pod_spec(jobs[0])["containers"][0]
    command = [*container.get("command", []), *container.get("args", [])]
    assert "sources" in command and "sync" in command, command


def test_signing_key_file_stays_owner_only_under_fs_group(render: Render) -> None:
    """Under a pod fsGroup the kubelet makes a Secret volume's files group-readable whatever defaultMode says
    (kubernetes/kubernetes#57923), and cag.auth.load_key refuses such a key: the file CAG_AUTH_KEY_FILE names must
    come from elsewhere (the chart's init container copies it, mode 0600, into an in-memory emptyDir)."""
    atomic_writer_kinds = ("secret", "projected", "configMap", "downwardAPI")
    for name, spec in all_pod_specs(render([], EVERYTHING)):
        if spec.get("securityContext", {}).get("fsGroup") is None:
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            key_file = {e["name"]: e.get("value") for e in container.get("env", [])}.get("CAG_AUTH_KEY_FILE")
            if not key_file:
                continue
            key_dir = str(Path(key_file).parent)
            mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == key_dir]
            for mount in mounts:
                volume = volumes[mount["name"]]
                assert not set(volume) & set(atomic_writer_kinds), f"{name}: {key_file} comes from {volume}"


TLS = ("tls.enabled=true", "tls.existingSecret=cag-tls")


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def mounted_secret(spec: Manifest, container: Manifest, path: str) -> str:
    """The Secret the file at `path` comes from ("" when none)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return str(volumes[mount["name"]].get("secret", {}).get("secretName", ""))
    return ""


def test_tls_files_reach_every_process_that_speaks_grpc(render: Render) -> None:
    """Every service and the sources-sync job read their certificate, key and CA from the release's Secret, under
    the settings cag.rpc.tls reads, and check servers against one name."""
    from cag.settings import InfraSettings

    rendered = render([], (*TLS, "sourcesSync.enabled=true"))
    specs = all_pod_specs(rendered)
    assert {name for name, _ in specs} >= {f"{RELEASE}-{s}" for s in SERVICES} | {f"{RELEASE}-sources-sync"}
    for name, spec in specs:
        container = spec["containers"][0]
        env = env_of(container)
        for setting in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            assert setting in InfraSettings.model_fields
            path = env.get(f"CAG_{setting.upper()}")
            assert path, f"{name}: no CAG_{setting.upper()}"
            assert mounted_secret(spec, container, path) == "cag-tls", f"{name}: {path} is not from the TLS Secret"
        assert env["CAG_TLS_SERVER_NAME"] == f"{RELEASE}-internal", name  # the release name holds the chart name


def test_without_tls_nothing_of_it_is_rendered(render: Render, values: list[Path]) -> None:
    for name, spec in all_pod_specs(render(values, ("sourcesSync.enabled=true",))):
        container = spec["containers"][0]
        assert not [n for n in env_of(container) if "_TLS_" in n], name
        assert "health" not in {p["name"] for p in container.get("ports", [])}, name
        assert "tls" not in {v["name"] for v in spec.get("volumes", [])}, name


def test_with_tls_probes_go_to_the_plaintext_health_port(render: Render) -> None:
    """kubelet's gRPC probes speak no TLS: each service opens a health-only port (its HEALTH_ADDRESS setting) and
    every probe goes there, never to the TLS port."""
    for service, workload in workloads(render([], TLS)).items():
        assert "health_address" in settings_fields(service)
        container = pod_spec(workload)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        health_address = env_of(container)[f"CAG_{service.upper()}_HEALTH_ADDRESS"]
        assert health_address == f"0.0.0.0:{ports['health']}"
        assert ports["health"] != ports["grpc"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = container[probe]["grpc"]
            assert (grpc["port"], grpc["service"]) == (ports["health"], HEALTH_SERVICES[service]), f"{service} {probe}"


def test_the_router_asks_callers_for_certificates_only_when_told(render: Render) -> None:
    def client_auth(sets: tuple[str, ...]) -> str:
        router = workloads(render([], sets))["router"]
        return str(env_of(pod_spec(router)["containers"][0])["CAG_ROUTER_TLS_CLIENT_AUTH"])

    assert client_auth(TLS) == "false"
    assert client_auth((*TLS, "tls.routerClientAuth=true")) == "true"


def test_the_certificate_carries_the_server_name_and_both_usages(render: Render) -> None:
    rendered = render([], ("tls.enabled=true", "tls.certManager.issuerRef.name=cag-ca", "tls.serverName=cag.example"))
    [certificate] = of_kind(rendered, "Certificate")
    assert "cag.example" in certificate["spec"]["dnsNames"]
    assert set(certificate["spec"]["usages"]) == {"server auth", "client auth"}  # servers that dial each other
    for _, spec in all_pod_specs(rendered):
        assert env_of(spec["containers"][0])["CAG_TLS_SERVER_NAME"] == "cag.example"


def test_file_sources_are_mounted_read_only_where_sources_are_read(render: Render) -> None:
    """The compiler, the fallback (it indexes sources) and the sources-sync job read file:// sources from the claim,
    read-only; nothing else mounts it, and without a claim nobody does."""
    readers = {f"{RELEASE}-compiler", f"{RELEASE}-fallback", f"{RELEASE}-sources-sync"}
    sets = ("sources.existingClaim=knowledge", "sources.mountPath=/srv/kb", "sourcesSync.enabled=true")
    for name, spec in all_pod_specs(render([], sets)):
        claims = {
            v["name"]: v["persistentVolumeClaim"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v
        }
        mounts = {m["name"]: m for m in spec["containers"][0].get("volumeMounts", [])}
        if name in readers:
            assert claims["sources"] == {"claimName": "knowledge", "readOnly": True}, name
            assert (mounts["sources"]["mountPath"], mounts["sources"].get("readOnly")) == ("/srv/kb", True), name
        else:
            assert "sources" not in claims and "sources" not in mounts, name
    for name, spec in all_pod_specs(render([], ("sourcesSync.enabled=true",))):
        assert "sources" not in {v["name"] for v in spec.get("volumes", [])}, name


def test_source_roots_reach_the_registry_and_the_compiler_with_the_promotions_folder(render: Render) -> None:
    """What the registry and the compiler check sources against (cag.source_roots parses it as they do), with each
    tenant's promotions folder added so that approved candidates still compile."""
    from cag.source_roots import SourceRoots

    found = workloads(render([VALUES_CPU]))
    promotions = env_of(pod_spec(found["fallback"])["containers"][0])["CAG_FALLBACK_PROMOTIONS_DIR"]
    for service in ("registry", "compiler"):
        roots = SourceRoots.parse(env_of(pod_spec(found[service])["containers"][0])["CAG_SOURCE_ROOTS"])
        assert roots is not None
        assert roots.of_tenant("acme") == ("s3://cag-knowledge/acme/", f"file://{promotions}/acme/"), service
    for name, spec in all_pod_specs(render([])):
        assert "CAG_SOURCE_ROOTS" not in env_of(spec["containers"][0]), name  # none configured: anywhere
