"""``s3://`` store through boto3: any S3-compatible endpoint, multipart transfers, retries with backoff.

Every request is retried ``storage.retries`` times on connection errors, timeouts, 5xx answers and throttling,
waiting ``backoff_s`` doubled each time (with jitter, capped at ``max_backoff_s``). Errors that a retry cannot fix
(wrong credentials, a missing bucket, access denied) fail at once. Either way the caller gets a ``StorageError``
that names the endpoint, the object and the cause.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from htgrpo.config import StorageConfig
from htgrpo.errors import ConfigError, StorageError
from htgrpo.storage.base import Store, s3_key_escapes

T = TypeVar("T")
MB = 1 << 20
_FATAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AllAccessDisabled",
}


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _retryable(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # S3UploadFailedError wraps the ClientError
        seen.add(id(e))
        code = _error_code(e)
        if code in _FATAL_CODES or code in ("NoSuchKey", "404", "NotFound"):
            return False
        e = e.__cause__ or e.__context__
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or _error_code(exc) in ("SlowDown", "RequestTimeout")
    return isinstance(exc, BotoCoreError | OSError) or type(exc).__name__ == "S3UploadFailedError"


class S3Store(Store):
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    """How retries wait (tests replace it)."""

    def __init__(self, bucket: str, prefix: str, storage: StorageConfig) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        if s3_key_escapes(prefix):
            raise ConfigError(
                f"storage URI s3://{bucket}/{prefix.strip('/')}: an S3 key must not contain a '..' segment "
                "(it would leave its prefix)"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.storage = storage
        self.uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.endpoint = (
            storage.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=storage.region,
            config=BotoConfig(
                connect_timeout=storage.connect_timeout_s,
                read_timeout=storage.read_timeout_s,
                retries={"total_max_attempts": 1, "mode": "standard"},  # our own loop retries, with backoff
                s3={"addressing_style": storage.addressing_style},
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=storage.multipart_threshold_mb * MB,
            multipart_chunksize=storage.multipart_chunk_mb * MB,
            max_concurrency=storage.max_concurrency,
        )

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        if s3_key_escapes(key):  # refused here: a server answers 400 (or resolves the '..' itself)
            raise ConfigError(
                f"S3 {what} of {self.child(key)} refused before any request: the key {key!r} has a '..' "
                "segment (it would leave the store's prefix)"
            )
        s = self.storage
        attempts = s.retries + 1
        start = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised as StorageError
                if not _retryable(exc):
                    code = _error_code(exc)
                    if code in ("NoSuchKey", "404", "NotFound"):
                        raise FileNotFoundError(f"{self.child(key)} does not exist") from None
                    raise StorageError(
                        f"S3 {what} of {self.child(key)} failed at endpoint {self.endpoint or 'AWS'}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                if attempt == attempts:
                    raise StorageError(
                        f"S3 {what} of {self.child(key)} failed after {attempts} attempts over "
                        f"{time.monotonic() - start:.1f} s (endpoint {self.endpoint or 'AWS'} unreachable or "
                        f"failing): {type(exc).__name__}: {exc}"
                    ) from exc
                wait = min(s.max_backoff_s, s.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                self.sleep(wait)
        raise AssertionError("unreachable")

    def put_file(self, key: str, path: str | Path) -> None:
        self._call(
            "upload",
            key,
            lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer),
        )

    def get_file(self, key: str, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "download",
            key,
            lambda: self.client.download_file(self.bucket, self._key(key), str(path), Config=self.transfer),
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            "put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        )

    def get_bytes(self, key: str) -> bytes:
        return self._call(
            "get",
            key,
            lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read(),
        )

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        if full and prefix and not prefix.endswith("/"):
            full += "/"
        root = f"{self.prefix}/" if self.prefix else ""

        def run() -> list[str]:
            keys = []
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                keys += [o["Key"][len(root) :] for o in page.get("Contents", [])]
            return sorted(keys)

        return self._call("list", prefix, run)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))
