"""An S3 endpoint on loopback: the platform's local endpoint (moto's standalone server in a process of its own),
one per test, bucket created."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cag.infra.ports import free_port
from cag.infra.s3_endpoint import LocalS3
from cag.objectstore import ObjectStore, S3Location
from cag.objectstore.s3 import S3Settings
from tests.integration.cachepool.conftest import registry  # noqa: F401  (the cache pool tests' registry fixture)

BUCKET = "cag-modules"


@dataclass
class S3Endpoint:
    process: subprocess.Popen[bytes]
    settings: S3Settings

    def store(self) -> ObjectStore:
        return ObjectStore(self.settings)

    def location(self, key: str) -> S3Location:
        return S3Location(BUCKET, key)

    def stop(self) -> None:
        """An outage: the endpoint's process is gone."""
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def s3() -> Iterator[S3Endpoint]:
    local = LocalS3(port=free_port(), buckets=(BUCKET,))
    process = local.start()
    endpoint = S3Endpoint(
        process,
        S3Settings(
            endpoint_url=local.url,
            region=local.region,
            access_key_id=local.access_key_id,
            secret_access_key=local.secret_access_key,
        ),
    )
    try:
        yield endpoint
    finally:
        if process.poll() is None:
            endpoint.stop()
