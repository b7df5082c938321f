"""`cag candidates list | approve | reject`: promotion candidates, clusters of repeated fallback queries.

A candidate is proposed once enough similar queries were answered by the fallback from overlapping evidence.
Approving it (with the route its module will serve) compiles a module from that evidence, publishes it when
its golden checks pass, and adds a keyword rule for the route, so the next such query takes the module path.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from cag.auth.credentials import resolve_token
from cag.cli.registry_client import run_with_rpc_errors
from cag.rpc.clients.promotion import PromotionClient
from cag.rpc.tls import client_tls
from cag.settings import CagSettings
from cag.v1 import fallback_pb2

STATES = ("proposed", "approved", "rejected", "promoted")
SHOWN_QUERIES = 3


def register(sub: Any) -> None:
    p = sub.add_parser("candidates", help="promotion candidates: repeated fallback queries to turn into modules")
    which = p.add_subparsers(dest="candidates_command", required=True)
    listing = which.add_parser("list", help="candidates, most frequent first")
    listing.add_argument("--tenant", default="", help="one tenant (default: every tenant you may read)")
    listing.add_argument("--state", choices=STATES, help="only candidates in this state (default: any)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON (one object per candidate, a list)")
    listing.set_defaults(run=run_list)
    approve = which.add_parser("approve", help="compile a module from the candidate's evidence and route to it")
    approve.add_argument("candidate_id")
    approve.add_argument("--route", required=True, help="the route the promoted module serves")
    approve.add_argument(
        "--expect",
        action="append",
        default=[],
        help="a fact the module's answers must contain (repeatable): its golden check where the fallback's "
        "answers hold nothing of the evidence",
    )
    approve.set_defaults(run=run_review, approve=True)
    reject = which.add_parser("reject", help="keep the candidate's queries on the fallback")
    reject.add_argument("candidate_id")
    reject.set_defaults(run=run_review, approve=False, route="", expect=[])
    for command in (listing, approve, reject):
        command.add_argument("--fallback", help="fallback service host:port (default: CAG_FALLBACK_ADDRESS)")
    for command in (approve, reject):
        command.add_argument("--reviewer", default="", help="who reviewed (default: your token's subject)")
        command.add_argument("--comment", default="", help="why (audit)")


def state_name(value: int) -> str:
    """CANDIDATE_STATE_PROPOSED → "proposed"."""
    return fallback_pb2.CandidateState.Name(value).removeprefix("CANDIDATE_STATE_").lower()  # type: ignore[arg-type]


def _client(settings: CagSettings, address: str | None) -> PromotionClient:
    return PromotionClient(
        address or settings.fallback_address, token=resolve_token(settings), tls=client_tls(settings)
    )


def run_list(args: argparse.Namespace, settings: CagSettings) -> int:
    if args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    state = fallback_pb2.CandidateState.Value(f"CANDIDATE_STATE_{(args.state or 'unspecified').upper()}")
    request = fallback_pb2.CandidatesRequest(tenant_id=args.tenant, state=state, page_size=min(args.limit, 500))

    def show() -> int:
        with _client(settings, args.fallback) as fallback:
            found = []
            for candidate in fallback.candidates(request):
                found.append(candidate)
                if len(found) == args.limit:
                    break
        if args.json:
            print(json.dumps([_as_json(c) for c in found], indent=2, ensure_ascii=False))
        else:
            _print_table(found)
        return 0

    return run_with_rpc_errors(show)


def _as_json(candidate: fallback_pb2.PromotionCandidate) -> dict[str, Any]:
    data = MessageToDict(candidate, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    data["state"] = state_name(candidate.state)
    data["count"] = candidate.count  # an int64 is a string in proto JSON
    return data


def _print_table(candidates: list[fallback_pb2.PromotionCandidate]) -> None:
    console = Console()
    if not console.is_terminal:  # piped: wide enough that queries are not wrapped mid-word
        console = Console(width=200)
    table = Table("id", "tenant", "state", "count", "last seen", "queries (most frequent first)", "evidence")
    for c in candidates:
        queries = " | ".join(c.queries[:SHOWN_QUERIES]) + (
            f" (+{len(c.queries) - SHOWN_QUERIES})" if len(c.queries) > SHOWN_QUERIES else ""
        )
        last = c.last_seen_at.ToDatetime().strftime("%Y-%m-%d %H:%M") if c.HasField("last_seen_at") else "-"
        table.add_row(c.id, c.tenant_id, state_name(c.state), str(c.count), last, queries, str(len(c.evidence_ids)))
    console.print(table if candidates else "no candidates")


def run_review(args: argparse.Namespace, settings: CagSettings) -> int:
    request = fallback_pb2.ReviewRequest(
        candidate_id=args.candidate_id,
        approve=args.approve,
        reviewer=args.reviewer,
        route=args.route,
        comment=args.comment,
        expect=args.expect,
    )

    def review() -> int:
        with _client(settings, args.fallback) as fallback:
            response = fallback.review(request)
        candidate = response.candidate
        print(response.compile_job_id or candidate.id)
        done = f"approved for route {args.route}: compile job {response.compile_job_id}" if args.approve else "rejected"
        print(f"candidate {candidate.id} ({candidate.count} fallbacks) {done}", file=sys.stderr)
        return 0

    return run_with_rpc_errors(review)
