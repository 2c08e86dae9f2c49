"""Checkpoints in a store: upload with the manifest last, download with every file verified.

A checkpoint in a store is the set of objects ``<uri>/<file>`` listed in ``<uri>/manifest.json`` (sizes and
sha256). The manifest is uploaded last, and deleted first when a checkpoint of the same name is replaced, so an
interrupted upload leaves objects without a manifest: never taken for a whole checkpoint, while the previous whole
checkpoints (other names) stay untouched. Reading downloads into ``storage.cache_dir`` and checks every file
against the manifest before anything is loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from htgrpo.config import StorageConfig
from htgrpo.errors import CheckpointError
from htgrpo.storage.base import join_uri, open_store, split_uri

MANIFEST = "manifest.json"


def _verify(directory: Path) -> dict[str, Any]:
    from htgrpo.checkpoint import verify_checkpoint

    return verify_checkpoint(directory)


def upload_checkpoint_dir(
    local_dir: str | Path, uri: str, storage: StorageConfig | None = None, *, verify: bool = True
) -> dict[str, Any]:
    """Upload a whole local checkpoint to ``uri``: its files, then its manifest. Returns bytes and seconds.

    ``verify=False`` skips hashing the local files first (the caller has just written them and their manifest).
    """
    local_dir = Path(local_dir)
    if verify:
        _verify(local_dir)
    manifest = json.loads((local_dir / MANIFEST).read_text())
    store = open_store(uri, storage)
    start = time.perf_counter()
    if store.exists(MANIFEST):  # replacing a checkpoint of this name: it stops being whole right now
        store.delete(MANIFEST)
    total = 0
    for name, info in manifest["files"].items():
        store.put_file(name, local_dir / name)
        total += int(info["bytes"])
    store.put_file(MANIFEST, local_dir / MANIFEST)
    return {"uri": uri, "bytes": total, "seconds": time.perf_counter() - start}


def checkpoint_is_whole(uri: str, storage: StorageConfig | None = None) -> bool:
    """True when ``uri`` has a manifest (its files are verified when it is read)."""
    if split_uri(uri)[0] == "file":
        return (Path(split_uri(uri)[1]) / MANIFEST).is_file()
    return open_store(uri, storage).exists(MANIFEST)


def fetch_checkpoint(uri: str | Path, storage: StorageConfig | None = None) -> Path:
    """A local directory holding the checkpoint at ``uri``, verified against its manifest.

    ``file://`` checkpoints are used in place; ``s3://`` ones are downloaded into ``storage.cache_dir`` (reused
    when the same manifest was downloaded before).
    """
    scheme, rest = split_uri(str(uri))
    if scheme == "file":
        return Path(rest)
    storage = storage or StorageConfig(uri=str(uri))
    store = open_store(str(uri), storage)
    try:
        manifest_bytes = store.get_bytes(MANIFEST)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {uri} is incomplete or missing: it has no {MANIFEST} (was its writer killed?)"
        ) from None
    try:
        files = json.loads(manifest_bytes)["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {uri}: {MANIFEST} is not a valid manifest") from None
    tag = _cache_tag(uri, manifest_bytes)
    cache = Path(storage.cache_dir)
    final = cache / tag
    cache.mkdir(parents=True, exist_ok=True)
    # the ranks of a distributed run fetch the same checkpoint at once: one downloads, the others wait and reuse
    # it, and nobody deletes a copy another process is reading
    with open(cache / f".{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch_locked(uri, store, files, manifest_bytes, cache, final, tag)


def _cache_tag(uri: str | Path, manifest_bytes: bytes) -> str:
    """The cache directory name of a stored checkpoint: its URI and its manifest (hence its content)."""
    return (
        hashlib.sha256(str(uri).encode()).hexdigest()[:12]
        + "-"
        + hashlib.sha256(manifest_bytes).hexdigest()[:12]
    )


def cache_checkpoint_copy(local_dir: str | Path, uri: str, storage: StorageConfig | None = None) -> Path:
    """Move a whole local checkpoint just uploaded to ``uri`` into the cache where ``fetch_checkpoint`` looks for
    it, so that reading it back in this process or on this machine downloads nothing. Returns the cached copy."""
    local_dir = Path(local_dir)
    storage = storage or StorageConfig(uri=str(uri))
    manifest_bytes = (local_dir / MANIFEST).read_bytes()
    tag = _cache_tag(uri, manifest_bytes)
    cache = Path(storage.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / tag
    with open(cache / f".{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / MANIFEST).is_file() and (final / MANIFEST).read_bytes() == manifest_bytes:
            return final  # the same content is already there (its files are verified when it is read)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            local_dir.rename(final)
        except OSError:  # another file system: copy
            shutil.copytree(local_dir, final)
    return final


def read_verified_object(uri: str, name: str, storage: StorageConfig | None = None) -> bytes | None:
    """One file of the checkpoint at ``uri``, checked against the manifest's size and sha256, without fetching or
    hashing the others; None when the manifest does not list ``name``."""
    store = open_store(str(uri), storage)
    try:
        files = json.loads(store.get_bytes(MANIFEST))["files"]
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {uri} is incomplete or missing: it has no {MANIFEST} (was its writer killed?)"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {uri}: {MANIFEST} is not a valid manifest") from None
    if name not in files:
        return None
    try:
        data = store.get_bytes(name)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {uri}: {name} is listed in the manifest but missing") from None
    info = files[name]
    if len(data) != int(info["bytes"]) or hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise CheckpointError(f"checkpoint {uri}: {name} does not match its sha256 in the manifest (corrupt)")
    return data


def _fetch_locked(uri, store, files, manifest_bytes: bytes, cache: Path, final: Path, tag: str) -> Path:
    if (final / MANIFEST).is_file():
        try:
            _verify(final)
            return final
        except CheckpointError:
            shutil.rmtree(final, ignore_errors=True)
    tmp = cache / f".{tag}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        for name in files:
            try:
                store.get_file(name, tmp / name)
            except FileNotFoundError:
                raise CheckpointError(
                    f"checkpoint {uri}: {name} is listed in the manifest but missing"
                ) from None
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        try:
            _verify(tmp)
        except CheckpointError as exc:
            raise CheckpointError(str(exc).replace(str(tmp), str(uri))) from None
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_checkpoints(prefix_uri: str, storage: StorageConfig | None = None) -> list[str]:
    """URIs of the whole checkpoints directly below ``prefix_uri`` (those with a manifest), sorted by name."""
    store = open_store(prefix_uri, storage)
    names = sorted({k.rsplit("/", 1)[0] for k in store.list() if k.endswith("/" + MANIFEST)})
    return [join_uri(prefix_uri, n) for n in names if "/" not in n and not n.startswith(".")]


def latest_whole_checkpoint(prefix_uri: str, storage: StorageConfig | None = None) -> str | None:
    """The newest (by name) checkpoint below ``prefix_uri`` that has a manifest, or None."""
    found = list_checkpoints(prefix_uri, storage)
    return found[-1] if found else None


__all__ = [
    "cache_checkpoint_copy",
    "checkpoint_is_whole",
    "fetch_checkpoint",
    "latest_whole_checkpoint",
    "list_checkpoints",
    "read_verified_object",
    "upload_checkpoint_dir",
]
