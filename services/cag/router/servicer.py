"""The router's gRPC servicer: unpack the request, decide, then stream the answer from the cache pool.

The caller comes from the bearer token (the auth interceptor verified it); errors become statuses in the
shared interceptor (cag.rpc.errors)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter
from typing_extensions import override

from cag.errors import FallbackUnavailableError, UnavailableError
from cag.router.audit import DecisionAudit
from cag.router.convert import decision_message, sampling_message
from cag.router.core import AnswerPath, Decision
from cag.router.replicas import CachePoolReplicas, NoReplicaError, ReplicaLostError
from cag.router.routing import Decider, RouteRequest
from cag.rpc.auth import current_caller
from cag.rpc.clients.fallback import AsyncFallbackClient
from cag.rpc.errors import STATUS_DETAILS_KEY, error_details
from cag.telemetry import current_trace_id, span
from cag.telemetry.metrics import REGISTRY, ROUTE_DECISIONS, TTFT
from cag.v1 import cachepool_pb2, common_pb2, fallback_pb2, router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
log = logging.getLogger(__name__)

# The pool refusing the router's own credentials is the router's misconfiguration, not the caller's.
_OURS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Replicas a request is sent to at most: the best, then once the next best when the first is unavailable.
ATTEMPTS = 2
REPLICA_CHOICES = Counter(
    "cag_replica_choices",
    "Requests sent to each cache-pool replica, by why it was chosen (prefix, hash, retry)",
    ["replica", "basis"],
    registry=REGISTRY,
)


@dataclass
class _Answered:
    """Whether the replica streaming the answer has sent its first token (after it, a failure cannot be retried)."""

    first_token: bool = False


def _request_of(request: router_pb2.GenerateRequest) -> RouteRequest:
    return RouteRequest(tenant_id=request.tenant_id, query=request.query, metadata=dict(request.metadata))


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self, decider: Decider, replicas: CachePoolReplicas, audit: DecisionAudit, fallback: AsyncFallbackClient
    ) -> None:
        self.decider = decider
        self.replicas = replicas
        self.audit = audit
        self.fallback = fallback

    @override
    async def Explain(self, request: router_pb2.GenerateRequest, context: Context) -> common_pb2.RouteDecision:
        """The decision Generate would make; not audited (nothing is served). A request Generate would refuse
        (its sampling included) is refused here too."""
        sampling_message(request.sampling)
        decision = await self.decider.decide(current_caller(), _request_of(request))
        return decision_message(decision)

    @override
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        """The decision, then the cache pool's tokens, then its summary (with the decision's path).

        The fallback path (no confident route, or a chain that is not servable) sends the decision and then the
        fallback service's answer from retrieved evidence; when the fallback service cannot be reached the call
        fails with UNAVAILABLE, reason FALLBACK_UNAVAILABLE, naming it. A chain the pool finds stale after the
        decision was sent fails with FALLBACK_UNAVAILABLE too (the client asks again and is routed to the
        fallback). Other errors of the pool reach the client with their own status and details."""
        arrived = time.perf_counter()
        sampling = sampling_message(request.sampling)  # refused before anything is decided or sent
        with span("router.route") as routing:
            decision = await self.decider.decide(current_caller(), _request_of(request))
            attributes = {"route": decision.route, "path": decision.path.value, "basis": decision.basis.value}
            routing.set_attributes(attributes)
        self.audit.record(decision)
        ROUTE_DECISIONS.labels(path=decision.path.value, basis=decision.basis.value).inc()
        yield common_pb2.GenerateResponse(decision=decision_message(decision))
        if decision.path is AnswerPath.FALLBACK:
            async for response in self._fall_back(decision.reason, decision, request.query, sampling, context):
                yield response
            return
        try:
            async for response in self._answer(decision, request.query, sampling, context, arrived):
                yield response
        except _ChainNotServableError as stale:  # before any token: the fallback answers instead
            async for response in self._fall_back(str(stale), decision, request.query, sampling, context):
                yield response

    async def _fall_back(
        self, reason: str, decision: Decision, query: str, sampling: common_pb2.SamplingParams, context: Context
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        """The fallback service's answer for the caller (its workspace and user inside the tenant, if any). Its
        errors reach the client with the fallback's status; a fallback that cannot be reached is
        FALLBACK_UNAVAILABLE, naming it."""
        caller = current_caller()
        inside = caller.sole_tenant == decision.tenant_id
        ask = fallback_pb2.FallbackGenerateRequest(
            tenant_id=decision.tenant_id,
            workspace=(caller.workspace or "") if inside else "",
            user=(caller.user or "") if inside else "",
            query=query,
            sampling=sampling,
            route=decision.route,
            reason=reason,
            request_id=decision.decision_id,
        )
        call = self.fallback.generate(ask, timeout_s=context.time_remaining())
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as e:
            if e.code() is not grpc.StatusCode.UNAVAILABLE or error_details(e) is not None:
                await _relay(e, context, "the fallback service")  # its own status (NO_EVIDENCE, ...), as it said
                return
            raise FallbackUnavailableError(
                f"{reason}, and the fallback service ({self.fallback.address}) is unavailable: {e.details()}"
            ) from None
        finally:
            call.cancel()

    async def _answer(
        self, decision: Decision, query: str, sampling: common_pb2.SamplingParams, context: Context, arrived: float
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        """The answer from the best replica for the chain. A replica UNAVAILABLE before its first token is marked
        failed and the next best gets the request (once); one lost after it ends the call with REPLICA_LOST."""
        ask = cachepool_pb2.CachePoolGenerateRequest(
            module_ids=decision.module_ids,
            query=query,
            sampling=sampling,
            tenant_id=decision.tenant_id,
            route_priority=decision.priority,
            route_confidence=decision.confidence,
        )
        order = self.replicas.order(decision.module_ids)
        tries = order.replica_ids[:ATTEMPTS]
        for attempt, replica_id in enumerate(tries, start=1):
            with span("router.replica") as chosen:
                chosen.set_attributes({"replica": replica_id, "basis": order.basis.value, "attempt": attempt})
            REPLICA_CHOICES.labels(replica=replica_id, basis=order.basis.value if attempt == 1 else "retry").inc()
            answered = _Answered()
            try:
                async for response in self._stream(replica_id, ask, context, arrived, answered):
                    yield response
                return
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE or self.replicas.directory.is_static(replica_id):
                    await self._pool_failed(e, context)
                    return
                self.replicas.failed(replica_id, e.details() or "unavailable")
                if answered.first_token:
                    raise ReplicaLostError(
                        f"the cache-pool replica serving this answer ({replica_id}) went away after it began; the "
                        "answer is incomplete: send the request again (another replica serves it)"
                    ) from None
                if attempt == len(tries):
                    raise NoReplicaError(
                        f"no cache-pool replica could take the request (the last tried, {replica_id}, is unavailable)"
                    ) from None

    async def _stream(
        self,
        replica_id: str,
        ask: cachepool_pb2.CachePoolGenerateRequest,
        context: Context,
        arrived: float,
        answered: _Answered,
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        call = self.replicas.client(replica_id).generate(ask, timeout_s=context.time_remaining())
        self.replicas.directory.started(replica_id)
        try:
            async for response in call:
                if not answered.first_token and response.HasField("token"):
                    TTFT.labels(service="router", path="module").observe(time.perf_counter() - arrived)
                    answered.first_token = True
                if response.HasField("done"):
                    response.done.path = common_pb2.ANSWER_PATH_MODULE
                    response.done.trace_id = response.done.trace_id or current_trace_id()
                yield response
        finally:
            call.cancel()  # the client went away or the stream ended: free the pool's slot either way
            self.replicas.directory.finished(replica_id)

    async def _pool_failed(self, error: grpc.aio.AioRpcError, context: Context) -> None:
        details = error_details(error)
        if details is not None and details.reason == "MODULE_NOT_SERVABLE":
            # The chain went stale between the decision and the load: fallback's turn, never the stale module.
            raise _ChainNotServableError(f"module {details.metadata.get('state', 'withdrawn')}")
        await _relay(error, context, "the cache pool")


class _ChainNotServableError(Exception):
    """The pool found a module of the chain not servable before answering (the message says its state)."""


async def _relay(error: grpc.aio.AioRpcError, context: Context, service: str) -> None:
    """A downstream service's error, to the client with that service's status and details; one refusing the
    router's own credentials is the router's misconfiguration (UNAVAILABLE)."""
    if error.code() in _OURS:
        log.error("%s refused the router: %s %s", service, error.code().name, error.details())
        raise UnavailableError(f"{service} cannot be used now (it refused the router)")
    pairs: Any = error.trailing_metadata()  # grpc.aio.Metadata iterates as (key, value); the stubs differ
    trailing = [(k, v) for k, v in pairs or () if k == STATUS_DETAILS_KEY]
    await context.abort(error.code(), error.details() or "", trailing_metadata=tuple(trailing))
