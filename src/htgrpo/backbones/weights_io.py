"""Pretrained weights on disk or in a store: sharded safetensors in the checkpoint's own key names.

A Hugging Face checkpoint directory holds either one ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (``{"weight_map": {key: shard file}}``). ``load_safetensors`` copies them into a
module whose ``state_dict`` uses the same key names, shard by shard (so peak memory is one shard), and checks the
keys strictly: every key missing from the files, every key the module does not have, and every shape that differs
is an error naming the key and the file. Pickle checkpoints (``pytorch_model.bin``) are never loaded.

``resolve_weights_dir`` turns ``file://DIR``, a plain path or ``s3://BUCKET/PREFIX`` into a local directory; an S3
prefix is downloaded once into ``storage.cache_dir/weights`` through the project's store layer (under a file lock,
so the ranks of one machine download it once and never delete a copy another rank is reading).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from htgrpo.config import StorageConfig
from htgrpo.errors import WeightsError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "diffusion_pytorch_model.bin")
_COMPLETE = ".htgrpo-complete.json"


def resolve_weights_dir(uri: str | Path, storage: StorageConfig | None = None, what: str = "weights") -> Path:
    """A local directory holding the files at ``uri`` (a path, ``file://DIR`` or ``s3://BUCKET/PREFIX``)."""
    from htgrpo.storage.base import open_store, split_uri

    text = str(uri)
    try:
        scheme, rest = split_uri(text)
    except ValueError as exc:
        raise WeightsError(f"{what}: {exc}") from None
    if scheme == "file":
        path = Path(rest).expanduser()
        if not path.is_dir():
            raise WeightsError(f"{what}: directory {path} does not exist")
        return path
    storage = storage or StorageConfig(uri=text)
    store = open_store(text, storage)
    keys = [k for k in store.list() if ".tmp-" not in k]
    if not keys:
        raise WeightsError(f"{what}: {text} holds no files")
    cache = Path(storage.cache_dir) / "weights"
    final = cache / (hashlib.sha256(text.encode()).hexdigest()[:16] + "-" + Path(rest).name)
    cache.mkdir(parents=True, exist_ok=True)
    # one download per machine: the ranks of a node wait on a lock, then find the finished copy
    with open(cache / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final, keys):
            return final
        tmp = cache / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"
        try:
            for key in keys:
                store.get_file(key, tmp / key)
            (tmp / _COMPLETE).write_text(json.dumps({"uri": text, "keys": keys}))
            if final.exists():  # an interrupted or outdated copy (nobody else holds the lock)
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _complete(directory: Path, keys: list[str]) -> bool:
    marker = directory / _COMPLETE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("keys") == keys
    except json.JSONDecodeError:
        return False


def weight_files(directory: Path, names: Iterable[str] = (SINGLE,), what: str = "weights") -> dict[str, str]:
    """key -> file name of every tensor of a checkpoint directory (from its index, or its one file)."""
    names = tuple(names)
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise WeightsError(f"{what}: {index} is not a safetensors index (no weight_map)") from None
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise WeightsError(
                    f"{what}: {index} lists the shard {shard}, which is missing from {directory}"
                )
        return {str(k): str(v) for k, v in weight_map.items()}
    for name in names:
        path = directory / name
        if path.is_file():
            with safe_open(str(path), framework="pt") as fh:
                return dict.fromkeys(fh.keys(), name)
    pickles = [p for p in PICKLE_FILES if (directory / p).exists()]
    if pickles:
        raise WeightsError(
            f"{what}: {directory} holds only {', '.join(pickles)} (pickle); htgrpo loads safetensors only. "
            "Convert it once on a trusted machine: torch.load(path, weights_only=True) then "
            "safetensors.torch.save_file(state, 'model.safetensors') (htgrpo weights download does this)"
        )
    raise WeightsError(f"{what}: {directory} has no {INDEX} and no {' / '.join(names)}")


def _preview(keys: list[str], n: int = 5) -> str:
    head = ", ".join(keys[:n])
    return head + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_safetensors(
    module: nn.Module,
    directory: str | Path,
    *,
    names: Iterable[str] = (SINGLE,),
    what: str = "weights",
) -> list[str]:
    """Copy a checkpoint directory's tensors into ``module`` (strict keys and shapes); returns the files read.

    The module must already be materialised (``to_empty`` after a meta-device build); values are cast to each
    parameter's dtype. Missing keys are reported against the index (or the single file), unexpected keys and
    shape mismatches against the shard that holds them.
    """
    directory = Path(directory)
    where = weight_files(directory, names, what)
    source = INDEX if (directory / INDEX).is_file() else next(iter(set(where.values())), SINGLE)
    own = module.state_dict()
    missing = sorted(set(own) - set(where))
    unexpected = sorted(set(where) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_preview(missing)}")
        if unexpected:
            by_file = sorted({where[k] for k in unexpected})
            parts.append(
                f"unexpected {len(unexpected)} key(s) (in {', '.join(by_file)}): {_preview(unexpected)}"
            )
        raise WeightsError(f"{what}: {directory / source} does not fit the model: " + "; ".join(parts))
    files: dict[str, list[str]] = {}
    for key, file in where.items():
        files.setdefault(file, []).append(key)
    with torch.no_grad():
        for file, keys in sorted(files.items()):
            path = directory / file
            with safe_open(str(path), framework="pt") as fh:
                present = set(fh.keys())
                for key in keys:
                    if key not in present:
                        raise WeightsError(
                            f"{what}: {directory / INDEX} puts {key} in {file}, which lacks it"
                        )
                    target = own[key]
                    shape = tuple(fh.get_slice(key).get_shape())
                    if shape != tuple(target.shape):
                        raise WeightsError(
                            f"{what}: {path}: {key} has shape {list(shape)}, the model expects "
                            f"{list(target.shape)} (is the config.json of another model?)"
                        )
                    target.copy_(fh.get_tensor(key))
    return sorted(files)


def save_sharded(
    state: Mapping[str, torch.Tensor], directory: str | Path, max_shard_bytes: int = 5 << 30
) -> list[str]:
    """Write tensors as Hugging Face-style shards plus ``model.safetensors.index.json`` (one file if it fits)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.detach().cpu().contiguous()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE), metadata={"format": "pt"})
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return names


__all__ = ["INDEX", "SINGLE", "load_safetensors", "resolve_weights_dir", "save_sharded", "weight_files"]
