"""`cag ask` against the scripted RouterService of test_sdk over real gRPC: streamed text, the final record, JSON,
and a typed error's exit code."""

from __future__ import annotations

import asyncio
import json

import pytest

from cag.cli.main import main
from cag.errors import PermissionDeniedError
from tests.integration.client.test_sdk import ScriptedRouter, serve, user_token


async def test_ask_streams_then_prints_the_record(capsys: pytest.CaptureFixture[str]) -> None:
    router = ScriptedRouter()
    async with serve(router) as address:
        argv = [
            "ask",
            "--token",
            user_token(),
            "--address",
            address,
            "--route",
            "refunds",
            "--meta",
            "intent=refund",
            "q?",
        ]
        assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr()
    assert out.out == "Hello\n"
    assert "path     module" in out.err and "route    refunds" in out.err and "basis    metadata r7" in out.err
    assert "sys v3 (engine), billing v3 (engine)" in out.err and "ttft     2.5 ms" in out.err
    assert dict(router.calls[0].metadata) == {"intent": "refund", "route": "refunds"}


async def test_ask_json(capsys: pytest.CaptureFixture[str]) -> None:
    async with serve(ScriptedRouter()) as address:
        assert (
            await asyncio.to_thread(main, ["ask", "--token", user_token(), "--address", address, "--json", "q?"]) == 0
        )
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == "Hello" and record["summary"]["modules"][1]["tier"] == "engine"


async def test_ask_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    async with serve(ScriptedRouter([PermissionDeniedError("may not read tenant 'globex'")])) as address:
        argv = ["ask", "--token", user_token(), "--address", address, "--tenant", "globex", "q?"]
        assert await asyncio.to_thread(main, argv) == 7
    assert "error (PERMISSION_DENIED, PERMISSION_DENIED): may not read tenant 'globex'" in capsys.readouterr().err


def test_ask_refuses_a_malformed_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--token", user_token(), "--meta", "intent", "q?"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
