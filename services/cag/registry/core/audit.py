"""The registry's audit trail: who changed which modules, how, why, when, under which event id.

Publish, Rollback, Invalidate, Quarantine and PutRouteRules each append one entry in the same transaction as
the change it records, so the trail never disagrees with the modules' states or the outbox.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cag.errors import InvalidFieldError

MAX_AUDIT_PAGE_SIZE = 1000
EVERY_TENANT = ""  # the tenant of an entry whose change reaches every tenant (model, tokenizer, layout, TTL)


class AuditAction(StrEnum):
    PUBLISH = "publish"
    ROLLBACK = "rollback"
    INVALIDATE = "invalidate"
    QUARANTINE = "quarantine"
    PUT_ROUTE_RULES = "put_route_rules"


@dataclass(frozen=True, kw_only=True)
class Attribution:
    """Who asked for a change and why. `actor` is the authenticated caller's subject, never a name the client
    sent (a field the client fills in could name anyone)."""

    actor: str
    reason: str = ""

    @property
    def note(self) -> str:
        """`by <actor>[: <reason>]`: what events and state reasons carry."""
        return f"by {self.actor}" + (f": {self.reason}" if self.reason else "")


# In-process jobs of the registry itself (TTL sweeps) and tests that drive a store directly.
SYSTEM_ATTRIBUTION = Attribution(actor="system")


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    sequence: int  # registry-wide, increasing; the newest entry has the largest
    event_id: str  # the event announcing the change (for Invalidate: the trigger's event id)
    action: AuditAction
    actor: str
    reason: str
    tenant_id: str  # EVERY_TENANT when the change reaches every tenant
    route: str  # "" for invalidations
    version: int | None  # Publish: the new version; Rollback: the version served again
    module_ids: tuple[str, ...]  # the modules whose state or route changed (sorted for Invalidate)
    trigger: str  # Invalidate: the trigger (`model: ...`); "" otherwise
    recorded_at: datetime


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """A page of the trail, newest first. tenant_id None: every tenant's entries and the global ones."""

    tenant_id: str | None = None
    page_size: int = 100
    page_token: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_AUDIT_PAGE_SIZE:
            raise InvalidFieldError("page_size", f"must be between 1 and {MAX_AUDIT_PAGE_SIZE}, got {self.page_size}")

    @property
    def before(self) -> int | None:
        """Entries with a smaller sequence than this come next (None: start from the newest)."""
        return decode_audit_token(self.page_token)


def encode_audit_token(last_sequence: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "before": last_sequence}).encode()).decode()


def decode_audit_token(token: str) -> int | None:
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
        before = body["before"] if isinstance(body, dict) and body.get("v") == 1 else None
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        before = None
    # bool is an int to Python; a sequence is a positive 64-bit integer.
    if type(before) is not int or not 1 <= before < 2**63:
        raise InvalidFieldError("page_token", "is malformed: pass back the next_page_token of a previous ListAudit")
    return before
