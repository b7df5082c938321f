"""The command line against a real registry (Postgres, NATS JetStream, gRPC): compile --publish,
`cag modules`, rollback, `cag query` checking files against their records, and `cag invalidate`
events applied by the registry's consumer."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from cag.cli.registry_client import registry_client
from cag.events.schemas import STREAM, Envelope, decode
from cag.models import TINY
from cag.rpc.errors import error_details
from cag.settings import CagSettings
from tests.conftest import PASSING_GOLDEN
from tests.integration.cli.conftest import ROUTE, TENANT, Cli
from tests.unit.kvmodule.test_kvmodule import rewrite_header, set_metadata

# PASSING_GOLDEN (tests.conftest): the tiny model's answers for both document versions below contain "e"
# (checked by a first run: "Poverty enthusiastically}..." and "Poverty cleavage sipping...").
FAILING_GOLDEN = [{"question": "How much do widgets cost?", "expect": ["this phrase is never generated"]}]


def write_source(directory: Path, *, price: int, golden: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "widgets.md").write_text(
        f"---\ntitle: Widgets\nsection: policy\norder: 1\nupdated: 2026-01-20\n---\nWidgets cost {price} dollars.\n"
    )
    (directory / "golden.json").write_text(json.dumps(golden))
    return directory


def published_id(out: str) -> tuple[str, int]:
    """(module id, version) from compile --publish's `published ID as version N of T/R` line."""
    words = out.strip().splitlines()[-1].split()
    assert words[0] == "published", out
    return words[1], int(words[4])


async def test_publish_list_show_rollback(cli: Cli, tmp_path: Path) -> None:
    source = write_source(tmp_path / "widgets", price=5, golden=PASSING_GOLDEN)
    code, out, err = await cli.compile(source, tmp_path / "out")
    assert code == 0, err
    first, version = published_id(out)
    assert version == 1
    assert out.strip().endswith(f"of {TENANT}/{ROUTE}")

    code, out, err = await cli("modules", "list", "--tenant", TENANT, "--registry", cli.registry)
    assert code == 0, err
    [row] = [line for line in out.splitlines() if first in line]
    assert "published" in row and "passed" in row and TINY in row and "support_agent.v1" in row
    assert row.split("│")[4].strip() == "1"  # the version column

    shown = await cli.show(first)
    assert (shown["state"], shown["version"]) == ("MODULE_STATE_PUBLISHED", "1")  # int64 is a JSON string
    assert shown["golden_status"] == "GOLDEN_STATUS_PASSED"
    assert shown["source_uri"] == source.resolve().as_uri()
    assert shown["storage_uri"] == (tmp_path / "out").resolve().as_uri() + f"/{first}.safetensors"
    code, out, err = await cli("modules", "show", first, "--registry", cli.registry)
    assert code == 0, err
    assert first in out and "published" in out

    # A changed source is a new module: version 2 of the same route.
    write_source(source, price=7, golden=PASSING_GOLDEN)
    code, out, err = await cli.compile(source, tmp_path / "out", "--source-uri", "git+https://kb.example/widgets")
    assert code == 0, err
    second, version = published_id(out)
    assert (second != first, version) == (True, 2)
    assert (await cli.show(second))["source_uri"] == "git+https://kb.example/widgets"

    code, out, err = await cli(
        "modules", "list", "--route", ROUTE, "--state", "published", "--page-size", "1", "--all",
        "--registry", cli.registry,
    )  # fmt: skip
    assert code == 0, err
    assert first in out and second in out  # two pages of one, followed

    code, out, err = await cli("modules", "list", "--route", ROUTE, "--page-size", "1", "--registry", cli.registry)
    assert code == 0, err
    assert (first in out) != (second in out)  # one page of one module
    assert "--page-token" in err

    code, out, err = await cli(
        "modules", "rollback", "--tenant", TENANT, "--route", ROUTE, "--to-version", "1", "--reason", "v2 regressed",
        "--registry", cli.registry,
    )  # fmt: skip
    assert code == 0, err
    assert f"now serves version 1 ({first})" in out

    # Who did what, why: the audit trail, newest first, as the command's authenticated identity.
    code, out, err = await cli("modules", "audit", "--tenant", TENANT, "--json", "--registry", cli.registry)
    assert code == 0, err
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["action"], e["version"], e["module_ids"], e.get("reason")) for e in entries] == [
        ("AUDIT_ACTION_ROLLBACK", "1", [first], "v2 regressed"),
        ("AUDIT_ACTION_PUBLISH", "2", [second], None),
        ("AUDIT_ACTION_PUBLISH", "1", [first], None),
    ]
    assert len({e["actor"] for e in entries}) == 1 and entries[0]["actor"]
    code, out, err = await cli("modules", "audit", "--tenant", TENANT, "--page-size", "1", "--registry", cli.registry)
    assert code == 0, err
    assert "rollback" in out and "v2 regressed" in out and "--page-token" in err

    with registry_client(CagSettings(), cli.registry) as client:
        resolved = await asyncio.to_thread(client.resolve_route, TENANT, ROUTE)
    assert (resolved.route_version, resolved.chain[-1].module_id) == (1, first)

    code, _, err = await cli(
        "modules", "rollback", "--tenant", TENANT, "--route", ROUTE, "--to-version", "9", "--registry", cli.registry
    )
    assert code == 3
    assert err.startswith("error (NOT_FOUND): ")


