"""A generated population of module records: several tenants, models, tokenizers, layouts, ACL scopes and chains."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass

from cag.acl import AclScope
from cag.metadata import GoldenStatus, ModuleMetadata
from cag.registry.core.records import ModuleRecord
from cag.registry.core.states import ModuleState

TENANTS = ("acme", "globex", "initech")
MODELS = (("smollm2", "rev-a"), ("smollm2", "rev-b"), ("tinyllama", "rev-x"))
TOKENIZERS = ("tok-1", "tok-2")
LAYOUTS = (("support.v1", "lh-1"), ("support.v1", "lh-2"), ("agent.v3", "lh-9"))
SCOPES = (AclScope.PUBLIC, AclScope.TENANT, AclScope.WORKSPACE, AclScope.USER)


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def layout_of(layout_id: str, variant: str) -> tuple[str, str]:
    """(canonical JSON, its SHA-256): a stand-in layout whose hash is real, as the registry checks it."""
    body = json.dumps({"layout_id": layout_id, "variant": variant}, sort_keys=True, separators=(",", ":"))
    return body, _h(body)


def layout_hash_of(layout_id: str, variant: str) -> str:
    return layout_of(layout_id, variant)[1]


def make_metadata(module_id: str, **kw: object) -> ModuleMetadata:
    """Plausible metadata; `layout_hash` may be a short label ("lh-2"): the layout then gets that variant."""
    layout_id = str(kw.pop("layout_id", "support.v1"))
    label = str(kw.pop("layout_hash", "lh-1"))
    layout, layout_hash = (str(kw.pop("layout")), label) if "layout" in kw else layout_of(layout_id, label)
    base: dict[str, object] = {
        "module_id": module_id,
        "tenant_id": "acme",
        "route": "billing",
        "model_name": "smollm2",
        "model_revision": "rev-a",
        "tokenizer_revision": "tok-1",
        "context_checksum": _h("ctx" + module_id),
        "source_checksum": _h("src" + module_id),
        "token_count": 10,
        "dtype": "fp32",
        "acl_scope": AclScope.TENANT,
        "acl_principal": "",
        "created_at": "2026-01-01T00:00:00Z",
        "expires_at": None,
        "layout_id": layout_id,
        "layout_hash": layout_hash,
        "layout": layout,
        "parent_id": None,
        "parent_chain_hash": None,
        "chain_hash": _h("chain" + module_id),
        "engine_fingerprint": "llama;test",
        "golden_status": GoldenStatus.PASSED,
        "golden_results": "[]",
        "tensor_checksum": "blake3:" + _h("tensor" + module_id),
    }
    base.update(kw)
    return ModuleMetadata(**base)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Population:
    records: list[ModuleRecord]  # parents before children

    def by_id(self) -> dict[str, ModuleRecord]:
        return {r.module_id: r for r in self.records}


def generate_population(seed: int = 7, roots: int = 24) -> Population:
    """Roots (system modules) with tool and domain children: chains of depth 1 to 3."""
    rng = random.Random(seed)
    records: list[ModuleRecord] = []
    counter = itertools.count()

    def add(parent: ModuleRecord | None, route: str) -> ModuleRecord:
        n = next(counter)
        tenant = parent.metadata.tenant_id if parent else rng.choice(TENANTS)
        model, revision = (parent.metadata.model_name, parent.metadata.model_revision) if parent else rng.choice(MODELS)
        layout_id, layout_hash = (
            (parent.metadata.layout_id, parent.metadata.layout_hash) if parent else rng.choice(LAYOUTS)
        )
        scope = rng.choice(SCOPES)
        meta = make_metadata(
            f"{route}-{n:04d}",
            tenant_id=tenant,
            route=route,
            model_name=model,
            model_revision=revision,
            tokenizer_revision=parent.metadata.tokenizer_revision if parent else rng.choice(TOKENIZERS),
            layout_id=layout_id,
            layout_hash=layout_hash,
            **({"layout": parent.metadata.layout} if parent else {}),
            acl_scope=scope,
            acl_principal=rng.choice(("ws-1", "ws-2")) if scope in (AclScope.WORKSPACE, AclScope.USER) else "",
            parent_id=parent.module_id if parent else None,
            parent_chain_hash=parent.metadata.chain_hash if parent else None,
            source_checksum=_h(f"{route}-{rng.randint(0, 1)}"),
            expires_at=rng.choice((None, "2026-02-01T00:00:00Z", "2027-01-01T00:00:00Z")),
        )
        record = ModuleRecord(metadata=meta, source_uri=f"git://kb/{tenant}/{route}", state=ModuleState.VALIDATING)
        records.append(record)
        return record

    for _ in range(roots):
        root = add(None, "system")
        for tools in range(rng.randint(0, 2)):
            child = add(root, f"tools{tools}")
            for _ in range(rng.randint(0, 2)):
                add(child, rng.choice(("billing", "shipping", "api")))
    return Population(records)
