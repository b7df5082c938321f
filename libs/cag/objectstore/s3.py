"""An S3-compatible object store (AWS S3, MinIO, moto's server) through boto3.

Keys are checked before any request: a URI naming a key with `..`, a leading `/`, a backslash, control
characters or an empty segment is refused (it could escape the prefix a deployment grants, or name another
object than it seems to). Reads fetch fixed-size byte ranges in parallel straight into the destination file at
their offsets; whoever reads the file verifies its checksum (the module format carries it) — the store itself
is never trusted. An unreachable store is UnavailableError, a missing object KVModuleNotFoundError.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from cag.errors import InvalidFieldError, KVModuleNotFoundError, UnavailableError
from cag.identifiers import is_control
from cag.settings import InfraSettings

RANGE_BYTES = 8 << 20  # one ranged GET
PARALLEL_RANGES = 4
MAX_KEY = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def parent(self) -> S3Location:
        """The prefix this object lies under (its key up to the last '/')."""
        return S3Location(self.bucket, self.key.rpartition("/")[0])

    def child(self, name: str) -> S3Location:
        """The object `name` under this prefix."""
        prefix = self.key.strip("/")
        return parse_s3_uri(f"s3://{self.bucket}/{prefix}/{name}" if prefix else f"s3://{self.bucket}/{name}")


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3_uri(uri: str, field: str = "storage_uri") -> S3Location:
    """The bucket and key of an s3:// URI; InvalidFieldError naming `field` when it is not a safe one."""
    if any(is_control(c) for c in uri):  # urlparse would silently drop tabs and newlines
        raise InvalidFieldError(field, "the URI holds control characters")
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        raise InvalidFieldError(field, f"{uri[:80]!r} is not an s3:// URI")
    bucket, key = parsed.netloc, parsed.path.removeprefix("/")
    if not _BUCKET.match(bucket):
        raise InvalidFieldError(field, f"{bucket!r} is not a valid bucket name")
    if parsed.query or parsed.fragment or parsed.params:
        raise InvalidFieldError(field, "an s3:// URI carries no query or fragment")
    if not key or len(key) > MAX_KEY:
        raise InvalidFieldError(field, f"the object key must have 1 to {MAX_KEY} characters")
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise InvalidFieldError(field, f"object key {key!r} has empty, '.' or '..' segments or a backslash")
    return S3Location(bucket, key)


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    endpoint_url: str | None
    region: str | None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, infra: InfraSettings) -> S3Settings:
        """From CAG_S3_* (a process's own CAG_<SERVICE>_S3_* first)."""
        return cls(
            endpoint_url=infra.s3_endpoint_url,
            region=infra.s3_region,
            access_key_id=infra.s3_access_key_id,
            secret_access_key=infra.s3_secret_access_key,
        )


class ObjectStore:
    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self._client: Any = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region or "us-east-1",
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=30),
        )

    def upload(self, path: Path, location: S3Location) -> None:
        with _errors(location.uri):
            self._client.upload_file(str(path), location.bucket, location.key)

    def list_under(self, prefix: S3Location, limit: int) -> list[tuple[str, int]]:
        """(key, size) of the objects whose keys start with `prefix`'s key, in key order: at most `limit` + 1 (one
        more says there are too many)."""
        found: list[tuple[str, int]] = []
        with _errors(prefix.uri):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key)
            for page in pages:
                found += [(str(o["Key"]), int(o["Size"])) for o in page.get("Contents", [])]
                if len(found) > limit:
                    return found[: limit + 1]
        return found

    def size(self, location: S3Location) -> int:
        with _errors(location.uri):
            return int(self._client.head_object(Bucket=location.bucket, Key=location.key)["ContentLength"])

    def download_into(self, location: S3Location, target: IO[bytes]) -> int:
        """Every byte of the object into `target` (a real file), range by range in parallel; its size."""
        size = self.size(location)
        fd = target.fileno()
        os.ftruncate(fd, size)

        def fetch(start: int) -> None:
            end = min(start + RANGE_BYTES, size) - 1
            with _errors(location.uri):
                body = self._client.get_object(Bucket=location.bucket, Key=location.key, Range=f"bytes={start}-{end}")
                data = body["Body"].read()
            if len(data) != end - start + 1:
                raise UnavailableError(f"{location.uri}: range {start}-{end} came back with {len(data)} bytes")
            os.pwrite(fd, data, start)

        with ThreadPoolExecutor(PARALLEL_RANGES, thread_name_prefix="s3-range") as pool:
            list(pool.map(fetch, range(0, size, RANGE_BYTES)))
        return size


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """botocore's errors as the platform's: a missing object, else an unavailable store."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise KVModuleNotFoundError(f"{uri} does not exist in the object store") from None
        raise UnavailableError(f"object store refused {uri}: {code}") from None
    except (BotoCoreError, OSError) as e:
        raise UnavailableError(f"object store unreachable for {uri}: {e}") from None
