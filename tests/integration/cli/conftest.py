"""The command line in-process against a real registry app (Postgres, NATS JetStream, gRPC)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cag.cli.main import main
from cag.infra.ports import free_port
from cag.models import TINY
from cag.registry.app import RegistryApp
from cag.registry.settings import RegistrySettings
from cag.settings import InfraSettings
from tests.conftest import LAYOUT
from tests.infra_fixtures import FreshDatabase, Infra

TENANT = "acme"
ROUTE = "widgets"


@dataclass
class Cli:
    """`cag` run in-process (in a worker thread: main() runs its own event loops) with captured output."""

    capsys: pytest.CaptureFixture[str]
    registry: str
    nats_url: str

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    async def compile(self, source: Path, out: Path, *extra: str) -> tuple[int, str, str]:
        return await self(
            "compile", "--model", TINY, "--source", str(source), "--layout", str(LAYOUT),
            "--acl", f"tenant:{TENANT}", "--route", ROUTE, "--out", str(out),
            "--publish", "--registry", self.registry, *extra,
        )  # fmt: skip

    async def show(self, module_id: str) -> dict[str, Any]:
        code, out, err = await self("modules", "show", module_id, "--json", "--registry", self.registry)
        assert code == 0, err
        return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture
def auth_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registry's token-signing key; the CLI under test mints its (admin) tokens from it, as a local
    operator's does from the key `cag infra up` writes."""
    key_file = tmp_path / "auth.key"
    key_file.touch(mode=0o600)
    key_file.write_text(secrets.token_hex(32))
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(key_file))
    monkeypatch.delenv("CAG_TOKEN", raising=False)
    monkeypatch.delenv("CAG_REGISTRY_ADDRESS", raising=False)  # `cag query` without --registry: unverified
    return key_file


@pytest.fixture
async def registry(infra: Infra, fresh_database: FreshDatabase, auth_key_file: Path) -> AsyncIterator[str]:
    """A registry app (gRPC server, invalidation consumer, outbox relay) on a free port; yields its address."""
    address = f"127.0.0.1:{free_port()}"
    app = RegistryApp(
        RegistrySettings(
            infra=InfraSettings(
                database_url=fresh_database.database_url, nats_url=infra.nats_url, auth_key_file=auth_key_file
            ),
            address=address,
        )
    )
    await app.start()
    try:
        yield address
    finally:
        await app.stop()


@pytest.fixture
def cli(registry: str, infra: Infra, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys=capsys, registry=registry, nats_url=infra.nats_url)
