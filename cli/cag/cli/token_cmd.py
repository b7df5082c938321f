"""`cag token issue`: an end user's token (read on one tenant, as a workspace and user) for product services.

Service and operator tokens come from `cag auth token`; this one is what a product service hands to the SDK
(cag.client) on behalf of one of its users. It is signed with the platform's key (HS256); tokens of an
outside identity provider (RS256/ES256, verified with its JWKS) need no command here.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cag.auth.tokens import issue_user_token, load_key
from cag.cli.auth_cmd import parse_duration
from cag.settings import CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("token", help="end users' tokens for product services")
    which = p.add_subparsers(dest="token_command", required=True)

    issue = which.add_parser(
        "issue",
        help="print an end user's token signed with the platform's key (CAG_AUTH_KEY_FILE, default <run dir>/auth.key)",
    )
    issue.add_argument("--tenant", required=True, help="the one tenant it may read")
    issue.add_argument("--workspace", help="the user's workspace in that tenant (workspace-scoped modules)")
    issue.add_argument("--user", help="the user's id in that tenant (user-scoped modules; subject user:<id>)")
    issue.add_argument("--subject", help="who holds it (default user:<user>, else workspace:<w>, else tenant:<t>)")
    issue.add_argument("--ttl", default="1h", help="how long it is valid: 90s, 15m, 1h, 30d (default 1h)")
    issue.set_defaults(run=run_issue)


def run_issue(args: argparse.Namespace, settings: CagSettings) -> int:
    ttl_s = parse_duration(args.ttl)
    key = load_key(settings.auth_key_file)
    token = issue_user_token(key, args.tenant, ttl_s, workspace=args.workspace, user=args.user, subject=args.subject)
    print(token)
    who = ", ".join(f"{name} {value}" for name, value in (("workspace", args.workspace), ("user", args.user)) if value)
    print(f"token to read tenant {args.tenant}{f' as {who}' if who else ''}, valid {args.ttl}", file=sys.stderr)
    return 0
