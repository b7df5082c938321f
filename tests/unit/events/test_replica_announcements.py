"""Replica announcements are input from other processes: a router keeps only well-formed documents filed under
their own replica's key, and says in a log line why it dropped the others."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from cag.events.replicas import MAX_ANNOUNCEMENT_BYTES, ReplicaAnnouncementV1, ResidentTier, parse_announcement

SENT = datetime(2026, 1, 1, tzinfo=UTC)


def document(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "replica_id": "pool-a",
        "address": "127.0.0.1:50052",
        "modules": [{"module_id": "system.v1", "tier": "ENGINE"}, {"module_id": "billing", "tier": "LOCAL_DISK"}],
        "queued": 1,
        "running": 2,
        "capacity": 4,
        "bytes_per_tier": {"ENGINE": 10, "HOST_RAM": 0, "LOCAL_DISK": 20},
        "sequence": 7,
        "sent_at": SENT.isoformat(),
    }
    return fields | overrides


def raw(**overrides: Any) -> bytes:
    return json.dumps(document(**overrides)).encode()


def test_a_well_formed_document_round_trips() -> None:
    parsed = parse_announcement("pool-a", raw())
    assert parsed is not None
    assert parsed.tiers() == {"system.v1": ResidentTier.ENGINE, "billing": ResidentTier.LOCAL_DISK}
    assert parse_announcement("pool-a", parsed.model_dump_json().encode()) == parsed


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"replica_id": "pool-b"}, "names replica 'pool-b'"),
        ({"address": "127.0.0.1"}, "address"),
        ({"address": "host:80; rm -rf /"}, "address"),
        ({"modules": [{"module_id": "../etc", "tier": "ENGINE"}]}, "modules.0.module_id"),
        ({"modules": [{"module_id": "a", "tier": "GPU"}]}, "modules.0.tier"),
        ({"queued": -1}, "queued"),
        ({"capacity": 0}, "capacity"),
        ({"sequence": "7"}, "sequence"),
        ({"schema_version": 2}, "schema_version"),
        ({"extra": 1}, "extra"),
        ({"sent_at": "2026-01-01T00:00:00"}, "sent_at"),  # no time zone
    ],
)
def test_a_malformed_document_is_ignored_with_a_log_line(
    overrides: dict[str, Any], complaint: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cag.events.replicas"):
        assert parse_announcement("pool-a", raw(**overrides)) is None
    assert complaint in caplog.text


def test_garbage_and_oversized_documents_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cag.events.replicas"):
        assert parse_announcement("pool-a", b"\xff not json") is None
        assert parse_announcement("pool-a", b"x" * (MAX_ANNOUNCEMENT_BYTES + 1)) is None
    assert "bytes (at most" in caplog.text


def test_the_model_refuses_what_the_parser_refuses() -> None:
    with pytest.raises(ValueError, match="replica_id"):
        ReplicaAnnouncementV1.model_validate(document(replica_id="Pool A"))
