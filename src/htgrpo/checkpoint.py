"""Checkpoints: a directory of safetensors files plus a manifest, written last.

Layout of a checkpoint directory::

    config.json              the full run configuration and what the weights need to be rebuilt
    model.safetensors        backbone weights
    image_tokenizer.safetensors
    manifest.json            sizes and sha256 of the files above; written last

A real backbone (``backbone.kind`` mmada or dimoo) keeps its pretrained weights where ``backbone.weights`` says:
its checkpoint's ``model.safetensors`` holds only what training changed (the LoRA adapter in peft's names, or the
whole network in the published key names for full fine-tuning) and it has no ``image_tokenizer.safetensors``;
loading rebuilds the backbone from ``backbone.weights`` first.

A directory without a manifest, or whose files do not match it, is not a checkpoint: loading it fails with a
message that says which file is missing or damaged. Saving writes into a temporary sibling directory and renames
it into place, so a killed process never leaves a half-written checkpoint under the final name.

Every function also takes an ``s3://BUCKET/PREFIX/NAME`` URI (and a ``storage`` section for the endpoint):
saving writes the checkpoint locally, then uploads it with its manifest last; loading downloads it into the
storage cache and verifies every file first (``htgrpo.storage.checkpoints``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from htgrpo.config import BackboneConfig, Config, StorageConfig, config_to_dict
from htgrpo.errors import CheckpointError

if TYPE_CHECKING:
    from htgrpo.backbones.base import Backbone

# torch, safetensors.torch and the backbones are imported where a checkpoint is written or loaded: verifying
# one (the pipeline's prepare_data) needs neither, and torch's import is 2 s of a short task.

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

_verified: dict[Any, Any] | None = None
"""Inside ``verify_once``: directory -> (file signature, parsed config.json), and s3 URI -> local copy."""


@contextmanager
def verify_once() -> Iterator[None]:
    """Within this block each checkpoint is hashed (and, from S3, fetched) once per process.

    A pipeline step reaches its checkpoint through several functions (trainer state, weights, reference,
    optimizer, log-probs), each of which verifies what it reads; inside the block a directory whose files still
    have the sizes, modification times and inodes they had when they were hashed is not hashed again.
    """
    global _verified
    outer = _verified
    if outer is None:
        _verified = {}
    try:
        yield
    finally:
        _verified = outer


def _signature(d: Path) -> tuple | None:
    try:
        stats = [(e.name, e.stat()) for e in os.scandir(d) if e.is_file()]
    except OSError:
        return None
    return tuple(sorted((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in stats))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strip_prefix(path: str) -> Path:
    return Path(path[len("file://") :]) if path.startswith("file://") else Path(path)


def _is_remote(directory: str | Path) -> bool:
    return str(directory).startswith("s3://")


def _local(directory: str | Path, storage: StorageConfig | None = None) -> Path:
    """The local directory of a checkpoint: itself, or a verified download of an s3:// one."""
    if _is_remote(directory):
        from htgrpo.storage.checkpoints import fetch_checkpoint

        key = ("fetched", str(directory))
        if _verified is not None and key in _verified:
            d = _verified[key]
            if _verified.get(d.resolve(), (None,))[0] == _signature(d):
                return d
        d = fetch_checkpoint(str(directory), storage)
        if _verified is not None:
            _verified[key] = d
        return d
    return _strip_prefix(str(directory))


RESERVED_FILES = frozenset({MANIFEST, "config.json", "model.safetensors", "image_tokenizer.safetensors"})
RUNTIME_BACKBONE_KEYS = frozenset({"weights", "vq_weights", "dtype", "gradient_checkpointing"})
"""backbone keys that say where and how to load, not what was trained: a checkpoint loads under other values."""


def _required_files(kind: str) -> tuple[str, ...]:
    if kind == "tiny":
        return ("config.json", "model.safetensors", "image_tokenizer.safetensors")
    return ("config.json", "model.safetensors")


