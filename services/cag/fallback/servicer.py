"""The fallback's gRPC servicer: check the caller, unpack, answer or index, pack.

Errors become statuses in the shared interceptor (cag.rpc.errors); a cache-pool error that is not one of ours
reaches the client with the pool's own status. Candidates and Review belong to promotion
(cag.fallback.promotion_rpc)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from typing_extensions import override

from cag.acl import PUBLIC_TENANT, AclScope
from cag.auth import Scope
from cag.errors import InvalidFieldError, PermissionDeniedError
from cag.fallback.answering import Answerer, Question
from cag.fallback.core.audience import Reader
from cag.fallback.core.chunking import SourceDocument
from cag.fallback.index import Audience
from cag.fallback.indexing import Indexer, documents_checksum
from cag.fallback.promotion_rpc import PromotionRpcs
from cag.fallback.sources import SCOPES
from cag.identifiers import MAX_URI, check_name, check_text
from cag.rpc.auth import current_caller
from cag.v1 import common_pb2, fallback_pb2, fallback_pb2_grpc

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = fallback_pb2.DESCRIPTOR.services_by_name["FallbackService"].full_name
MAX_QUERY_CHARS = 16_384


def _optional_name(field: str, value: str) -> str | None:
    return check_name(field, value) if value else None


def question_of(request: fallback_pb2.FallbackGenerateRequest) -> Question:
    query = check_text("query", request.query, max_chars=MAX_QUERY_CHARS, required=True)
    if not query.strip():
        raise InvalidFieldError("query", "is blank")
    reader = Reader(
        tenant_id=check_name("tenant_id", request.tenant_id),
        workspace=_optional_name("workspace", request.workspace),
        user=_optional_name("user", request.user),
    )
    return Question(
        reader=reader,
        query=query,
        sampling=request.sampling,
        route=_optional_name("route", request.route) or "",
        reason=check_text("reason", request.reason, max_chars=1024),
        request_id=check_text("request_id", request.request_id, max_chars=128) or str(uuid.uuid4()),
    )


def audience_of(request: fallback_pb2.IndexRequest) -> Audience:
    """The chunks' audience; PUBLIC is owned by the public tenant, the others by the request's tenant."""
    if request.acl.scope not in SCOPES:
        raise InvalidFieldError("acl.scope", "is required (public, tenant, workspace or user)")
    scope = SCOPES[request.acl.scope]
    tenant = check_name("tenant_id", request.tenant_id)
    owner = PUBLIC_TENANT if scope is AclScope.PUBLIC else tenant
    if request.acl.tenant_id and request.acl.tenant_id != owner:
        raise InvalidFieldError("acl.tenant_id", f"must be {owner!r} for this scope and tenant")
    principal = request.acl.principal
    if scope in (AclScope.WORKSPACE, AclScope.USER):
        check_name("acl.principal", principal)
    elif principal:
        raise InvalidFieldError("acl.principal", f"must be empty for scope {scope.value}")
    return Audience(tenant_id=owner, scope=scope, principal=principal)


def documents_of(request: fallback_pb2.IndexRequest) -> list[SourceDocument]:
    if not request.documents:
        raise InvalidFieldError("documents", "is empty: send the source's documents")
    paths = [check_text("documents.path", d.path, max_chars=MAX_URI, required=True) for d in request.documents]
    if len(set(paths)) != len(paths):
        raise InvalidFieldError("documents.path", "repeats a document: each path once")
    return [
        SourceDocument(path=p, title=check_text("documents.title", d.title, max_chars=1024), text=d.text)
        for p, d in zip(paths, request.documents, strict=True)
    ]


class FallbackServicer(fallback_pb2_grpc.FallbackServiceServicer):
    def __init__(self, answerer: Answerer, indexer: Indexer, promotion: PromotionRpcs, *, router_subject: str) -> None:
        self.answerer = answerer
        self.indexer = indexer
        self.promotion = promotion
        self.router_subject = router_subject

    @override
    async def Generate(
        self, request: fallback_pb2.FallbackGenerateRequest, context: Context
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        caller = current_caller()
        if caller.subject != self.router_subject and not caller.is_admin:
            raise PermissionDeniedError(f"{caller.subject} may not ask the fallback: only the router and admins may")
        question = question_of(request)
        try:
            async for response in self.answerer.answer(question, context.time_remaining()):
                yield response
        except grpc.aio.AioRpcError as e:  # the pool refused the request: its status, as the pool said it
            await context.abort(e.code(), f"the cache pool: {e.details()}")

    @override
    async def Index(self, request: fallback_pb2.IndexRequest, context: Context) -> fallback_pb2.IndexResponse:
        audience = audience_of(request)
        caller = current_caller()
        caller.require(Scope.WRITE, check_name("tenant_id", request.tenant_id))
        if audience.scope is AclScope.PUBLIC:  # public chunks reach every tenant: an operator's decision
            caller.require_admin("index public knowledge")
        source_uri = check_text("source_uri", request.source_uri, max_chars=MAX_URI, required=True)
        documents = documents_of(request)
        result = await self.indexer.index_documents(source_uri, audience, documents, documents_checksum(documents))
        return fallback_pb2.IndexResponse(
            documents=result.documents, chunks=result.chunks, source_checksum=result.checksum
        )

    @override
    async def Candidates(
        self, request: fallback_pb2.CandidatesRequest, context: Context
    ) -> fallback_pb2.CandidatesResponse:
        return await self.promotion.candidates(request)

    @override
    async def Review(self, request: fallback_pb2.ReviewRequest, context: Context) -> fallback_pb2.ReviewResponse:
        return await self.promotion.review(request)
