"""The registry's audit trail over gRPC (ListAudit), and modules kept with --keep-failed (QUARANTINED)."""

from __future__ import annotations

import json

import grpc

from cag.auth import ALL_TENANTS, Scope
from cag.metadata import GoldenStatus
from cag.v1 import common_pb2, registry_pb2
from tests.registry_population import make_metadata
from tests.registry_server import Client, RegistryServer, fails

Code = grpc.StatusCode
pb = registry_pb2


async def audit(client: Client, tenant_id: str = "", page_size: int = 0) -> list[pb.AuditEntry]:
    response = await client.stub.ListAudit(pb.ListAuditRequest(tenant_id=tenant_id, page_size=page_size))
    return list(response.entries)


async def test_each_change_is_audited_as_the_authenticated_caller_with_its_reason(server: RegistryServer) -> None:
    alice = server.caller("user:alice", [Scope.WRITE], ["acme"])
    for name in ("billing-a", "billing-b"):
        await alice.register(make_metadata(name))
        await alice.publish(name)
    await alice.stub.Rollback(pb.RollbackRequest(tenant_id="acme", route="billing", to_version=1, reason="v2 wrong"))
    invalidated = await alice.stub.Invalidate(
        pb.InvalidateRequest(module=pb.ModuleTrigger(module_id="billing-b"), reason="leaked a price")
    )

    entries = await audit(server.caller("user:auditor", [Scope.READ], ["acme"]), "acme")
    assert [(e.action, e.actor, e.reason, e.version, list(e.module_ids)) for e in entries] == [
        (pb.AUDIT_ACTION_INVALIDATE, "user:alice", "leaked a price", 0, ["billing-b"]),
        (pb.AUDIT_ACTION_ROLLBACK, "user:alice", "v2 wrong", 1, ["billing-a"]),
        (pb.AUDIT_ACTION_PUBLISH, "user:alice", "", 2, ["billing-b"]),
        (pb.AUDIT_ACTION_PUBLISH, "user:alice", "", 1, ["billing-a"]),
    ]
    assert entries[0].event_id == invalidated.event_id
    assert all(e.tenant_id == "acme" and e.HasField("recorded_at") and e.event_id for e in entries)


async def test_list_audit_is_authorized_as_list(server: RegistryServer) -> None:
    admin = server.admin()
    await admin.register(make_metadata("billing-a"))
    await admin.publish("billing-a")
    await admin.stub.Invalidate(pb.InvalidateRequest(model=pb.ModelTrigger(model_name="smollm2", new_revision="b")))

    acme = server.caller("user:acme-reader", [Scope.READ], ["acme"])
    await fails(audit(acme, "globex"), Code.PERMISSION_DENIED)
    await fails(audit(acme), Code.INVALID_ARGUMENT, field="tenant_id")  # every tenant: not for acme's reader
    assert [e.action for e in await audit(acme, "acme")] == [pb.AUDIT_ACTION_PUBLISH]
    # A change that reaches every tenant is listed only for those who may read every tenant.
    everything = await audit(server.caller("service:ops", [Scope.READ], [ALL_TENANTS]))
    assert [(e.action, e.tenant_id) for e in everything] == [
        (pb.AUDIT_ACTION_INVALIDATE, ""),
        (pb.AUDIT_ACTION_PUBLISH, "acme"),
    ]
    assert everything[0].trigger.startswith("model: ") and list(everything[0].module_ids) == ["billing-a"]


async def test_list_audit_refuses_bad_paging(server: RegistryServer) -> None:
    admin = server.admin()
    await fails(admin.stub.ListAudit(pb.ListAuditRequest(page_size=-1)), Code.INVALID_ARGUMENT, field="page_size")
    await fails(admin.stub.ListAudit(pb.ListAuditRequest(page_token="x")), Code.INVALID_ARGUMENT, field="page_token")
    await fails(admin.stub.ListAudit(pb.ListAuditRequest(tenant_id="a b")), Code.INVALID_ARGUMENT, field="tenant_id")


async def test_a_module_kept_with_failed_golden_tests_is_registered_quarantined(server: RegistryServer) -> None:
    """compiler.proto: keep_failed "keeps (registers as QUARANTINED) a module whose golden tests failed"."""
    admin = server.admin()
    results = [
        {"question": "Price?", "expect": ["5"], "answer": "7", "passed": False},
        {"question": "Refunds?", "expect": ["30 days"], "answer": "30 days", "passed": True},
    ]
    failed = make_metadata("billing-f", golden_status=GoldenStatus.FAILED, golden_results=json.dumps(results))
    registered = await admin.register(failed)
    assert registered.state == common_pb2.MODULE_STATE_QUARANTINED
    assert registered.state_reason == "golden tests failed (1 question(s)); kept for inspection"
    assert registered.golden_status == common_pb2.GOLDEN_STATUS_FAILED
    assert await admin.register(failed) == registered  # idempotent
    await fails(admin.publish("billing-f"), Code.FAILED_PRECONDITION, reason="PUBLISH_REFUSED")
    assert (await admin.get("billing-f")).state == common_pb2.MODULE_STATE_QUARANTINED
    assert await audit(admin) == []