async def test_keep_failed_publish_is_refused_by_the_registry(cli: Cli, tmp_path: Path) -> None:
    source = write_source(tmp_path / "widgets", price=5, golden=FAILING_GOLDEN)
    code, out, err = await cli.compile(source, tmp_path / "out", "--keep-failed")
    assert code == 4
    assert "error (FAILED_PRECONDITION): " in err
    assert "golden tests failed" in err
    assert "published" not in out
    # Registered QUARANTINED (so it can be inspected), never published.
    code, out, _ = await cli("modules", "list", "--state", "quarantined", "--registry", cli.registry)
    assert code == 0
    assert "failed" in out
    # ...and never served by a query that checks the registry.
    [module] = (tmp_path / "out").glob("*.safetensors")
    code, out, err = await cli("query", "--module", str(module), "--query", "hi", "--registry", cli.registry)
    assert code == 4
    assert "is quarantined in the registry" in err and "only published modules are served" in err
    assert out == ""


async def test_query_serves_a_file_only_as_its_registry_record_pins_it(cli: Cli, tmp_path: Path) -> None:
    """Issue 6, defect 8: a header edited (another tenant, a later expiry) and re-signed is self-consistent,
    so only the checksums in the registry record can tell; without a registry the answer is flagged."""
    source = write_source(tmp_path / "widgets", price=5, golden=PASSING_GOLDEN)
    code, out, err = await cli.compile(source, tmp_path / "out")
    assert code == 0, err
    module_id, _ = published_id(out)
    published = tmp_path / "out" / f"{module_id}.safetensors"
    query = ("--query", "How much do widgets cost?", "--max-new-tokens", "4")

    code, out, err = await cli("query", "--module", str(published), *query, "--registry", cli.registry)
    assert code == 0, err
    assert out.strip() and "warning" not in err

    tampered = tmp_path / "tampered.safetensors"
    shutil.copyfile(published, tampered)
    rewrite_header(tampered, set_metadata(tenant_id="globex", expires_at="2099-01-01T00:00:00Z"))
    code, out, err = await cli("query", "--module", str(tampered), *query, "--registry", cli.registry)
    assert code == 4
    assert err.startswith(f"error (FAILED_PRECONDITION): module {module_id}: header_sha256 mismatch")
    assert "its record in the registry" in err and len(err.strip().splitlines()) == 1
    assert out == ""

    code, out, err = await cli("query", "--module", str(tampered), *query)
    assert code == 0, err
    assert out.strip()
    assert "warning: module files are not verified against a registry" in err


