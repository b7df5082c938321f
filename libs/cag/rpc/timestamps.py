"""datetime and module-header time strings ↔ google.protobuf.Timestamp (UTC instants; unset means none)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

HEADER_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # how module file headers write instants


def timestamp_of(instant: datetime | None) -> Timestamp | None:
    """None stays None (the field is left unset); naive datetimes are read as UTC."""
    if instant is None:
        return None
    timestamp = Timestamp()
    timestamp.FromDatetime(instant if instant.tzinfo else instant.replace(tzinfo=UTC))
    return timestamp


def datetime_of(timestamp: Timestamp) -> datetime:
    return timestamp.ToDatetime(tzinfo=UTC)


def timestamp_of_header(value: str | None) -> Timestamp | None:
    """A header instant ("YYYY-MM-DDTHH:MM:SSZ"); None or "" is unset."""
    return timestamp_of(datetime.fromisoformat(value)) if value else None


def header_of_timestamp(timestamp: Timestamp) -> str:
    return datetime_of(timestamp).strftime(HEADER_FORMAT)
