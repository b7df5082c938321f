"""`cag auth token`: issue a signed token — how ops give a service or a person credentials."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from cag.auth.caller import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.errors import InvalidFieldError
from cag.settings import CagSettings

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# A token cannot be revoked before it expires (short of rotating the key): cap how long one lives.
MAX_TTL_S = 366 * 86400


def register(sub: Any) -> None:
    p = sub.add_parser("auth", help="credentials for the platform's services")
    which = p.add_subparsers(dest="auth_command", required=True)

    token = which.add_parser(
        "token",
        help="print a token signed with the platform's key (CAG_AUTH_KEY_FILE, default <run dir>/auth.key)",
    )
    token.add_argument("--subject", required=True, help="who holds it, e.g. service:router or user:ops-alice")
    token.add_argument("--scope", action="append", required=True, choices=[s.value for s in Scope], help="repeatable")
    token.add_argument(
        "--tenant", action="append", default=[], help=f"a tenant it may act on (repeatable; {ALL_TENANTS!r}: every one)"
    )
    token.add_argument("--ttl", default="1h", help="how long it is valid: 90s, 15m, 1h, 30d (default 1h)")
    token.set_defaults(run=run_token)


def run_token(args: argparse.Namespace, settings: CagSettings) -> int:
    ttl_s = parse_duration(args.ttl)
    if not args.tenant and Scope.ADMIN not in args.scope:
        raise InvalidFieldError("--tenant", f"is required for a non-admin token (a tenant id, or {ALL_TENANTS!r})")
    key = load_key(settings.auth_key_file or settings.run_dir / "auth.key")
    tenants = args.tenant or [ALL_TENANTS]  # an admin may act on every tenant anyway
    print(issue_token(key, args.subject, args.scope, tenants, ttl_s))
    print(f"token for {args.subject}: {', '.join(sorted(set(args.scope)))} on {', '.join(tenants)}, "
          f"valid {args.ttl}", file=sys.stderr)  # fmt: skip
    return 0


def parse_duration(text: str) -> int:
    """ "90s", "15m", "1h", "30d" or plain seconds → seconds (1 s to MAX_TTL_S)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidFieldError("--ttl", f"{text[:32]!r} is not a duration like 90s, 15m, 1h or 30d")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise InvalidFieldError("--ttl", f"must be between 1 s and {MAX_TTL_S // 86400} days, got {text!r}")
    return seconds