async def test_invalidate_model_event_reaches_the_registry(cli: Cli, tmp_path: Path) -> None:
    source = write_source(tmp_path / "widgets", price=5, golden=PASSING_GOLDEN)
    code, out, err = await cli.compile(source, tmp_path / "out")
    assert code == 0, err
    module_id, _ = published_id(out)

    code, out, err = await cli(
        "invalidate", "model", "--model", TINY, "--revision", "a-newer-revision", "--nats", cli.nats_url
    )
    assert code == 0, err
    event_id = out.strip()
    assert len(event_id) == 36  # a UUID

    state = ""
    deadline = asyncio.get_running_loop().time() + 10.0
    while asyncio.get_running_loop().time() < deadline:
        shown = await cli.show(module_id)
        state = shown["state"]
        if state == "MODULE_STATE_INVALIDATED":
            break
        await asyncio.sleep(0.2)
    assert state == "MODULE_STATE_INVALIDATED"
    assert shown["version"] == "1"
    # Its route no longer resolves: MODULE_NOT_SERVABLE (the router's cue for the fallback path), not a module.
    with registry_client(CagSettings(), cli.registry) as client, pytest.raises(grpc.RpcError) as refused:
        await asyncio.to_thread(client.resolve_route, TENANT, ROUTE)
    details = error_details(refused.value)
    assert details is not None and details.reason == "MODULE_NOT_SERVABLE"
    assert (details.metadata["module"], details.metadata["state"]) == (module_id, "invalidated")


# Payloads that match no module anywhere: the registry consumer is one durable consumer shared by every
# test of the session, so an event it has not consumed yet may be applied by a later test's registry.
@pytest.mark.parametrize(
    "argv",
    [
        ["invalidate", "source", "--tenant", "cli-nobody", "--uri", "file:///kb/nothing", "--checksum", "abc"],
        ["invalidate", "tokenizer", "--revision", "cli-test-retired-revision"],
        ["invalidate", "acl", "--tenant", "cli-nobody", "--scope", "workspace", "--principal", "ops"],
        ["invalidate", "layout", "--layout-id", "cli-test-layout", "--layout-hash", "h2"],
    ],
    ids=["source", "tokenizer", "acl", "layout"],
)
async def test_every_invalidation_publishes_an_envelope(cli: Cli, argv: list[str]) -> None:
    event_id = f"cli-test-{argv[1]}-{uuid.uuid4().hex}"
    code, out, err = await cli(*argv, "--nats", cli.nats_url, "--event-id", event_id)
    assert code == 0, err
    assert out.strip() == event_id

    subject = f"cag.invalidate.{argv[1]}"
    client = await nats.connect(cli.nats_url)
    try:
        stored = await client.jetstream().get_last_msg(STREAM, subject)
    finally:
        await client.close()
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == event_id
    envelope = Envelope.model_validate_json(stored.data or b"")
    assert (envelope.event_id, envelope.subject, envelope.version) == (event_id, subject, 1)
    decode(envelope)  # the payload validates against its schema


async def test_bad_input(cli: Cli) -> None:
    with pytest.raises(SystemExit) as usage:  # argparse: scope public is not a choice
        await cli("invalidate", "acl", "--tenant", TENANT, "--scope", "public", "--nats", cli.nats_url)
    assert usage.value.code == 2

    code, _, err = await cli("invalidate", "model", "--model", "", "--revision", "r", "--nats", cli.nats_url)
    assert code == 2
    assert err.startswith("error (INVALID_ARGUMENT): invalid model event")

    code, _, err = await cli("modules", "show", "widgets-0123456789abcdef", "--registry", cli.registry)
    assert code == 3
    assert err.startswith("error (NOT_FOUND): ")

    code, _, err = await cli("modules", "show", "Not A Module!", "--registry", cli.registry)
    assert code == 2
    assert err.startswith("error (INVALID_ARGUMENT): ")
