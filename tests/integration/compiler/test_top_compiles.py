"""`cag top --compiler` against the real compiler service: its recent jobs, a success with the module it built and
a failure with its reason, newest first."""

from __future__ import annotations

import asyncio
import json

import pytest

from cag.cli.main import main
from cag.infra.ports import free_port
from tests.integration.compiler.conftest import PUBLIC, Services
from tests.integration.compiler.test_compiler_service import compile_all, job_failure


async def test_top_lists_the_compilers_recent_jobs(
    services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    failed = await job_failure(services, services.request("shared", PUBLIC, model="no-such-model"))
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(services.key_file))
    no_nats = f"nats://127.0.0.1:{free_port()}"  # the events are not what this test reads
    argv = ["top", "--json", "--pool", f"127.0.0.1:{free_port()}", "--compiler", services.compiler_address,
            "--nats", no_nats, "--timeout", "1"]  # fmt: skip
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert (snapshot["compiler"], snapshot["compiles_error"]) == (services.compiler_address, "")
    newest, oldest = snapshot["compiles"]
    assert (newest["job_id"], newest["state"], newest["module_id"]) == (failed.job_id, "failed", "")
    assert "no-such-model" in newest["error"]
    assert (oldest["state"], oldest["module_id"], oldest["trigger"]) == ("succeeded", built.module_id, "request")
    assert oldest["took_s"] > 0 and oldest["tenant_id"] == "public"
