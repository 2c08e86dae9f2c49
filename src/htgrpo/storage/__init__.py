"""Object stores behind one interface: a local directory (``file://``) and any S3 endpoint (``s3://``).

``open_store(uri, storage_cfg)`` returns a ``Store`` rooted at ``uri``; keys are ``/``-separated paths below it.
Checkpoints go through ``htgrpo.storage.checkpoints``: files first, the manifest (sizes and sha256) last, so a
half-written checkpoint is never taken for a whole one; every file is verified when it is read back.
"""

from __future__ import annotations

from htgrpo.storage.base import Store, join_uri, open_store, split_uri
from htgrpo.storage.checkpoints import (
    cache_checkpoint_copy,
    checkpoint_is_whole,
    fetch_checkpoint,
    latest_whole_checkpoint,
    list_checkpoints,
    read_verified_object,
    upload_checkpoint_dir,
)
from htgrpo.storage.local import FileStore
from htgrpo.storage.s3 import S3Store

__all__ = [
    "FileStore",
    "S3Store",
    "Store",
    "cache_checkpoint_copy",
    "checkpoint_is_whole",
    "fetch_checkpoint",
    "join_uri",
    "latest_whole_checkpoint",
    "list_checkpoints",
    "open_store",
    "read_verified_object",
    "split_uri",
    "upload_checkpoint_dir",
]
