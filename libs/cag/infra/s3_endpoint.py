"""A local S3-compatible endpoint for development and tests: moto's standalone server on loopback, with the
platform's buckets created before it reports ready.

`python -m cag.infra.s3_endpoint --port P --bucket B` runs until SIGTERM or SIGINT; `cag platform up` runs it
beside the services and the object-store tests start it the same way. Its own process: moto's server imports
Flask, whose context proxies break the scan vLLM runs over every loaded module when it starts an engine.

It is a stand-in, not a store: it keeps objects in memory (a restart loses them) and accepts any credentials,
so it listens on loopback only. Deployments point `CAG_S3_*` at a real S3-compatible store.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from cag.infra.errors import InfraError
from cag.infra.ports import LOOPBACK

# moto accepts any keys; clients still have to sign their requests with some.
LOCAL_ACCESS_KEY_ID = "local"
LOCAL_SECRET_ACCESS_KEY = "local-secret"
LOCAL_REGION = "us-east-1"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, kw_only=True)
class LocalS3:
    """Where a local endpoint listens and which buckets it holds."""

    port: int
    buckets: tuple[str, ...]
    host: str = LOOPBACK
    region: str = LOCAL_REGION
    access_key_id: str = field(default=LOCAL_ACCESS_KEY_ID, repr=False)
    secret_access_key: str = field(default=LOCAL_SECRET_ACCESS_KEY, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        buckets = [arg for bucket in self.buckets for arg in ("--bucket", bucket)]
        return [sys.executable, "-m", "cag.infra.s3_endpoint", "--host", self.host, "--port", str(self.port), *buckets]

    def env(self, prefix: str = "CAG_") -> dict[str, str]:
        """The settings (`CAG_S3_*`, or a service's own `CAG_<SERVICE>_S3_*`) that point a client here."""
        return {
            f"{prefix}S3_ENDPOINT_URL": self.url,
            f"{prefix}S3_REGION": self.region,
            f"{prefix}S3_ACCESS_KEY_ID": self.access_key_id,
            f"{prefix}S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def is_ready(self) -> bool:
        """Every bucket exists (the endpoint creates them before it answers for them)."""
        return all(_bucket_exists(f"{self.url}/{bucket}") for bucket in self.buckets)

    def start(self) -> subprocess.Popen[bytes]:
        """The endpoint as a child process, returned once its buckets exist; InfraError when it does not come up."""
        # A file, not a pipe: nobody reads a pipe once the endpoint runs, and a full one would block it.
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=stderr)
            self._wait_ready(process, stderr)
        return process

    def _wait_ready(self, process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.is_ready():
            if process.poll() is not None:
                stderr.seek(0)
                tail = stderr.read().decode(errors="replace")[-2000:]
                raise InfraError(f"the local S3 endpoint exited with {process.returncode}: {tail}")
            if time.monotonic() > deadline:
                process.kill()
                raise InfraError(f"the local S3 endpoint did not answer on {self.url} within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)


def _bucket_exists(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=1):
            return True
    except (urllib.error.URLError, OSError):  # HTTPError (404: not yet created) is a URLError
        return False


def serve(endpoint: LocalS3) -> None:
    """Run moto's server with `endpoint`'s buckets until SIGTERM or SIGINT."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=endpoint.host, port=endpoint.port, verbose=False)
    server.start()
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint.url,
            region_name=endpoint.region,
            aws_access_key_id=endpoint.access_key_id,
            aws_secret_access_key=endpoint.secret_access_key,
        )
        for bucket in endpoint.buckets:
            client.create_bucket(Bucket=bucket)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cag.infra.s3_endpoint", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args(argv)
    # Block the signals before any thread starts, so that sigwait (not a default handler) receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    serve(LocalS3(port=args.port, buckets=tuple(args.bucket), host=args.host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
