"""The GenerateRequest of a question: checked here, so that a malformed one fails before it leaves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from cag.client.errors import CagClientError, client_error
from cag.v1 import common_pb2, router_pb2

ROUTE_HINT = "route"


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How to decode (cag.v1.SamplingParams); the defaults mean greedy decoding of the server's default length."""

    max_new_tokens: int = 0  # 0: the server's default
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.0  # 0: no nucleus cut
    seed: int = 0


def generate_request(
    query: str,
    *,
    tenant: str | None = None,
    route: str | None = None,
    metadata: Mapping[str, str] | None = None,
    sampling: Sampling | None = None,
) -> router_pb2.GenerateRequest:
    """`route` is the hint {"route": route} among `metadata`; `tenant` None: the token's own tenant.

    Raises InvalidArgumentError for an empty query, hints that are not text, or two different routes."""
    if not isinstance(query, str) or not query.strip():
        raise _invalid("query", "must be a non-empty question")
    hints = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in hints.items()):
        raise _invalid("metadata", "keys and values must be strings")
    if route is not None:
        if hints.get(ROUTE_HINT, route) != route:
            raise _invalid("metadata", f"names route {hints[ROUTE_HINT]!r:.64} and route= names {route!r:.64}")
        hints[ROUTE_HINT] = route
    if tenant is not None and not isinstance(tenant, str):
        raise _invalid("tenant_id", "must be a tenant id")
    s = sampling or Sampling()
    try:
        params = common_pb2.SamplingParams(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed
        )
    except (TypeError, ValueError) as e:  # protobuf's range and type checks (int32, uint64, float)
        raise _invalid("sampling", f"does not fit SamplingParams: {e}") from None
    return router_pb2.GenerateRequest(tenant_id=tenant or "", query=query, metadata=hints, sampling=params)


def _invalid(field: str, problem: str) -> CagClientError:
    return client_error(grpc.StatusCode.INVALID_ARGUMENT, f"{field} {problem}", reason="INVALID_FIELD", field=field)
