"""Module files in an S3-compatible object store: s3:// URIs checked at the edge, uploads, ranged parallel reads."""

from cag.objectstore.s3 import ObjectStore, S3Location, is_s3_uri, parse_s3_uri

__all__ = ["ObjectStore", "S3Location", "is_s3_uri", "parse_s3_uri"]
