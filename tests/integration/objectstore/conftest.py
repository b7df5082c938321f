"""An S3 endpoint on loopback: moto's standalone server in a process of its own, one per test, bucket created.

A process, not moto in this one: moto's server imports Flask, whose context proxies break the scan vLLM runs
over every loaded module when it starts an engine (later tests of this session start vLLM engines).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cag.infra.ports import free_port
from cag.objectstore import ObjectStore, S3Location
from cag.objectstore.s3 import S3Settings
from tests.integration.cachepool.conftest import registry  # noqa: F401  (the cache pool tests' registry fixture)

BUCKET = "cag-modules"
START_TIMEOUT_S = 30.0


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


def _wait_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {START_TIMEOUT_S:g} s")


@pytest.fixture
def s3() -> Iterator[S3Endpoint]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    endpoint = S3Endpoint(
        process, S3Settings(endpoint_url=url, region="us-east-1", access_key_id="test", secret_access_key="test")
    )
    try:
        _wait_serving(url, process)
        endpoint.store().create_bucket(BUCKET)
        yield endpoint
    finally:
        if process.poll() is None:
            endpoint.stop()
