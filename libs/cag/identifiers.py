"""The platform's rules for names and ids that cross a trust boundary (RPCs, events, the command line).

One set of rules, applied at every edge, so that a tenant, route or module id that the compiler
accepts is one the registry accepts too, and anything stored fits its column. Torch-free.
"""

from __future__ import annotations

import re

from cag.errors import InvalidFieldError

# Column widths in the registry (services/cag/registry/db/schema.py) follow these limits.
MAX_NAME = 128
MAX_MODULE_ID = 200
MAX_EVENT_ID = 256
MAX_PRINCIPAL = 128
MAX_URI = 2048
# How much of an offending value an error message may echo back (never a whole megabyte of it).
ECHO_CHARS = 64

_NAME = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_NAME - 1}}}")
MODULE_ID = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_MODULE_ID - 1}}}")
# Event ids are chosen by producers outside the platform (UUIDs by default); they are also NATS
# message ids, so they are printable ASCII without spaces.
_EVENT_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{{0,{MAX_EVENT_ID - 1}}}")


def echo(value: str) -> str:
    """A value as an error message may quote it: repr, cut to ECHO_CHARS characters."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}… ({len(value):,} characters)"


def check_name(field: str, value: str) -> str:
    """A tenant, route, workspace or user name: 1-128 of [a-z0-9._-], starting alphanumeric."""
    if not _NAME.fullmatch(value):
        raise InvalidFieldError(
            field, f"{echo(value)} is malformed: use 1-{MAX_NAME} of [a-z0-9._-], starting alphanumeric"
        )
    return value


def check_module_id(value: str, field: str = "module_id") -> str:
    if not MODULE_ID.fullmatch(value):
        raise InvalidFieldError(
            field, f"{echo(value)} is malformed: use 1-{MAX_MODULE_ID} of [a-z0-9._-], starting alphanumeric"
        )
    return value


def check_event_id(value: str, field: str = "event_id") -> str:
    if not _EVENT_ID.fullmatch(value):
        raise InvalidFieldError(
            field,
            f"{echo(value)} is malformed: use 1-{MAX_EVENT_ID} printable ASCII characters without spaces"
            " ([A-Za-z0-9._:@/+=-], starting alphanumeric; a UUID is fine)",
        )
    return value


def is_control(c: str) -> bool:
    """A C0 control character or DEL."""
    return ord(c) < 0x20 or c == "\x7f"


def is_unstorable(c: str) -> bool:
    """What stored or logged text may not hold: a control character other than tab and newline."""
    return is_control(c) and c not in "\t\n"


def check_text(field: str, value: str, *, max_chars: int, required: bool = False) -> str:
    """Free text that is stored or logged: bounded, no NUL (Postgres refuses it), no other C0 controls
    except tab and newline (they forge log lines)."""
    if required and not value:
        raise InvalidFieldError(field, "is required")
    if len(value) > max_chars:
        raise InvalidFieldError(field, f"is {len(value):,} characters long; at most {max_chars:,} are allowed")
    bad = next((c for c in value if is_unstorable(c)), None)
    if bad is not None:
        raise InvalidFieldError(field, f"contains the control character U+{ord(bad):04X}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidFieldError(field, "contains a lone surrogate (not valid UTF-8)")
    return value
