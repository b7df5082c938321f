"""Wiring of the compiler service: the jobs table, the runner, the recompile consumers and the gRPC server."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from faststream.nats import NatsBroker
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token, load_key
from cag.compiler.jobstore import JobStore
from cag.compiler.metrics import CompilerCollector, record_finished
from cag.compiler.recompile import Recompiler, subscribe_recompiles
from cag.compiler.runner import Compiler, CompilerConfig
from cag.compiler.servicer import SERVICE_NAME, CompilerServicer
from cag.compiler.settings import CompilerSettings
from cag.engine import Engine
from cag.events.bus import make_broker
from cag.events.consumer import start_broker
from cag.lifecycle import bounded
from cag.objectstore import ObjectStore, parse_s3_uri
from cag.objectstore.s3 import S3Settings
from cag.rpc.clients import AsyncRegistryClient
from cag.rpc.server import ServiceServer, build_server
from cag.rpc.tls import client_tls, server_tls
from cag.service_process import run_until_signalled
from cag.telemetry.metrics import REGISTRY, serve_service_metrics
from cag.v1 import compiler_pb2_grpc

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0


@dataclass
class CompilerApp:
    settings: CompilerSettings
    # Given by tests that share one engine; otherwise each model's engine is loaded on its first job.
    engine: Engine | None = None
    database: AsyncEngine | None = None
    compiler: Compiler | None = None
    recompiler: Recompiler | None = None
    registry: AsyncRegistryClient | None = None
    broker: NatsBroker | None = None
    server: ServiceServer | None = None
    collector: CompilerCollector | None = None

    async def start(self) -> None:
        s = self.settings
        listen_tls, tls = server_tls(s), client_tls(s)  # a TLS setting wrong: refused before anything starts
        key = load_key(s.auth_key_file)
        token = issue_token(key, s.subject, [Scope.WRITE], [ALL_TENANTS], s.token_ttl_s)
        self.database = create_async_engine(s.database_url, pool_size=4, pool_pre_ping=True)
        store = JobStore(self.database)
        await store.create_tables()
        self.registry = AsyncRegistryClient(s.registry_address, token=token, tls=tls)
        s.modules_dir.mkdir(parents=True, exist_ok=True)
        prefix = s.object_store_prefix
        config = CompilerConfig(
            models_dir=s.models_dir,
            out_dir=s.modules_dir,
            engine_kind=s.engine,
            workers=s.workers,
            upload_to=parse_s3_uri(prefix.rstrip("/") + "/module").parent() if prefix else None,
            object_store=ObjectStore(S3Settings.of(s.infra)),
        )
        self.broker = make_broker(s.nats_url)
        compiler = self.compiler = Compiler(store, self.registry, config, engine=self.engine)
        recompiler = self.recompiler = Recompiler(compiler, self.registry, self.broker)
        compiler.on_finished(recompiler.job_finished)
        compiler.on_finished(record_finished)
        subscribe_recompiles(self.broker, recompiler, s.group, s.redelivery)
        await start_broker(self.broker)
        log.info("compiler: %d unfinished job(s) resumed", await compiler.resume())
        self.server = await build_server(
            [
                (
                    compiler_pb2_grpc.add_CompilerServiceServicer_to_server,
                    CompilerServicer(compiler, store, s.infra.roots),
                )
            ],
            [SERVICE_NAME],
            s.address,
            auth=key,
            reflection=s.reflection,
            tls=listen_tls,
            health_address=s.health_address,
        )
        if s.metrics_port:
            self.collector = CompilerCollector(compiler)
            REGISTRY.register(self.collector)
        serve_service_metrics(s)
        await self.server.start()
        log.info("compiler serving on %s", s.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=self.settings.shutdown_grace_s)
        if self.broker is not None:
            await bounded(self.broker.stop(), "NATS broker", STOP_TIMEOUT_S)
        if self.collector is not None:
            REGISTRY.unregister(self.collector)
        if self.compiler is not None:
            await self.compiler.close()
        if self.registry is not None:
            await self.registry.close()
        if self.database is not None:
            await self.database.dispose()


async def serve(settings: CompilerSettings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (cag.service_process)."""
    await run_until_signalled(CompilerApp(settings), "compiler")
