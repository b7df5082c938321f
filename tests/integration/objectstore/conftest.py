"""An S3 endpoint on loopback: moto's standalone server (a real HTTP server), one per test, bucket created."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from moto.server import ThreadedMotoServer

from cag.infra.ports import free_port
from cag.objectstore import ObjectStore, S3Location
from cag.objectstore.s3 import S3Settings
from tests.integration.cachepool.conftest import registry  # noqa: F401  (the cache pool tests' registry fixture)

BUCKET = "cag-modules"


@dataclass
class S3Endpoint:
    server: ThreadedMotoServer
    settings: S3Settings

    def store(self) -> ObjectStore:
        return ObjectStore(self.settings)

    def location(self, key: str) -> S3Location:
        return S3Location(BUCKET, key)


@pytest.fixture
def s3() -> Iterator[S3Endpoint]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", access_key_id="test", secret_access_key="test"
    )
    endpoint = S3Endpoint(server, settings)
    endpoint.store().create_bucket(BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
