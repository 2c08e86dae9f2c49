"""The store interface and URI helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from htgrpo.config import StorageConfig
from htgrpo.errors import ConfigError

SUPPORTED = "a plain path, file://DIR or s3://BUCKET/PREFIX"
"""The locations a store can be opened at, as error messages name them."""


def s3_key_escapes(key: str) -> bool:
    """Whether an S3 key (or ``BUCKET/PREFIX``) has a ``..`` segment: S3 keys are names, not paths, and servers
    refuse or resolve such keys differently, so a key must never try to leave its prefix."""
    return ".." in str(key).split("/")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("s3", "bucket/a/b"); ``file://d`` and bare paths -> ("file", "d").

    Any other scheme (``gs://``, ``ftp://``), and an ``s3://`` URI with a ``..`` segment, is a ``ConfigError``
    naming the URI, before any request is made.
    """
    uri = str(uri)
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :].strip("/")
        if s3_key_escapes(rest):
            raise ConfigError(
                f"storage URI {uri!r}: an S3 key must not contain a '..' segment (it would leave its prefix)"
            )
        return "s3", rest
    if uri.startswith("file://"):
        return "file", uri[len("file://") :]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(f"storage URI {uri!r}: unsupported scheme {scheme}://; supported: {SUPPORTED}")
    return "file", uri


def join_uri(uri: str, *parts: str) -> str:
    """Append ``/``-separated parts to a URI (no doubled slashes)."""
    out = str(uri).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def local_path(uri: str) -> Path:
    scheme, rest = split_uri(uri)
    if scheme != "file":
        raise ValueError(f"{uri} is not a local path")
    return Path(rest)


class Store(ABC):
    """Objects under one root URI. Keys are relative, ``/``-separated."""

    uri: str

    def child(self, key: str) -> str:
        return join_uri(self.uri, key)

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file to ``key`` (multipart where the store has it)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download ``key`` into a local file."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative to the root) below ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (no error if absent)."""

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)


def open_store(uri: str, storage: StorageConfig | None = None) -> Store:
    """The store rooted at ``uri`` (``file://DIR``, a bare path, or ``s3://BUCKET/PREFIX``)."""
    from htgrpo.storage.local import FileStore
    from htgrpo.storage.s3 import S3Store

    scheme, rest = split_uri(uri)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        return S3Store(bucket, prefix, storage or StorageConfig(uri=str(uri)))
    return FileStore(Path(rest))


__all__ = ["SUPPORTED", "Store", "join_uri", "local_path", "open_store", "s3_key_escapes", "split_uri"]
