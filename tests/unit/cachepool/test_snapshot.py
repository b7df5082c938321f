"""The registry snapshot: readiness, servable states, withdrawal that events cannot undo, chain and tenant checks."""

from __future__ import annotations

import dataclasses

import pytest

from cag.acl import AclScope
from cag.cachepool.core.snapshot import (
    MAX_CHAIN,
    ModuleRecord,
    ModuleState,
    RegistrySnapshot,
    StateChange,
    check_chain,
    check_module_ids,
    check_visible,
)
from cag.errors import (
    ChainError,
    InvalidFieldError,
    ModuleNotServableError,
    PermissionDeniedError,
    Status,
    UnavailableError,
)


def record(module_id: str, *, parent: ModuleRecord | None = None, tenant: str = "acme", **kw: object) -> ModuleRecord:
    fields: dict[str, object] = {
        "module_id": module_id,
        "tenant_id": tenant,
        "acl_scope": AclScope.TENANT,
        "version": 1,
        "state": ModuleState.PUBLISHED,
        "storage_uri": f"file:///m/{module_id}.safetensors",
        "tensor_checksum": "blake3:00",
        "header_sha256": "00",
        "token_count": 10,
        "parent_id": parent.module_id if parent else "",
        "parent_chain_hash": parent.chain_hash if parent else "",
        "chain_hash": f"chain-{module_id}",
        "model_name": "tiny",
        "layout_hash": "l",
        "layout": "{}",
    }
    return ModuleRecord(**{**fields, **kw})  # type: ignore[arg-type]


def test_requests_before_the_snapshot_caught_up_are_unavailable() -> None:
    snapshot = RegistrySnapshot()
    with pytest.raises(UnavailableError) as refused:
        snapshot.require_ready()
    assert refused.value.status is Status.UNAVAILABLE
    snapshot.mark_caught_up()
    snapshot.require_ready()


def test_the_feed_state_wins_over_the_fetched_record_and_withdrawal_is_final() -> None:
    snapshot = RegistrySnapshot()
    m = record("m")
    snapshot.require_servable(m)  # the record says published and the feed has not spoken
    assert snapshot.apply(StateChange(module_id="m", state=ModuleState.PUBLISHED)) is False
    assert snapshot.apply(StateChange(module_id="m", state=ModuleState.INVALIDATED)) is True
    # The same withdrawal again (the feed after the event) changes nothing, and an older PUBLISHED replayed
    # after the event does not revive the module.
    assert snapshot.apply(StateChange(module_id="m", state=ModuleState.INVALIDATED)) is False
    assert snapshot.apply(StateChange(module_id="m", state=ModuleState.PUBLISHED)) is False
    with pytest.raises(ModuleNotServableError) as refused:
        snapshot.require_servable(m)
    assert (refused.value.reason, refused.value.module, refused.value.state) == (
        "MODULE_NOT_SERVABLE",
        "m",
        "invalidated",
    )


def test_a_record_that_is_not_published_is_not_servable() -> None:
    with pytest.raises(ModuleNotServableError):
        RegistrySnapshot().require_servable(record("m", state=ModuleState.STALE))


def test_module_ids_are_validated() -> None:
    assert check_module_ids(["a", "b"]) == ["a", "b"]
    for bad, field in (([], "module_ids"), (["a", "B!"], "module_ids[1]"), (["a", "a"], "module_ids")):
        with pytest.raises(InvalidFieldError) as refused:
            check_module_ids(bad)
        assert refused.value.field == field
    with pytest.raises(InvalidFieldError):
        check_module_ids([f"m{i}" for i in range(MAX_CHAIN + 1)])


def test_the_chain_must_be_root_first_and_complete() -> None:
    root = record("root")
    child = record("child", parent=root)
    check_chain([root, child])
    with pytest.raises(ChainError):
        check_chain([child])  # no root
    with pytest.raises(ChainError):
        check_chain([child, root])  # leaf first
    with pytest.raises(ChainError):
        check_chain([root, dataclasses.replace(child, parent_chain_hash="other")])


def test_another_tenants_module_is_denied_without_naming_it() -> None:
    public = record("shared", tenant="public", acl_scope=AclScope.PUBLIC)
    theirs = record("their-secret", parent=public, tenant="globex")
    check_visible([public], "acme")
    with pytest.raises(PermissionDeniedError) as refused:
        check_visible([public, theirs], "acme")
    assert "their-secret" not in str(refused.value) and "globex" not in str(refused.value)
