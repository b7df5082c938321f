"""The gRPC protos and their generated code: up to date, importable, in step with the module file format."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from cag.acl import AclScope
from cag.errors import Status
from cag.metadata import FORMAT_VERSION, GoldenStatus, ModuleMetadata
from cag.v1 import common_pb2

REPO = Path(__file__).resolve().parents[3]
PROTOS = sorted(p.stem for p in (REPO / "protos" / "cag" / "v1").glob("*.proto"))

# The request path of each service (ARCHITECTURE.md, services table).
SERVICES = {
    "router": ("RouterService", {"Generate", "Explain"}),
    "compiler": ("CompilerService", {"Compile", "GetJob", "ListJobs"}),
    "registry": (
        "RegistryService",
        {
            "Register",
            "Publish",
            "Get",
            "List",
            "ResolveRoute",
            "Invalidate",
            "Rollback",
            "Watch",
            "ListAudit",
            "Quarantine",
            "PutRouteRules",
            "GetRouteRules",
        },
    ),
    "cachepool": ("CachePoolService", {"Generate", "GenerateFromEvidence", "Prefetch", "Pin", "Evict", "Stats"}),
    "fallback": ("FallbackService", {"Generate", "Index", "Candidates", "Review"}),
}


def test_generated_code_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"generated code is stale; run scripts/gen_protos.py\n{done.stderr}"


@pytest.mark.parametrize("name", PROTOS)
def test_generated_modules_import(name: str) -> None:
    messages = importlib.import_module(f"cag.v1.{name}_pb2")
    importlib.import_module(f"cag.v1.{name}_pb2_grpc")
    assert messages.DESCRIPTOR.package == "cag.v1"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_each_service_has_its_request_path(name: str) -> None:
    service, methods = SERVICES[name]
    descriptor = importlib.import_module(f"cag.v1.{name}_pb2").DESCRIPTOR.services_by_name[service]
    assert set(descriptor.methods_by_name) == methods
    stubs = importlib.import_module(f"cag.v1.{name}_pb2_grpc")
    assert hasattr(stubs, f"{service}Stub")
    assert hasattr(stubs, f"add_{service}Servicer_to_server")


def test_module_has_every_metadata_field() -> None:
    proto_fields = set(common_pb2.Module.DESCRIPTOR.fields_by_name)
    missing = [f.name for f in dataclasses.fields(ModuleMetadata) if f.name not in proto_fields]
    assert not missing, f"cag.v1.Module lacks module file fields: {missing}"


def test_metadata_enums_have_proto_values() -> None:
    for scope in AclScope:
        assert common_pb2.AclScope.Value(f"ACL_SCOPE_{scope.name}")
    for status in GoldenStatus:
        assert common_pb2.GoldenStatus.Value(f"GOLDEN_STATUS_{status.name}")


def test_every_domain_status_is_a_grpc_code() -> None:
    # The interceptor maps CagError.status to grpc.StatusCode by name.
    for status in Status:
        assert grpc.StatusCode[status.name].name == status.value


def test_module_round_trips() -> None:
    module = common_pb2.Module(
        module_id="m-1",
        tenant_id="acme",
        route="billing",
        model_name="smollm2-135m",
        model_revision="rev",
        tokenizer_revision="tok",
        context_checksum="c" * 64,
        source_checksum="s" * 64,
        token_count=1234,
        dtype="bf16",
        storage_uri="file:///modules/m-1.safetensors",
        acl_scope=common_pb2.ACL_SCOPE_WORKSPACE,
        acl_principal="ws-7",
        layout_id="chat-v1",
        layout_hash="l" * 64,
        layout='{"system":"..."}',
        parent_id="m-0",
        parent_chain_hash="p" * 64,
        chain_hash="h" * 64,
        engine_fingerprint="torch/llama/rope-10000",
        golden_status=common_pb2.GOLDEN_STATUS_PASSED,
        golden_results=[
            common_pb2.GoldenResult(question="Refund window?", expect=["30 days"], answer="30 days.", passed=True)
        ],
        tensor_checksum="t" * 64,
        format_version=FORMAT_VERSION,
        version=3,
        state=common_pb2.MODULE_STATE_PUBLISHED,
        state_reason="published by ci",
        source_uri="file:///knowledge/billing",
    )
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    module.created_at.FromDatetime(created)
    module.published_at.FromDatetime(created)

    back = common_pb2.Module.FromString(module.SerializeToString(deterministic=True))

    assert back == module
    assert back.created_at.ToDatetime(tzinfo=UTC) == created
    assert back.created_at.ToJsonString() == "2025-01-02T03:04:05Z"  # the module file header's form
    assert not back.HasField("expires_at")  # unset: never expires
    assert back.golden_results[0].expect == ["30 days"]


def test_generate_response_is_one_event() -> None:
    response = common_pb2.GenerateResponse(token=common_pb2.TokenChunk(text="Hi", token_ids=[42], index=0))
    assert response.WhichOneof("event") == "token"
    response.done.CopyFrom(common_pb2.GenerateSummary(ttft_ms=12.5, tokens=1, path=common_pb2.ANSWER_PATH_MODULE))
    assert response.WhichOneof("event") == "done"
