"""The compile pipeline: canonical source → layout → tokens → KV on top of the parent chain → golden tests → module.

Pure core: no printing, no argument parsing. Progress goes to an observer, which the
CLI renders as a progress bar and the compiler service will stream over gRPC.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from transformers import AutoTokenizer

from cag.canonical import chain_hash, context_checksum, load_source, source_checksum
from cag.canonical.checksum import module_key
from cag.compiler.golden import GoldenResult, draft_module, results_json, run_golden
from cag.compiler.request import CompileRequest, expires_at, resolve_created_at
from cag.engine import Engine, load_engine
from cag.errors import CagError, ContextWindowExceededError, GoldenTestsFailedError
from cag.kvmodule import ModuleFile, order_chain, write_module
from cag.kvmodule.atomic import check_writable_dir
from cag.layout import PromptLayout, layout_hash, layout_json, load_layout
from cag.metadata import GoldenStatus, ModuleMetadata
from cag.models import ModelFiles, resolve_model, resolve_tokenizer
from cag.telemetry import span

PREFILL_CHUNK = 256


class CompileObserver(Protocol):
    def stage(self, name: str) -> None: ...
    def prefill_started(self, total_tokens: int) -> None: ...
    def prefill_advanced(self, tokens: int) -> None: ...
    def golden_result(self, result: GoldenResult) -> None: ...


class SilentObserver:
    def stage(self, name: str) -> None:
        pass

    def prefill_started(self, total_tokens: int) -> None:
        pass

    def prefill_advanced(self, tokens: int) -> None:
        pass

    def golden_result(self, result: GoldenResult) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class CompileResult:
    metadata: ModuleMetadata
    path: Path | None  # None when golden tests failed and nothing was written
    parent_tokens: int
    golden: list[GoldenResult] = field(default_factory=list)
    prefill_seconds: float = 0.0
    header_sha256: str = ""  # the written file's header checksum ("" when nothing was written)

    @property
    def publishable(self) -> bool:
        return self.path is not None and self.metadata.golden_status is not GoldenStatus.FAILED


def module_id_for(*, context: str, request: CompileRequest) -> str:
    """`<route>-<16 hex>`: distinct for every tenant, route, ACL scope and principal (workspace or user)."""
    acl = request.acl
    digest = module_key(
        context_checksum=context,
        tenant_id=acl.tenant_id,
        route=request.route_name,
        acl_scope=acl.scope.value,
        acl_principal=acl.principal,
    )
    return f"{request.route_name}-{digest[:16]}"


def compile_module(
    request: CompileRequest,
    *,
    models_dir: Path,
    engine: Engine | None = None,
    observer: CompileObserver | None = None,
) -> CompileResult:
    """Build one module; raises a CagError on bad input, GoldenTestsFailedError when goldens fail. Traced as one
    `compile` span (cag.telemetry)."""
    with span("compile", source=request.source.name, model=request.model, parents=len(request.parents)) as compiling:
        result = _compile(request, models_dir=models_dir, engine=engine, observer=observer)
        metadata = result.metadata
        compiling.set_attributes(
            {"module_id": metadata.module_id, "route": metadata.route, "tenant_id": metadata.tenant_id,
             "tokens": metadata.token_count}
        )  # fmt: skip
        return result


def _compile(
    request: CompileRequest, *, models_dir: Path, engine: Engine | None, observer: CompileObserver | None
) -> CompileResult:
    obs = observer or SilentObserver()
    check_writable_dir(request.out)  # before the minutes of work whose result it must hold
    obs.stage("reading source and layout")
    layout = load_layout(request.layout)
    bundle = load_source(request.source, layout.section_order)
    created = resolve_created_at(request.created_at, bundle.updated)
    expiry = expires_at(created, request.ttl_days)  # a TTL without a date fails here, before any work
    model = resolve_tokenizer(request.tokenizer, resolve_model(request.model, models_dir), models_dir)
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_path)
    prompt = PromptLayout(layout, tokenizer)
    parents = order_chain([ModuleFile.open(p) for p in request.parents]) if request.parents else []
    is_root = not parents
    tokens = prompt.module_tokens(prompt.module_content(bundle, is_root=is_root), is_root=is_root)
    parent_tokens = sum(p.token_count for p in parents)
    _check_context_window(model, request, parent_tokens, len(tokens), layout.max_query_tokens)

    obs.stage("loading model")
    engine = engine or load_engine(request.engine, model, request.dtype)
    the_layout_hash = layout_hash(layout)
    for parent in parents:
        engine.identity.check(
            parent.metadata, layout_hash=the_layout_hash, layout_of=f"the layout being compiled ({layout.name})"
        )
    obs.stage("prefilling")
    obs.prefill_started(len(tokens))
    started = time.perf_counter()
    # The parents are read from their files, which verifies their checksums as they are read: a damaged
    # file is refused even when the engine still holds a verified copy of it.
    engine.evict()
    rows = engine.prefill_module(parents, tokens, chunk_size=PREFILL_CHUNK, on_progress=obs.prefill_advanced)
    prefill_seconds = time.perf_counter() - started

    parent_chain = parents[-1].metadata.chain_hash if parents else None
    the_source_checksum = source_checksum(bundle)
    context = context_checksum(
        source_checksum=the_source_checksum,
        layout_hash=the_layout_hash,
        model_revision=model.model_revision,
        tokenizer_revision=model.tokenizer_revision,
        parent_chain_hash=parent_chain,
        dtype=request.dtype,
        tenant_id=request.acl.tenant_id,
        acl_scope=request.acl.scope.value,
        acl_principal=request.acl.principal,
    )
    route = request.route_name
    module_id = module_id_for(context=context, request=request)
    filename = f"{module_id}.safetensors"
    identity = engine.identity
    metadata = ModuleMetadata(
        module_id=module_id,
        tenant_id=request.acl.tenant_id,
        route=route,
        model_name=identity.model_name,
        model_revision=identity.model_revision,
        tokenizer_revision=identity.tokenizer_revision,
        context_checksum=context,
        source_checksum=the_source_checksum,
        token_count=len(tokens),
        dtype=request.dtype,  # type: ignore[arg-type]  # validated by CompileRequest
        acl_scope=request.acl.scope,
        acl_principal=request.acl.principal,
        created_at=created,
        expires_at=expiry,
        layout_id=layout.name,
        layout_hash=the_layout_hash,
        layout=layout_json(layout),
        parent_id=parents[-1].metadata.module_id if parents else None,
        parent_chain_hash=parent_chain,
        chain_hash=chain_hash(parent_chain_hash=parent_chain, context_checksum=context),
        engine_fingerprint=identity.engine_fingerprint,
        golden_status=GoldenStatus.NONE,  # until the golden questions below have run
        golden_results=results_json([]),
    )
    obs.stage("running golden questions")
    golden = run_golden(
        bundle.golden,
        engine=engine,
        chain=[*parents, draft_module(metadata, rows, tokens)],
        suffix_tokens=prompt.suffix_tokens,
        decode=prompt.decode,
        max_new_tokens=request.golden_max_new_tokens,
        stop_sequences=prompt.paragraph_break_sequences(),
        on_result=obs.golden_result,
    )
    status = GoldenStatus.NONE if not golden else GoldenStatus("passed" if all(r.passed for r in golden) else "failed")
    metadata = dataclasses.replace(metadata, golden_status=status, golden_results=results_json(golden))
    if status is GoldenStatus.FAILED and not request.keep_failed:
        failed = [r for r in golden if not r.passed]
        raise GoldenTestsFailedError(_golden_failure_message(failed, len(golden)))
    try:
        written = write_module(request.out / filename, metadata, rows.k, rows.v, tokens)
    except OSError as e:  # checked writable at the start; the disk may still fill up or vanish
        raise CagError(f"cannot write module {request.out / filename}: {e.strerror}") from e
    return CompileResult(
        metadata=written.metadata,
        path=request.out / filename,
        parent_tokens=parent_tokens,
        golden=golden,
        prefill_seconds=prefill_seconds,
        header_sha256=written.header_sha256,
    )


def _check_context_window(model: ModelFiles, request: CompileRequest, parent: int, module: int, query: int) -> None:
    reserved = query + request.golden_max_new_tokens
    needed = parent + module + reserved
    if needed > model.context_window:
        raise ContextWindowExceededError(
            f"source {request.source} renders to {module:,} tokens on top of a parent chain of {parent:,}; "
            f"with {reserved:,} reserved for the query and answer that is {needed:,} tokens, "
            f"but {model.name} accepts at most {model.context_window:,}. Split the source into smaller modules."
        )


def _golden_failure_message(failed: list[GoldenResult], total: int) -> str:
    lines = [f"{len(failed)} of {total} golden questions failed; the module was not written:"]
    for r in failed:
        lines.append(f"  - {r.question!r}: expected {list(r.expect)}, answered {r.answer!r}")
    return "\n".join(lines)