def _describe(backbone: Backbone, kind: str) -> dict[str, Any]:
    from htgrpo.backbones.tiny import TinyBackbone

    if isinstance(backbone, TinyBackbone):
        return {
            "kind": kind,
            "vocab_size": backbone.llada_config.vocab_size,
            "codebook_size": backbone.layout.codebook_size,
            "grid": backbone.layout.grid_h,
            "text_vocab": backbone.text.tokens,
            "parameters": backbone.num_parameters(),
        }
    return backbone.describe()


def save_checkpoint(
    directory: str | Path,
    backbone: Backbone,
    cfg: Config,
    extra: dict[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    storage: StorageConfig | None = None,
) -> Path:
    """Write a whole checkpoint atomically (temporary directory, manifest last, rename).

    ``extra_files`` (name -> content) are written into the same directory and listed in the manifest, so
    they are checked and appear or vanish together with the weights (e.g. an RL run's optimizer state).
    An ``s3://`` destination is written to a local temporary directory and uploaded, manifest last; the
    return value is then the local copy (the upload is verified on every later load).
    """
    if _is_remote(directory):
        import tempfile

        from htgrpo.storage.checkpoints import cache_checkpoint_copy, upload_checkpoint_dir

        storage = storage or StorageConfig(uri=str(directory))
        Path(storage.cache_dir).mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=".htgrpo-ckpt-", dir=storage.cache_dir))
        try:
            local = save_checkpoint(tmpdir / "ckpt", backbone, cfg, extra, extra_files)
            upload_checkpoint_dir(local, str(directory), storage, verify=False)  # just written and hashed
            return cache_checkpoint_copy(local, str(directory), storage)  # read back later without a download
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    for name in extra_files or {}:
        if name in RESERVED_FILES or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"extra checkpoint file name {name!r} is reserved or not a plain file name")
    final = _strip_prefix(str(directory))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    from safetensors.torch import save_file

    try:
        state = backbone.checkpoint_tensors()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "htgrpo-backbone"})
        if cfg.backbone.kind == "tiny":
            backbone.image_tokenizer.save(tmp / "image_tokenizer.safetensors")
        meta = {
            "format_version": FORMAT_VERSION,
            "config": config_to_dict(cfg),
            "backbone": _describe(backbone, cfg.backbone.kind),
            "extra": extra or {},
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=2))
        if final.exists():
            backup = final.parent / f".{final.name}.old-{time.time_ns()}"
            final.rename(backup)
            tmp.rename(final)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_checkpoint(directory: str | Path, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Check the manifest against the files; return the parsed config.json."""
    d = _local(directory, storage)
    if _verified is not None:
        key, sig = d.resolve(), _signature(d)
        hit = _verified.get(key)
        if hit is not None and sig is not None and hit[0] == sig:
            return copy.deepcopy(hit[1])
        meta = _verify_files(d)
        _verified[key] = (sig, copy.deepcopy(meta))
        return meta
    return _verify_files(d)


def _verify_files(d: Path) -> dict[str, Any]:
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} does not exist")
    manifest_path = d / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {d} is incomplete: it has no {MANIFEST} (was its writer killed?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {d}: {MANIFEST} is not a valid manifest") from None
    for name, info in files.items():
        p = d / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {d}: {name} is listed in the manifest but missing")
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise CheckpointError(
                f"checkpoint {d}: {name} does not match its sha256 in the manifest (corrupt)"
            )
    if "config.json" not in files:
        raise CheckpointError(f"checkpoint {d}: the manifest lists no config.json")
    try:
        meta = json.loads((d / "config.json").read_text())
        kind = meta.get("backbone", {}).get("kind", "tiny")
    except (json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"checkpoint {d}: config.json is not a checkpoint record") from None
    for required in _required_files(kind):
        if required not in files:
            raise CheckpointError(f"checkpoint {d}: the manifest lists no {required}")
    return meta


def backbone_mismatch(now: BackboneConfig, saved: BackboneConfig) -> list[str]:
    """The backbone keys (other than RUNTIME_BACKBONE_KEYS) on which a config and a checkpoint differ."""
    return [
        f"backbone.{k}: config {getattr(now, k)!r} vs checkpoint {getattr(saved, k)!r}"
        for k in type(now).model_fields
        if k not in RUNTIME_BACKBONE_KEYS and getattr(now, k) != getattr(saved, k)
    ]


def load_checkpoint(
    directory: str | Path, cfg: Config | None = None, storage: StorageConfig | None = None
) -> tuple[Backbone, Config]:
    """Rebuild the backbone saved in `directory`. With `cfg`, its backbone section must match the checkpoint's
    (except where and how to load the pretrained weights: ``RUNTIME_BACKBONE_KEYS`` come from `cfg`)."""
    storage = storage or (cfg.storage if cfg is not None else None)
    d = _local(directory, storage)
    meta = verify_checkpoint(d)
    saved_cfg = Config.model_validate(meta["config"])
    if cfg is not None:
        diffs = backbone_mismatch(cfg.backbone, saved_cfg.backbone)
        if diffs:
            raise CheckpointError(f"checkpoint {d} does not match the configuration: " + "; ".join(diffs))
    if saved_cfg.backbone.kind != "tiny":
        return _load_pretrained_checkpoint(d, saved_cfg, cfg, storage)
    from safetensors.torch import load_file

    from htgrpo.backbones.tiny import TinyBackbone
    from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer

    tokenizer = PatchKMeansTokenizer.load(d / "image_tokenizer.safetensors")
    expected_codes = meta["backbone"]["codebook_size"]
    if tokenizer.codebook_size != expected_codes:
        raise CheckpointError(
            f"checkpoint {d}: image tokenizer has {tokenizer.codebook_size} codes, the backbone expects {expected_codes}"
        )
    backbone = TinyBackbone(saved_cfg.backbone, tokenizer, meta["backbone"]["grid"])
    if backbone.text.tokens != meta["backbone"]["text_vocab"]:
        raise CheckpointError(f"checkpoint {d}: its text vocabulary differs from this version's")
    backbone.load_checkpoint_tensors(load_file(str(d / "model.safetensors")), f"checkpoint {d}")
    backbone.eval()
    return backbone, saved_cfg


def _load_pretrained_checkpoint(
    d: Path, saved_cfg: Config, cfg: Config | None, storage: StorageConfig | None
) -> tuple[Backbone, Config]:
    from safetensors.torch import load_file

    from htgrpo.backbones.pretrained import load_pretrained

    runtime = cfg.backbone if cfg is not None else saved_cfg.backbone
    update = {k: getattr(runtime, k) for k in RUNTIME_BACKBONE_KEYS}
    saved_cfg = saved_cfg.model_copy(update={"backbone": saved_cfg.backbone.model_copy(update=update)})
    backbone = load_pretrained(saved_cfg.backbone, storage)
    backbone.load_checkpoint_tensors(
        load_file(str(d / "model.safetensors")), f"checkpoint {d}/model.safetensors"
    )
    backbone.eval()
    return backbone, saved_cfg


def read_checkpoint_file(directory: str | Path, name: str, storage: StorageConfig | None = None) -> bytes:
    """An extra file of a verified checkpoint (see ``save_checkpoint(extra_files=...)``)."""
    d = _local(directory, storage)
    manifest = json.loads((d / MANIFEST).read_text())
    if name not in manifest["files"]:
        raise CheckpointError(f"checkpoint {d} has no {name}")
    return (d / name).read_bytes()


def checkpoint_sha(directory: str | Path, storage: StorageConfig | None = None) -> str:
    """A short content digest of a checkpoint (its manifest's hash)."""
    return sha256_file(_local(directory, storage) / MANIFEST)[:16]


__all__ = [
    "checkpoint_sha",
    "load_checkpoint",
    "read_checkpoint_file",
    "save_checkpoint",
    "verify_checkpoint",
    "verify_once",
]
