"""A registry app (Postgres, invalidation consumer, outbox relay to NATS) and a compiler app on the tiny torch
engine, real gRPC servers both; sources are copies of the demo knowledge whose golden questions the tiny
model passes."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.compiler.app import CompilerApp
from cag.compiler.settings import CompilerSettings
from cag.engine import Engine
from cag.infra.ports import free_port
from cag.registry.app import RegistryApp
from cag.registry.settings import RegistrySettings
from cag.rpc.auth import authenticated_channel
from cag.rpc.clients import AsyncRegistryClient
from cag.settings import InfraSettings
from cag.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc
from tests.conftest import EXAMPLES, KNOWLEDGE, PASSING_GOLDEN
from tests.infra_fixtures import FreshDatabase, Infra

LAYOUT = EXAMPLES / "layouts" / "support_agent.v1.json"


@dataclass
class Services:
    registry_address: str
    compiler_address: str
    compiler: CompilerApp
    key: bytes
    knowledge: Path
    key_file: Path

    def token(self) -> str:
        return issue_token(self.key, "user:ops", [Scope.ADMIN], [ALL_TENANTS], 600)

    def registry(self) -> AsyncRegistryClient:
        return AsyncRegistryClient(self.registry_address, token=self.token())

    def stub(self) -> tuple[compiler_pb2_grpc.CompilerServiceStub, object]:
        channel = authenticated_channel(self.compiler_address, self.token())
        return compiler_pb2_grpc.CompilerServiceStub(channel), channel

    def request(self, source: str, acl: common_pb2.Acl, **fields: object) -> compiler_pb2.CompileRequest:
        defaults: dict[str, object] = {
            "model": "tiny-random-llama",
            "source_uri": (self.knowledge / source).as_uri(),
            "layout_uri": LAYOUT.as_uri(),
            "acl": acl,
            "publish": True,
        }
        return compiler_pb2.CompileRequest(**(defaults | fields))  # type: ignore[arg-type]


PUBLIC = common_pb2.Acl(scope=common_pb2.ACL_SCOPE_PUBLIC, tenant_id="public")
ACME = common_pb2.Acl(scope=common_pb2.ACL_SCOPE_TENANT, tenant_id="acme")


@pytest.fixture
def compiler_extra() -> tuple[dict[str, str], dict[str, str]]:
    """More (infra, settings) fields of the compiler under test; a test module may override this fixture."""
    return {}, {}


@pytest.fixture
async def services(
    infra: Infra,
    fresh_database: FreshDatabase,
    tiny_engine: Engine,
    models_dir: Path,
    tmp_path: Path,
    compiler_extra: tuple[dict[str, str], dict[str, str]],
) -> AsyncIterator[Services]:
    key_file = tmp_path / "auth.key"
    key_file.touch(mode=0o600)
    key_file.write_text(secrets.token_hex(32))
    shared = InfraSettings(database_url=fresh_database.database_url, nats_url=infra.nats_url, auth_key_file=key_file)
    knowledge = tmp_path / "knowledge"
    for name in ("shared", "billing"):
        shutil.copytree(KNOWLEDGE / name, knowledge / name)
        (knowledge / name / "golden.json").write_text(json.dumps(PASSING_GOLDEN))
    registry_address = f"127.0.0.1:{free_port()}"
    infra_extra, settings_extra = compiler_extra
    settings = CompilerSettings(
        infra=shared.model_copy(update=infra_extra),
        address=f"127.0.0.1:{free_port()}",
        registry_address=registry_address,
        out_dir=tmp_path / "modules",
        group=f"compiler-{secrets.token_hex(4)}",
        CAG_COMPILER_HOME=models_dir.parent,
        CAG_COMPILER_ENGINE="torch",
        **settings_extra,
    )  # type: ignore[call-arg]
    registry = RegistryApp(RegistrySettings(infra=shared, address=registry_address))
    await registry.start()
    compiler = CompilerApp(settings, engine=tiny_engine)
    try:
        await compiler.start()
        yield Services(
            registry.settings.address, compiler.settings.address, compiler, load_key(key_file), knowledge, key_file
        )
    finally:
        await compiler.stop()
        await registry.stop()
