"""The fallback's requests unpacked at its edge: every field read, bad input a typed error naming the field."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest

from cag.acl import PUBLIC_TENANT, AclScope
from cag.auth import Caller, Scope
from cag.auth.caller import SYSTEM
from cag.errors import InvalidFieldError, PermissionDeniedError
from cag.fallback import servicer
from cag.fallback.core.audience import Reader
from cag.fallback.index import Audience
from cag.fallback.indexing import Indexed
from cag.fallback.servicer import audience_of, documents_of, question_of
from cag.v1 import common_pb2, fallback_pb2

SAMPLING = common_pb2.SamplingParams(max_new_tokens=8, seed=3)


def test_every_generate_field_reaches_the_question() -> None:
    request = fallback_pb2.FallbackGenerateRequest(
        tenant_id="acme", workspace="sales", user="ann", query="Refunds?", sampling=SAMPLING, route="billing",
        reason="module stale", request_id="req-1",
    )  # fmt: skip
    question = question_of(request)
    assert question.reader == Reader(tenant_id="acme", workspace="sales", user="ann")
    assert (question.query, question.route, question.reason, question.request_id) == (
        "Refunds?", "billing", "module stale", "req-1",
    )  # fmt: skip
    assert question.sampling == SAMPLING


def test_a_request_without_workspace_user_or_id_gets_none_and_a_fresh_id() -> None:
    question = question_of(fallback_pb2.FallbackGenerateRequest(tenant_id="acme", query="Refunds?"))
    assert question.reader == Reader(tenant_id="acme")
    assert question.request_id and question.route == ""


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tenant_id": "", "query": "q"}, "tenant_id"),
        ({"tenant_id": "Acme!", "query": "q"}, "tenant_id"),
        ({"tenant_id": "acme", "query": "   "}, "query"),
        ({"tenant_id": "acme", "query": "q\x00"}, "query"),
        ({"tenant_id": "acme", "query": "q", "workspace": "no spaces"}, "workspace"),
    ],
)
def test_bad_generate_requests_name_the_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        question_of(fallback_pb2.FallbackGenerateRequest(**fields))
    assert caught.value.field == field


def index_request(scope: int, acl_tenant: str = "", principal: str = "") -> fallback_pb2.IndexRequest:
    return fallback_pb2.IndexRequest(
        tenant_id="acme", source_uri="file:///kb/acme",
        documents=[fallback_pb2.Document(path="a.md", title="A", text="Alpha.")],
        acl=common_pb2.Acl(scope=scope, tenant_id=acl_tenant, principal=principal),
    )  # fmt: skip


def test_the_audience_of_an_index_request() -> None:
    assert audience_of(index_request(common_pb2.ACL_SCOPE_TENANT)).tenant_id == "acme"
    public = audience_of(index_request(common_pb2.ACL_SCOPE_PUBLIC, PUBLIC_TENANT))
    assert (public.tenant_id, public.scope) == (PUBLIC_TENANT, AclScope.PUBLIC)
    workspace = audience_of(index_request(common_pb2.ACL_SCOPE_WORKSPACE, "acme", "sales"))
    assert (workspace.scope, workspace.principal) == (AclScope.WORKSPACE, "sales")
    [document] = documents_of(index_request(common_pb2.ACL_SCOPE_TENANT))
    assert (document.path, document.title, document.text) == ("a.md", "A", "Alpha.")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (index_request(common_pb2.ACL_SCOPE_UNSPECIFIED), "acl.scope"),
        (index_request(common_pb2.ACL_SCOPE_TENANT, "globex"), "acl.tenant_id"),
        (index_request(common_pb2.ACL_SCOPE_WORKSPACE, "acme"), "acl.principal"),
        (index_request(common_pb2.ACL_SCOPE_TENANT, "acme", "sales"), "acl.principal"),
    ],
)
def test_bad_audiences_name_the_field(request_: fallback_pb2.IndexRequest, field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        audience_of(request_)
    assert caught.value.field == field


def test_documents_are_required_once_each() -> None:
    empty = fallback_pb2.IndexRequest(tenant_id="acme", source_uri="file:///kb")
    twice = fallback_pb2.IndexRequest(
        tenant_id="acme", source_uri="file:///kb",
        documents=[fallback_pb2.Document(path="a.md", text="x"), fallback_pb2.Document(path="a.md", text="y")],
    )  # fmt: skip
    for request, problem in ((empty, "is empty"), (twice, "repeats")):
        with pytest.raises(InvalidFieldError, match=problem):
            documents_of(request)


class Indexer:
    def __init__(self) -> None:
        self.indexed: list[str] = []

    async def index_documents(self, source_uri: str, audience: Audience, documents: list[Any], checksum: str) -> Any:
        self.indexed.append(source_uri)
        return Indexed(documents=len(documents), chunks=1, checksum=checksum, changed=True)


TENANT_WRITER = Caller(subject="user:ops-ann", scopes=frozenset({Scope.WRITE}), tenants=frozenset({"acme"}))


@pytest.mark.parametrize(
    ("caller", "scope", "allowed"),
    [
        (TENANT_WRITER, common_pb2.ACL_SCOPE_TENANT, True),
        (TENANT_WRITER, common_pb2.ACL_SCOPE_PUBLIC, False),
        (SYSTEM, common_pb2.ACL_SCOPE_PUBLIC, True),
        (dataclasses.replace(TENANT_WRITER, scopes=frozenset({Scope.READ})), common_pb2.ACL_SCOPE_TENANT, False),
    ],
    ids=["tenant-writer", "tenant-writer-public", "admin-public", "reader"],
)
async def test_index_needs_write_on_the_tenant_and_admin_for_public_knowledge(
    caller: Caller, scope: int, allowed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servicer, "current_caller", lambda: caller)
    indexer = Indexer()
    fallback = servicer.FallbackServicer(cast("Any", None), cast("Any", indexer), cast("Any", None), router_subject="r")
    request = index_request(scope, PUBLIC_TENANT if scope == common_pb2.ACL_SCOPE_PUBLIC else "")
    if allowed:
        assert (await fallback.Index(request, cast("Any", None))).chunks == 1
    else:
        with pytest.raises(PermissionDeniedError):
            await fallback.Index(request, cast("Any", None))
    assert indexer.indexed == (["file:///kb/acme"] if allowed else [])
