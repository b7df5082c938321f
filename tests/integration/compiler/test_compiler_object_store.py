"""A compiler with an object store uploads what it builds and registers the s3:// URI (moto's real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cag.objectstore import parse_s3_uri
from tests.integration.compiler.conftest import PUBLIC, Services
from tests.integration.compiler.test_compiler_service import compile_all
from tests.integration.objectstore.conftest import BUCKET, S3Endpoint, s3  # noqa: F401  (the S3 endpoint fixture)


@pytest.fixture
def compiler_extra(s3: S3Endpoint) -> tuple[dict[str, str], dict[str, str]]:  # noqa: F811
    endpoint = s3.settings
    infra = {
        "s3_endpoint_url": str(endpoint.endpoint_url), "s3_region": str(endpoint.region),
        "s3_access_key_id": str(endpoint.access_key_id), "s3_secret_access_key": str(endpoint.secret_access_key),
    }  # fmt: skip
    return infra, {"object_store_prefix": f"s3://{BUCKET}/modules/"}


async def test_compiled_modules_are_uploaded_and_registered_by_their_s3_uri(
    services: Services,
    s3: S3Endpoint,  # noqa: F811
    tmp_path: Path,
) -> None:
    module = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    assert module.storage_uri == f"s3://{BUCKET}/modules/{module.module_id}.safetensors"
    uploaded = tmp_path / "uploaded.safetensors"
    with uploaded.open("wb") as target:
        s3.store().download_into(parse_s3_uri(module.storage_uri), target)
    local = next((tmp_path / "modules").glob(f"{module.module_id}.safetensors"))
    assert uploaded.read_bytes() == local.read_bytes()
