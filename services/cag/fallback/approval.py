"""What approving a candidate does: its evidence written as a knowledge source, a compile of it started for the
tenant and route (published when built), and a keyword rule for the route added to the tenant's rules.

Each step can be repeated without harm, so a review that fails half-way (and leaves the candidate PROPOSED) can
be tried again: the folder is rewritten, the compiler answers an identical compile with the job it already has,
and the rule, whose id is the candidate's, replaces itself.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cag.acl import AclScope
from cag.errors import CagError, Status, UnavailableError
from cag.fallback.core.candidates import Candidate
from cag.fallback.core.promotion_rule import promotion_keywords, promotion_rule_id
from cag.fallback.core.promotion_source import EvidenceChunk, golden_cases, source_files
from cag.identifiers import check_name
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.clients.compiler import AsyncCompilerClient
from cag.v1 import common_pb2, compiler_pb2, registry_pb2

GOLDEN_QUERIES = 5  # representative queries turned into golden cases (those with grounded facts)
ROUTE_DESCRIPTION_QUERIES = 3
PRIVATE_SCOPES = (AclScope.WORKSPACE.value, AclScope.USER.value)

_EVIDENCE = text(
    "SELECT chunk_id, source_uri, path, heading, char_start, char_end, body, acl_scope, acl_principal "
    "FROM fallback_chunks WHERE tenant_id IN (:tenant_id, 'public') AND chunk_id IN :ids"
).bindparams(bindparam("ids", expanding=True))


class PromotionRefusedError(CagError):
    """The candidate cannot be promoted as it stands (its evidence is gone or private, its queries have no topic)."""

    status = Status.FAILED_PRECONDITION
    reason = "PROMOTION_REFUSED"


class PromotionStepError(CagError):
    """A service the approval needs refused its step (the compiler or the registry; their status is quoted)."""

    status = Status.FAILED_PRECONDITION
    reason = "PROMOTION_STEP_FAILED"


@dataclass(frozen=True, kw_only=True)
class CompileTarget:
    model: str  # catalog name the promoted module is compiled for (the cache pool's)
    layout_file: Path
    promotions_dir: Path  # approved candidates' sources are written under it


class Approver:
    def __init__(
        self,
        database: AsyncEngine,
        compiler: AsyncCompilerClient,
        registry: AsyncRegistryClient,
        target: CompileTarget,
    ) -> None:
        self._database, self._compiler, self._registry, self._target = database, compiler, registry, target

    async def approve(self, candidate: Candidate, route: str, reviewer_facts: Sequence[str] = ()) -> str:
        """Write the source, start its compile, add the route rule; the compile job's id. `reviewer_facts`: what
        the module's answers must hold where the fallback's answers hold nothing grounded in the evidence."""
        check_name("route", route)
        chunks = await self.evidence(candidate)
        folder = self._write_source(candidate, chunks, reviewer_facts)
        job_id = await self._start_compile(candidate, route, folder)
        await self._add_rule(candidate, route)
        return job_id

    async def evidence(self, candidate: Candidate) -> list[EvidenceChunk]:
        """The candidate's evidence chunks still indexed, in its prompt order; refused when none is, or when one is
        private to a workspace or user (a tenant-wide module would show it to the whole tenant)."""
        async with self._database.connect() as conn:
            rows = (
                await conn.execute(_EVIDENCE, {"tenant_id": candidate.tenant_id, "ids": list(candidate.evidence_ids)})
            ).all()
        private = [r for r in rows if r.acl_scope in PRIVATE_SCOPES]
        if private:
            r = private[0]
            raise PromotionRefusedError(
                f"evidence chunk {r.chunk_id} of {r.source_uri} may only be read by {r.acl_scope} {r.acl_principal!r}; "
                "a module for the whole tenant would disclose it: reject this candidate"
            )
        if not rows:
            raise PromotionRefusedError(
                f"none of candidate {candidate.candidate_id}'s evidence chunks is indexed any more (their sources "
                "changed): reject it; its queries will form a new candidate on the new evidence"
            )
        order = {chunk_id: i for i, chunk_id in enumerate(candidate.evidence_ids)}
        return [
            EvidenceChunk(
                chunk_id=r.chunk_id,
                source_uri=r.source_uri,
                path=r.path,
                title=r.heading,
                start=r.char_start,
                end=r.char_end,
                text=r.body,
            )
            for r in sorted(rows, key=lambda r: order[r.chunk_id])
        ]

    def _write_source(self, candidate: Candidate, chunks: Sequence[EvidenceChunk], facts: Sequence[str]) -> Path:
        evidence = "\n".join(c.text for c in chunks)
        asked = [(q.text, q.answer) for q in candidate.queries[:GOLDEN_QUERIES]]
        cases = golden_cases(asked, evidence, reviewer_facts=facts)
        if not cases:
            raise PromotionRefusedError(
                f"candidate {candidate.candidate_id}'s fallback answers share no fact with their evidence, so no "
                "golden check can be made of them, and the registry publishes no unchecked module: approve again "
                "naming what the answers must contain (ReviewRequest.expect; cag candidates approve --expect)"
            )
        folder = self._target.promotions_dir / candidate.tenant_id / candidate.candidate_id
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for file in source_files(chunks):
            (folder / file.name).write_text(file.text, encoding="utf-8")
        (folder / "golden.json").write_text(json.dumps(cases, indent=2, ensure_ascii=False), encoding="utf-8")
        return folder

    async def _start_compile(self, candidate: Candidate, route: str, folder: Path) -> str:
        request = compiler_pb2.CompileRequest(
            model=self._target.model,
            source_uri=folder.resolve().as_uri(),
            layout_uri=self._target.layout_file.resolve().as_uri(),
            acl=common_pb2.Acl(scope=common_pb2.ACL_SCOPE_TENANT, tenant_id=candidate.tenant_id),
            route=route,
            publish=True,
        )
        try:
            return await self._compiler.start(request)
        except grpc.aio.AioRpcError as e:
            raise _step_error("compiler", self._compiler.address, e) from e

    async def _add_rule(self, candidate: Candidate, route: str) -> None:
        try:
            current = await self._registry.get_route_rules(candidate.tenant_id)
            rules, routes = promoted_rules(current, candidate, route)
            await self._registry.put_route_rules(
                candidate.tenant_id,
                rules,
                routes,
                expected_version=current.version,
                reason=f"promotion candidate {candidate.candidate_id} approved for route {route}",
            )
        except grpc.aio.AioRpcError as e:
            raise _step_error("registry", self._registry.address, e) from e


def promoted_rules(
    current: registry_pb2.RouteRuleSet, candidate: Candidate, route: str
) -> tuple[list[registry_pb2.RouteRule], list[registry_pb2.RouteInfo]]:
    """The tenant's rules and routes with the candidate's keyword rule for `route`: an earlier version of that rule
    replaced, otherwise appended (rules in force keep deciding the queries they decided before); the route listed,
    described by the candidate's queries, when the tenant did not list it."""
    queries = [q.text for q in candidate.queries]
    keywords = promotion_keywords(queries)
    if not keywords:
        raise PromotionRefusedError(
            f"candidate {candidate.candidate_id}'s queries have no topic word to route by (only question words): "
            "add a rule for them with `cag routes` and reject the candidate"
        )
    rule_id = promotion_rule_id(candidate.candidate_id)
    rule = registry_pb2.RouteRule(rule_id=rule_id, route=route, keywords=keywords)
    rules = [r for r in current.rules if r.rule_id != rule_id] + [rule]
    routes = list(current.routes)
    if all(info.route != route for info in routes):
        description = "Questions such as: " + "; ".join(queries[:ROUTE_DESCRIPTION_QUERIES])
        routes.append(registry_pb2.RouteInfo(route=route, description=description[:2048]))
    return rules, routes


def _step_error(service: str, address: str, e: grpc.aio.AioRpcError) -> CagError:
    message = f"the {service} at {address} refused the promotion: {e.code().name}: {e.details()}"
    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnavailableError(message)
    return PromotionStepError(message)
