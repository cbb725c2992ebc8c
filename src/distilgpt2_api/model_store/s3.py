"""Models in S3: download a prefix, upload a prepared directory, and the Lambda cold-start cache.

boto3 reads credentials, region and endpoint the usual way (AWS_* variables, the Lambda role);
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 point it at an S3-compatible server such as moto or MinIO.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)

from distilgpt2_api.engines import EngineName

from .errors import ModelStoreError, NetworkUnavailableError
from .manifest import (
    CT2_SUBDIR,
    GGUF_NAME,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    engine_files,
    is_prepared,
    verify_file,
)
from .staging import staged_directory

logger = logging.getLogger(__name__)

DOWNLOAD_THREADS = 8
"""Files fetched at once; boto3 also splits each file over 8 MB into parallel ranged GETs."""
_MB = 1 << 20  # Lambda's MB (memory, ephemeral storage) are MiB


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


def cache_path(uri: str, cache_dir: Path, engine: EngineName) -> Path:
    """Where `ensure_model_from_s3` keeps `engine`'s copy of `uri`: one subdirectory per URI and engine."""
    bucket, prefix = parse_s3_uri(uri)
    return cache_dir / f"{hashlib.sha256(f'{bucket}/{prefix}'.encode()).hexdigest()[:16]}-{engine}"


def ensure_model_from_s3(uri: str, cache_dir: Path, *, engine: EngineName) -> Path:
    """Return a local, checksum-verified copy of what `engine` reads of the model at `uri`, downloaded once.

    Meant for Lambda cold starts: the first call of an instance fetches manifest.json, checks that the
    engine's files fit in `cache_dir` (e.g. /tmp), downloads them in parallel and verifies each against
    the manifest; later calls find the published copy and return at once. The copy is published by
    rename, so an existing copy is a verified one.
    """
    target = cache_path(uri, cache_dir, engine)
    if is_prepared(target, engine=engine):
        return target
    bucket, prefix = parse_s3_uri(uri)
    client = _client()
    started = time.monotonic()
    with staged_directory(target) as staging:
        manifest = _fetch_manifest(client, bucket, prefix, staging / MANIFEST_NAME, uri)
        files = engine_files(manifest, engine)
        if engine == "ctranslate2" and f"{CT2_SUBDIR}/model.bin" not in files:
            raise ModelStoreError(
                f"{uri} has no {CT2_SUBDIR}/model.bin (the int8 conversion): upload a directory prepared by "
                "this version of `prepare-model`, or set ENGINE=transformers"
            )
        if engine == "llamacpp" and GGUF_NAME not in files:
            raise ModelStoreError(
                f"{uri} has no {GGUF_NAME} (the llama.cpp engine's weights): upload a directory prepared by "
                "this version of `prepare-model`, or choose another ENGINE"
            )
        check_free_space(sum(entry.size for entry in files.values()), cache_dir, uri=uri, engine=engine)
        _download_verified(client, bucket, prefix, files, staging, uri)
    logger.info(
        "model from %s: %d files, %.1f MB for engine %s in %.2f s",
        uri, len(files), sum(e.size for e in files.values()) / _MB, engine, time.monotonic() - started,
    )  # fmt: skip
    return target


def check_free_space(needed: int, cache_dir: Path, *, uri: str, engine: str) -> None:
    """Raise ModelStoreError naming both sizes unless `needed` bytes fit in `cache_dir`'s filesystem."""
    free = shutil.disk_usage(cache_dir).free
    if needed > free:
        needed_mb, free_mb = math.ceil(needed / _MB), free // _MB
        raise ModelStoreError(
            f"the model at {uri} does not fit in {cache_dir}: the {engine} engine needs {needed_mb} MB, "
            f"only {free_mb} MB is free. Raise the function's ephemeral storage (/tmp) above {needed_mb} MB: "
            "template.yaml parameter EphemeralStorageMB (512-10240)."
        )


def _fetch_manifest(client: Any, bucket: str, prefix: str, dest: Path, uri: str) -> Manifest:
    key = prefix + MANIFEST_NAME
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise _translate(error, f"s3://{bucket}/{prefix}") from error
        body = b""
    except BotoCoreError as error:
        raise _translate(error, f"s3://{bucket}/{prefix}") from error
    try:
        manifest = Manifest.model_validate_json(body)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise ModelStoreError(
            f"{uri} has no valid {MANIFEST_NAME}: upload a directory made by `prepare-model` (with its manifest)"
        ) from error
    dest.write_bytes(body)
    return manifest


def _download_verified(
    client: Any, bucket: str, prefix: str, files: dict[str, FileEntry], dest: Path, uri: str
) -> None:
    """Download `files` into `dest` in parallel, largest first; each is verified as soon as it lands."""
    for name in files:
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise ModelStoreError(f"{uri}: refusing {MANIFEST_NAME} entry that escapes the model directory: {name}")

    def fetch(name: str) -> None:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, prefix + name, str(target))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ModelStoreError(f"{uri}: {name} is listed in {MANIFEST_NAME} but missing") from error
            raise _translate(error, f"s3://{bucket}/{prefix}{name}") from error
        except (BotoCoreError, Boto3Error) as error:  # Boto3Error: the transfer gave up after its retries
            raise _translate(error, f"s3://{bucket}/{prefix}{name}") from error
        except OSError as error:
            raise ModelStoreError(f"{uri}: cannot write {name} to {dest}: {error}") from error
        verify_file(target, name, files[name], origin=uri)

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS, thread_name_prefix="s3-model") as pool:
        futures = [pool.submit(fetch, name) for name in sorted(files, key=lambda n: -files[n].size)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()  # the running ones finish; the staging directory is dropped anyway
            raise
