"""`cag ask`: one question through the router with the SDK; the answer streams to stdout, the final record
(path, route, basis, module versions and tiers, TTFT, trace id) follows on stderr, or all of it as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cag.auth.credentials import resolve_token
from cag.cli.main import EXIT_CODES
from cag.client import Answer, CagClient, CagClientError, Sampling
from cag.errors import InvalidFieldError, Status
from cag.rpc.tls import client_tls
from cag.settings import CagSettings


def register(sub: Any) -> None:
    p = sub.add_parser("ask", help="ask the platform a question through the router")
    p.add_argument("query", help="the question")
    p.add_argument("--token", help="bearer token (default CAG_TOKEN, else one minted from the local signing key)")
    p.add_argument("--address", help="the router, host:port (default CAG_ROUTER_ADDRESS, 127.0.0.1:50053)")
    p.add_argument("--tenant", help="the tenant to answer for (default: the token's own)")
    p.add_argument("--route", help="route hint: the route to answer from")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="routing hint (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: the server's default")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole call (default 120)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON (no streaming)")
    p.set_defaults(run=run_ask)


def run_ask(args: argparse.Namespace, settings: CagSettings) -> int:
    metadata = dict(_hint(text) for text in args.meta)
    token = args.token or resolve_token(settings)
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    try:
        address = args.address or settings.router_address
        with CagClient(address, token, timeout_s=args.timeout, tls=client_tls(settings)) as cag:
            stream = cag.stream(args.query, tenant=args.tenant, route=args.route, metadata=metadata, sampling=sampling)
            with stream:
                for text in stream:
                    if not args.json:
                        print(text, end="", flush=True)
                answer = stream.answer
    except CagClientError as e:
        print(f"\nerror ({e.code.name}, {e.reason}): {e.message}", file=sys.stderr)
        # A client error exits like the domain error of the same status would.
        status = Status.__members__.get(e.code.name)
        return EXIT_CODES.get(status, 1) if status is not None else 1
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2))
    else:
        print()
        print(record(answer), file=sys.stderr)
    return 0


def record(answer: Answer) -> str:
    """The final record as a few aligned lines."""
    summary, decision = answer.summary, answer.decision
    modules = ", ".join(f"{m.module_id} v{m.version} ({m.tier})" for m in summary.modules) or "-"
    basis = "-"
    if decision is not None:
        basis = decision.basis + (f" {decision.rule_id}" if decision.rule_id else f" {decision.confidence:.2f}")
    rows = [
        ("path", summary.path),
        ("route", decision.route if decision and decision.route else "-"),
        ("basis", basis),
        ("modules", modules),
        ("ttft", f"{summary.ttft_ms:.1f} ms (total {summary.total_ms:.1f} ms, {summary.tokens} tokens)"),
        ("trace", summary.trace_id or "-"),
    ]
    return "\n".join(f"{name:<8} {value}" for name, value in rows)


def _hint(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidFieldError("--meta", f"{text[:64]!r} is not KEY=VALUE")
    return key, value
