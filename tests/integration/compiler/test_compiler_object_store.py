"""A compiler with an object store uploads what it builds and registers the s3:// URI, and reads sources and
parents from it (moto's real server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from cag.objectstore import parse_s3_uri
from tests.infra_fixtures import Infra
from tests.integration.compiler.conftest import ACME, PUBLIC, Services
from tests.integration.compiler.test_compiler_service import compile_all
from tests.integration.objectstore.conftest import BUCKET, S3Endpoint, s3  # noqa: F401  (the S3 endpoint fixture)


def compiler_infra(s3: S3Endpoint) -> dict[str, str]:  # noqa: F811
    """The infra settings (CAG_S3_*) that point at the endpoint."""
    endpoint = s3.settings
    return {
        "s3_endpoint_url": str(endpoint.endpoint_url), "s3_region": str(endpoint.region),
        "s3_access_key_id": str(endpoint.access_key_id), "s3_secret_access_key": str(endpoint.secret_access_key),
    }  # fmt: skip


@pytest.fixture
def compiler_extra(s3: S3Endpoint) -> tuple[dict[str, str], dict[str, str]]:  # noqa: F811
    return compiler_infra(s3), {"object_store_prefix": f"s3://{BUCKET}/modules/"}


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


def upload_folder(s3: S3Endpoint, folder: Path, prefix: str) -> str:  # noqa: F811
    """Every file under `folder` as an object under `prefix`; the prefix's s3:// URI."""
    store = s3.store()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.upload(path, s3.location(f"{prefix}/{path.relative_to(folder).as_posix()}"))
    return f"s3://{BUCKET}/{prefix}"


async def test_a_source_and_a_parent_in_the_object_store_compile_like_local_ones(
    services: Services,
    s3: S3Endpoint,  # noqa: F811
) -> None:
    local = (await compile_all(services, services.request("shared", PUBLIC)))[-1].finished
    shared_uri = upload_folder(s3, services.knowledge / "shared", "sources/shared")
    remote = (await compile_all(services, services.request("shared", PUBLIC, source_uri=shared_uri)))[-1].finished
    assert remote.source_uri == shared_uri and remote.storage_uri.startswith(f"s3://{BUCKET}/modules/")
    assert remote.source_checksum == local.source_checksum  # the same canonical content, wherever it was read
    assert remote.context_checksum == local.context_checksum
    billing_uri = upload_folder(s3, services.knowledge / "billing", "sources/billing")
    # The parent is read back from the object store (its storage_uri is an s3:// one) and verified as it restores.
    child = (
        await compile_all(
            services, services.request("billing", ACME, source_uri=billing_uri, parent_module_ids=[remote.module_id])
        )
    )[-1].finished
    assert child.parent_id == remote.module_id
    assert child.source_uri == billing_uri


async def test_an_empty_object_store_prefix_is_refused_naming_the_source(
    services: Services,
    s3: S3Endpoint,  # noqa: F811
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await compile_all(services, services.request("shared", PUBLIC, source_uri=f"s3://{BUCKET}/sources/none"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "source_uri" in (refused.value.details() or "")
    assert "holds no objects" in (refused.value.details() or "")


async def test_sources_sync_reads_object_store_sources_and_reports_an_edited_one(
    services: Services,
    s3: S3Endpoint,  # noqa: F811
    infra: Infra,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cag.cli.main import main

    uri = upload_folder(s3, services.knowledge / "shared", "sources/shared")
    await compile_all(services, services.request("shared", PUBLIC, source_uri=uri))
    monkeypatch.setenv("CAG_AUTH_KEY_FILE", str(services.key_file))
    monkeypatch.delenv("CAG_TOKEN", raising=False)
    for name, value in compiler_infra(s3).items():
        monkeypatch.setenv(f"CAG_{name.upper()}", value)
    argv = ["sources", "sync", "--registry", services.registry_address, "--nats", infra.nats_url, "--dry-run"]
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    assert "0 changed, 0 not readable" in capsys.readouterr().out
    edited = services.knowledge / "shared" / "edited.md"
    edited.write_text("# Edited\n\nA new paragraph the module does not hold.\n")
    s3.store().upload(edited, s3.location("sources/shared/edited.md"))
    assert await asyncio.to_thread(main, argv) == 0
    assert "1 changed, 0 not readable" in capsys.readouterr().out
