"""The embedded servers are not open to every local user: Postgres wants its password, NATS its users,
and each NATS identity may publish only its own events. Against real servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, StreamConfig

from cag.infra.errors import InfraError
from cag.infra.nats import NatsConfig, NatsServer
from cag.infra.ports import free_ports
from cag.infra.postgres import PostgresConfig, PostgresServer
from tests.infra_fixtures import Infra, reachable_tmp_dir

OUTCOME_TIMEOUT_S = 5.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _own_postgres(infra: Infra) -> PostgresServer:
    if infra.postgres is None:
        pytest.skip("Postgres comes from CAG_DATABASE_URL: its authentication is not ours to check")
    return infra.postgres


def test_postgres_refuses_a_wrong_or_missing_password(infra: Infra) -> None:
    postgres = _own_postgres(infra)
    password = postgres.config.password()
    assert password and password in infra.database.libpq_url
    with psycopg.connect(infra.database.libpq_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    port = postgres.config.port
    for url in (
        infra.database.libpq_url.replace(password, "not-the-password"),
        f"postgresql://postgres@127.0.0.1:{port}/cag",
    ):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed|no password supplied"):
            psycopg.connect(url, connect_timeout=5)


def test_postgres_secret_and_socket_directory_are_private(infra: Infra) -> None:
    config = _own_postgres(infra).config
    assert _mode(config.password_file) == 0o600
    assert _mode(config.socket_dir) & 0o077 == 0  # not world- (nor group-) writable or searchable
    assert _mode(config.base_dir) & 0o077 == 0
    # The socket itself asks for the password too.
    socket_url = f"postgresql://postgres@/cag?host={config.socket_dir}&port={config.port}"
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(socket_url, connect_timeout=5)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    path = reachable_tmp_dir("cag-infra-auth-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_postgres_data_initialised_without_a_password_gives_one_line_to_act_on(scratch_dir: Path) -> None:
    [port] = free_ports(1)
    server = PostgresServer(PostgresConfig(port=port, base_dir=scratch_dir / "postgres", fast=True))
    server.start()
    server.stop()
    server.config.password_file.unlink()  # what a data directory made before passwords looks like
    with pytest.raises(InfraError) as raised:
        server.start()
    message = str(raised.value)
    assert "\n" not in message
    assert "without a password" in message and "cag infra down --purge" in message
    assert server.pid is None


# --- NATS: a server of the test's own, so its streams and violations disturb no other test ---


@pytest.fixture
async def secured_nats(scratch_dir: Path) -> AsyncIterator[NatsServer]:
    port, monitor_port = free_ports(2)
    server = NatsServer(NatsConfig(port=port, monitor_port=monitor_port, base_dir=scratch_dir / "nats"))
    server.start()
    try:
        nc = await nats.connect(server.url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="cag", subjects=["cag.>"]))
        finally:
            await nc.close()
        yield server
    finally:
        server.stop()


class Client:
    """One identity's connection; the server's permission errors arrive on `errors`."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.nc: NatsClient | None = None

    async def connect(self, url: str) -> Client:
        async def on_error(e: Exception) -> None:
            await self.errors.put(e)

        self.nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=on_error)
        return self

    async def outcome(self, action: Awaitable[object]) -> str:
        """'ok' when `action` completes (a JetStream ack, an API answer), 'denied' when the server reports
        a permissions violation first; whichever the server says, nothing is waited out."""
        done_task = asyncio.ensure_future(action)
        error_task = asyncio.ensure_future(self.errors.get())
        done, _ = await asyncio.wait({done_task, error_task}, timeout=OUTCOME_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        for task in (done_task, error_task):
            task.cancel()
        if error_task in done:
            error = error_task.result()
            assert "permissions violation" in str(error).lower(), error
            return "denied"
        assert done_task in done, "neither an answer nor a permissions violation"
        done_task.result()
        return "ok"

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def _client(server: NatsServer, identity: str) -> Client:
    return await Client().connect(server.url_for(identity))


async def test_nats_refuses_anonymous_and_unknown_users(secured_nats: NatsServer) -> None:
    for url in (secured_nats.config.url, secured_nats.config.url_for("registry", "not-the-password")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=1)
    assert secured_nats.is_healthy()  # the monitor endpoint needs no credentials


def test_nats_secrets_are_private(secured_nats: NatsServer) -> None:
    config = secured_nats.config
    assert _mode(config.config_file) == 0o600
    assert _mode(config.credentials_file) == 0o600
    assert _mode(config.base_dir) == 0o700


SUBJECTS = [
    "cag.module.published", "cag.module.invalidated", "cag.module.expired", "cag.module.loaded",
    "cag.module.evicted", "cag.module.compiled", "cag.compile.requested", "cag.route.decided",
    "cag.fallback.answered", "cag.candidate.proposed", "cag.invalidate.source", "cag.dlq.cag.invalidate.source",
]  # fmt: skip
# Who may publish what: the matrix the platform promises (spelled out, not derived from the code).
ALLOWED = {
    "registry": {"cag.module.published", "cag.module.invalidated", "cag.module.expired"},
    "cachepool": {"cag.module.loaded", "cag.module.evicted"},
    "compiler": {"cag.module.compiled", "cag.compile.requested"},
    "router": {"cag.route.decided"},
    "fallback": {"cag.fallback.answered", "cag.candidate.proposed"},
    "ops": {"cag.invalidate.source"},
    "monitor": set(),
    "admin": set(SUBJECTS),
}
DEAD_LETTER = "cag.dlq.cag.invalidate.source"
SERVICES = {"registry", "cachepool", "compiler", "router", "fallback"}


@pytest.mark.parametrize("identity", sorted(ALLOWED))
async def test_each_identity_publishes_only_its_own_events(secured_nats: NatsServer, identity: str) -> None:
    client = await _client(secured_nats, identity)
    assert client.nc is not None
    js = client.nc.jetstream()
    try:
        outcomes = {subject: await client.outcome(js.publish(subject, b"{}", timeout=2)) for subject in SUBJECTS}
    finally:
        await client.close()
    allowed = ALLOWED[identity] | ({DEAD_LETTER} if identity in SERVICES else set())
    assert {s for s, o in outcomes.items() if o == "ok"} == allowed


async def test_services_cannot_change_or_delete_the_stream(secured_nats: NatsServer) -> None:
    client = await _client(secured_nats, "router")
    assert client.nc is not None
    js = client.nc.jetstream()
    try:
        assert await client.outcome(js.stream_info("cag")) == "ok"
        assert await client.outcome(js.update_stream(StreamConfig(name="cag", subjects=["cag.>", "x.>"]))) == "denied"
        assert await client.outcome(js.delete_stream("cag")) == "denied"
        assert await client.outcome(js.purge_stream("cag")) == "denied"
    finally:
        await client.close()


async def test_ops_cannot_consume(secured_nats: NatsServer) -> None:
    client = await _client(secured_nats, "ops")
    assert client.nc is not None
    try:
        pull = client.nc.jetstream().pull_subscribe("cag.module.>", durable="ops-snoop", stream="cag")
        assert await client.outcome(pull) == "denied"
    finally:
        await client.close()


async def test_monitor_reads_events_through_an_ephemeral_push_consumer(secured_nats: NatsServer) -> None:
    admin = await _client(secured_nats, "admin")
    monitor = await _client(secured_nats, "monitor")
    assert admin.nc is not None and monitor.nc is not None
    try:
        await admin.nc.jetstream().publish("cag.module.invalidated", b"module-1")
        inbox = monitor.nc.new_inbox()
        delivered = await monitor.nc.subscribe(inbox)
        config = ConsumerConfig(deliver_subject=inbox, ack_policy=JsAckPolicy.NONE, filter_subject="cag.module.>")
        info = await monitor.nc.jetstream().add_consumer("cag", config)
        assert info.num_pending == 1
        msg = await delivered.next_msg(timeout=OUTCOME_TIMEOUT_S)
        assert msg.data == b"module-1" and msg.metadata.num_pending == 0
    finally:
        await monitor.close()
        await admin.close()


async def test_monitor_can_neither_publish_nor_touch_the_services_durables(secured_nats: NatsServer) -> None:
    admin = await _client(secured_nats, "admin")
    monitor = await _client(secured_nats, "monitor")
    assert admin.nc is not None and monitor.nc is not None
    service_durable = ConsumerConfig(durable_name="registry-watched", filter_subject="cag.invalidate.>",
                                     ack_policy=JsAckPolicy.EXPLICIT)  # fmt: skip
    await admin.nc.jetstream().add_consumer("cag", service_durable)
    js = monitor.nc.jetstream()
    try:
        assert await monitor.outcome(js.publish("cag.invalidate.source", b"{}", timeout=2)) == "denied"
        assert await monitor.outcome(js.pull_subscribe("cag.>", durable="monitor-snoop", stream="cag")) == "denied"
        next_message = monitor.nc.request("$JS.API.CONSUMER.MSG.NEXT.cag.registry-watched", b"1", timeout=2)
        assert await monitor.outcome(next_message) == "denied"
        assert await monitor.outcome(js.delete_consumer("cag", "registry-watched")) == "denied"
        # On the one subject it may use, the server refuses a durable's name: no service's consumer can be changed.
        for field in ("durable_name", "name"):
            request = {"stream_name": "cag", "config": {field: "registry-watched", "filter_subject": "cag.>",
                                                        "deliver_subject": monitor.nc.new_inbox()}}  # fmt: skip
            reply = await monitor.nc.request("$JS.API.CONSUMER.CREATE.cag", json.dumps(request).encode(), timeout=2)
            assert "error" in json.loads(reply.data), reply.data
        kept = await admin.nc.jetstream().consumer_info("cag", "registry-watched")
        assert kept.config.filter_subject == "cag.invalidate.>" and kept.config.deliver_subject is None
    finally:
        await monitor.close()
        await admin.close()


async def test_a_service_consumes_with_a_durable_pull_consumer_and_acks(secured_nats: NatsServer) -> None:
    admin = await _client(secured_nats, "admin")
    cachepool = await _client(secured_nats, "cachepool")
    assert admin.nc is not None and cachepool.nc is not None
    try:
        await admin.nc.jetstream().publish("cag.module.published", b"module-1")
        sub = await cachepool.nc.jetstream().pull_subscribe("cag.module.published", durable="cachepool-m", stream="cag")
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.data == b"module-1"
        await msg.ack_sync(timeout=5)  # the server confirms the ack: `$JS.ACK.cag.>` is allowed
        info = await cachepool.nc.jetstream().consumer_info("cag", "cachepool-m")
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await cachepool.close()
        await admin.close()


async def test_registry_and_ops_with_faststream_as_the_services_use_it(scratch_dir: Path) -> None:
    """The registry declares the stream, consumes `cag.invalidate.*` and publishes module events; ops
    publishes a trigger and gets JetStream's ack. No permission is missing anywhere on the way."""
    port, monitor_port = free_ports(2)
    server = NatsServer(NatsConfig(port=port, monitor_port=monitor_port, base_dir=scratch_dir / "nats"))
    server.start()
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    received: asyncio.Queue[bytes] = asyncio.Queue()
    registry = NatsBroker(server.url_for("registry"), error_cb=on_error)
    stream = JStream(name="cag", subjects=["cag.>"], declare=True, duplicate_window=600.0)

    @registry.subscriber("cag.invalidate.*", stream=stream, durable="registry-invalidations",
                         pull_sub=PullSub(batch_size=1, timeout=1.0), ack_policy=AckPolicy.NACK_ON_ERROR)  # fmt: skip
    async def on_invalidation(body: bytes) -> None:
        await received.put(body)

    ops = NatsBroker(server.url_for("ops"), error_cb=on_error)
    try:
        await registry.start()
        ack = await registry.publish(b"{}", "cag.module.invalidated", headers={"Nats-Msg-Id": "m-1"}, stream="cag",
                                     timeout=5)  # fmt: skip
        assert ack is not None and ack.stream == "cag"
        await ops.connect()
        ack = await ops.publish(b"trigger", "cag.invalidate.source", headers={"Nats-Msg-Id": "t-1"}, stream="cag",
                                timeout=5)  # fmt: skip
        assert ack is not None and ack.stream == "cag" and not ack.duplicate
        assert await asyncio.wait_for(received.get(), OUTCOME_TIMEOUT_S) == b"trigger"
    finally:
        await ops.stop()
        await registry.stop()
        server.stop()
    assert errors == []
    assert "Violation" not in server.config.log_file.read_text()
