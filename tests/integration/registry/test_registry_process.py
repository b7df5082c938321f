"""`cag registry serve` as a process: SIGTERM drains in-flight calls, stops consumers and relay, exits 0."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from cag.auth import ALL_TENANTS, Scope
from cag.auth.tokens import issue_token
from cag.infra.ports import free_port
from cag.v1 import registry_pb2, registry_pb2_grpc
from tests.infra_fixtures import FreshDatabase, Infra
from tests.registry_population import make_metadata
from tests.registry_server import message_of, wait_until_serving

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def test_sigterm_drains_and_exits_zero(infra: Infra, fresh_database: FreshDatabase, tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    key_file = tmp_path / "auth.key"
    key_file.write_text(key.hex())
    key_file.chmod(0o600)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "CAG_DATABASE_URL": fresh_database.database_url,
        "CAG_NATS_URL": infra.nats_url,
        "CAG_AUTH_KEY_FILE": str(key_file),
        "CAG_REGISTRY_ADDRESS": address,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cag.cli.main", "registry", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_serving(address, process, START_TIMEOUT_S)
        token = issue_token(key, "service:test", [Scope.ADMIN], [ALL_TENANTS], 600)
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            credentials = (("authorization", f"Bearer {token}"),)
            stub.Register(registry_pb2.RegisterRequest(module=message_of(make_metadata("m-1"), "git://kb/a")),
                          metadata=credentials)  # fmt: skip
            stub.Publish(registry_pb2.PublishRequest(module_id="m-1"), metadata=credentials)
            watch = stub.Watch(registry_pb2.WatchRequest(), metadata=credentials)
            assert next(watch).module_id == "m-1"  # the stream is open: an in-flight call
            process.send_signal(signal.SIGTERM)
            assert list(watch) == []  # it ends cleanly instead of being cut off
            assert watch.code() == grpc.StatusCode.OK
        output, _ = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    log = output.decode(errors="replace")
    assert process.returncode == 0, log
    assert "draining in-flight calls" in log and "registry stopped" in log
    assert "Traceback" not in log
