"""s3:// URIs are checked before any request: nothing outside a plain bucket/key pair gets through."""

from __future__ import annotations

import pytest

from cag.errors import InvalidFieldError
from cag.objectstore import S3Location, parse_s3_uri


def test_a_plain_uri_gives_its_bucket_and_key() -> None:
    assert parse_s3_uri("s3://cag-modules/acme/billing-1.safetensors") == S3Location(
        "cag-modules", "acme/billing-1.safetensors"
    )
    assert S3Location("cag-modules", "modules/").child("m.safetensors").uri == "s3://cag-modules/modules/m.safetensors"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://cag-modules/../secrets", "s3://cag-modules/a/../../b", "s3://cag-modules/a//b", "s3://cag-modules/./a",
        "s3://cag-modules/a\\b", "s3://cag-modules/a\x00b", "s3://cag-modules/a\nb", "s3://cag-modules/",
        "s3://Bad_Bucket/a", "s3://cag-modules/a?versionId=1", "file:///etc/passwd", "s3://cag-modules/a/..",
        "s3://cag-modules/" + "k" * 1025,
    ],
)  # fmt: skip
def test_keys_that_could_escape_or_mislead_are_refused_naming_the_field(uri: str) -> None:
    with pytest.raises(InvalidFieldError, match="storage_uri"):
        parse_s3_uri(uri)
