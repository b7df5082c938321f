"""The index follows the sources: every published module's source is indexed (at start and on
`cag.module.published`), and a changed source (`cag.invalidate.source`) is read again and its chunks replaced."""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker
from nats.js.api import DeliverPolicy

from cag.acl import PUBLIC_TENANT, AclScope
from cag.errors import InvalidInputError
from cag.events.consumer import EventConsumer, Redelivery, subscribe
from cag.events.schemas import Envelope, ModulePublishedV1, SourceChangedV1
from cag.fallback.index import Audience
from cag.fallback.indexing import Indexer
from cag.fallback.reindexing import Reindexing
from cag.rpc.clients import AsyncRegistryClient
from cag.v1 import common_pb2, registry_pb2

log = logging.getLogger(__name__)
SCOPES = {
    common_pb2.ACL_SCOPE_PUBLIC: AclScope.PUBLIC,
    common_pb2.ACL_SCOPE_TENANT: AclScope.TENANT,
    common_pb2.ACL_SCOPE_WORKSPACE: AclScope.WORKSPACE,
    common_pb2.ACL_SCOPE_USER: AclScope.USER,
}


def audience_of(module: common_pb2.Module) -> Audience:
    scope = SCOPES[module.acl_scope]
    tenant = PUBLIC_TENANT if scope is AclScope.PUBLIC else module.tenant_id
    return Audience(tenant_id=tenant, scope=scope, principal=module.acl_principal)


class SourceFollower:
    def __init__(self, indexer: Indexer, registry: AsyncRegistryClient, reindexing: Reindexing) -> None:
        self.indexer, self.registry, self.reindexing = indexer, registry, reindexing

    async def index_published(self) -> int:
        """Index the source of every published module whose chunks are missing or older; the sources indexed. A
        source this service cannot read (a scheme it does not know, a folder gone) is skipped, saying so."""
        indexed = 0
        request = registry_pb2.ListModulesRequest(state=common_pb2.MODULE_STATE_PUBLISHED)
        async for module in self.registry.list_all(request):
            try:
                indexed += (await self.indexer.index_uri(module.source_uri, audience_of(module))).changed
            except InvalidInputError as e:
                log.warning("source %s of module %s not indexed: %s", module.source_uri, module.module_id, e)
        return indexed

    async def on_module_published(self, envelope: Envelope, event: ModulePublishedV1) -> None:
        module = await self.registry.get(event.module_id)
        result = await self.indexer.index_uri(module.source_uri, audience_of(module))
        if result.changed:
            log.info("indexed %s for %s: %d chunks", module.source_uri, module.tenant_id, result.chunks)

    async def on_source_changed(self, envelope: Envelope, event: SourceChangedV1) -> None:
        """Re-read a source the index holds (for the tenant, or public) and replace its chunks; a source the index
        does not hold is indexed when a module of it is published. Answers for the tenant wait meanwhile."""
        async with self.reindexing.running(event.tenant_id):
            await self._reindex(envelope, event)

    async def _reindex(self, envelope: Envelope, event: SourceChangedV1) -> None:
        for tenant in (event.tenant_id, PUBLIC_TENANT):
            audience = await self.indexer.index.audience_of(tenant, event.source_uri)
            if audience is not None:
                result = await self.indexer.index_uri(event.source_uri, audience, event_id=envelope.event_id)
                log.info("reindexed %s for %s: %d chunks", event.source_uri, tenant, result.chunks)
                return


def subscribe_sources(broker: NatsBroker, follower: SourceFollower, group: str, redelivery: Redelivery) -> None:
    """One durable per subject shared by the fallback replicas of `group`: each event is indexed once."""
    subscribe(
        broker,
        EventConsumer(
            name=f"{group}-source",
            subject=SourceChangedV1.subject,
            accepts=(SourceChangedV1,),
            handle=follower.on_source_changed,
            redelivery=redelivery,
            deliver_policy=DeliverPolicy.NEW,
        ),
    )
    subscribe(
        broker,
        EventConsumer(
            name=f"{group}-published",
            subject=ModulePublishedV1.subject,
            accepts=(ModulePublishedV1,),
            handle=follower.on_module_published,
            redelivery=redelivery,
            deliver_policy=DeliverPolicy.NEW,
        ),
    )
