"""Models in S3: download a prefix, upload a prepared directory, and the Lambda cold-start cache.

boto3 reads credentials, region and endpoint the usual way (AWS_* variables, the Lambda role);
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 point it at an S3-compatible server such as moto or MinIO.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)

from .errors import ModelStoreError, NetworkUnavailableError
from .manifest import MANIFEST_NAME, is_prepared, read_manifest, verify_checksums
from .staging import staged_directory


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); the prefix is "" for a whole bucket."""
    if not uri.startswith("s3://"):
        raise ModelStoreError(f"not an S3 URI (expected s3://bucket/prefix/): {uri!r}")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ModelStoreError(f"S3 URI {uri!r} names no bucket")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _client() -> Any:
    return boto3.client("s3")


def _translate(error: Exception, what: str) -> ModelStoreError:
    """One clear ModelStoreError for the ways boto3 fails."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return ModelStoreError(f"{what}: the bucket does not exist")
        if code in ("NoSuchKey", "404"):
            return ModelStoreError(f"{what}: no such key")
        if code in ("AccessDenied", "403"):
            return ModelStoreError(f"{what}: access denied (check the credentials and the bucket policy)")
        return ModelStoreError(f"{what}: {code or error}")
    if isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
        return NetworkUnavailableError(f"{what}: cannot reach the S3 endpoint ({error})")
    if isinstance(error, NoCredentialsError):
        return ModelStoreError(f"{what}: no AWS credentials found")
    return ModelStoreError(f"{what}: {error}")


def download_prefix(uri: str, dest: Path) -> list[str]:
    """Download every object under the URI's prefix into `dest`, keeping relative paths; return them."""
    bucket, prefix = parse_s3_uri(uri)
    client = _client()
    names: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key: str = item["Key"]
                relative = key[len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue  # "folder" marker objects
                if ".." in PurePosixPath(relative).parts:
                    raise ModelStoreError(f"refusing S3 key that escapes the model directory: s3://{bucket}/{key}")
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(target))
                names.append(relative)
    except (ClientError, BotoCoreError) as error:
        raise _translate(error, f"s3://{bucket}/{prefix}") from error
    if not names:
        raise ModelStoreError(f"no objects under s3://{bucket}/{prefix} (wrong prefix, or nothing uploaded yet)")
    return names


def upload_directory(source: Path, uri: str) -> None:
    """Upload every file of a prepared model directory under the URI's prefix (manifest.json last)."""
    bucket, prefix = parse_s3_uri(uri)
    client = _client()
    files = sorted(p for p in source.rglob("*") if p.is_file())
    # The manifest goes last, so a reader never sees a manifest whose files are not all there yet.
    files.sort(key=lambda p: p.relative_to(source).as_posix() == MANIFEST_NAME)
    try:
        for path in files:
            client.upload_file(str(path), bucket, prefix + path.relative_to(source).as_posix())
    except (ClientError, BotoCoreError) as error:
        raise _translate(error, f"s3://{bucket}/{prefix}") from error


def cache_path(uri: str, cache_dir: Path) -> Path:
    """Where `ensure_model_from_s3` keeps the copy of `uri`: one subdirectory per URI."""
    bucket, prefix = parse_s3_uri(uri)
    return cache_dir / hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]


def ensure_model_from_s3(uri: str, cache_dir: Path) -> Path:
    """Return a local, checksum-verified copy of the prepared model at `uri`, downloading it at most once.

    Meant for Lambda cold starts: the first call of an instance downloads into `cache_dir` (e.g. /tmp),
    later calls find the published copy and return at once. The copy is verified against manifest.json
    before it is published, and published by rename, so an existing copy is a verified one.
    """
    target = cache_path(uri, cache_dir)
    if is_prepared(target):
        return target
    with staged_directory(target) as staging:
        download_prefix(uri, staging)
        manifest = read_manifest(staging)
        if manifest is None:
            raise ModelStoreError(
                f"{uri} has no valid {MANIFEST_NAME}: upload a directory made by `prepare-model` (with its manifest)"
            )
        verify_checksums(staging, manifest, origin=uri)
    return target
