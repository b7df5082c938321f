"""`cag candidates` in-process against a fallback gRPC server with promotion (real Postgres, MiniLM)."""

from __future__ import annotations

import asyncio
import json

import pytest

from cag.auth import Scope
from cag.auth.tokens import issue_token, load_key
from cag.cli.main import main
from cag.fallback.promotion import Promotion
from tests.infra_fixtures import Infra
from tests.integration.fallback.conftest import REFUND_QUERIES, count_served


async def cag(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_list_then_reject_twice(
    infra: Infra,
    promotion_server: tuple[str, Promotion],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, promotion = promotion_server
    token = issue_token(load_key(infra.auth_key_file), "user:ops-alice", [Scope.READ, Scope.WRITE], ["acme"], 600)
    monkeypatch.setenv("CAG_TOKEN", token)
    await count_served(promotion, REFUND_QUERIES, "c-refunds")

    code, out, err = await cag(capsys, "candidates", "list", "--json", "--fallback", address)
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["tenant_id"], listed["state"], listed["count"]) == ("acme", "proposed", 3)
    assert sorted(listed["queries"]) == sorted(REFUND_QUERIES) and listed["evidence_ids"] == ["c-refunds"]

    code, out, err = await cag(capsys, "candidates", "list", "--state", "rejected", "--json", "--fallback", address)
    assert (code, json.loads(out)) == (0, [])

    reject = ("candidates", "reject", listed["id"], "--comment", "duplicate", "--fallback", address)
    code, out, err = await cag(capsys, *reject)
    assert (code, out.strip()) == (0, listed["id"])
    assert "rejected" in err
    code, out, err = await cag(capsys, *reject)
    assert code == 4  # FAILED_PRECONDITION
    assert "FAILED_PRECONDITION" in err and "already reviewed" in err

    code, out, err = await cag(capsys, "candidates", "list", "--fallback", address)
    assert code == 0 and "rejected" in out and listed["id"] in out
