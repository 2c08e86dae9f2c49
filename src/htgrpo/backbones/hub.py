"""``htgrpo weights download``: the real backbones' checkpoints from the Hugging Face Hub, where it can be reached.

A model is one or more Hub repositories laid out the way ``backbone.weights`` expects:

* ``mmada`` / ``mmada-mixcot``: Gen-Verse/MMaDA-8B-Base (or -MixCoT) in DIR, and MMaDA's image tokenizer
  showlab/magvitv2 in DIR/magvitv2 (the default ``backbone.vq_weights``);
* ``dimoo``: Alpha-VLLM/Lumina-DiMOO in DIR, its VQ model already in DIR/vqvae.

Only configs, tokenizers and safetensors are fetched. A repository that publishes its weights only as a pickle
(``pytorch_model.bin``) is converted once to ``model.safetensors`` with ``torch.load(weights_only=True)`` (tensors
only, no code) and the pickle is deleted, since htgrpo loads safetensors only. An ``s3://`` destination is
downloaded to a temporary directory and uploaded through the project's store layer.

When the Hub cannot be reached (``HF_HUB_OFFLINE=1``, no network, a wrong ``HF_ENDPOINT``), the command fails with a
``WeightsError`` saying so and what to do instead: download elsewhere and copy the directory (or upload it to S3).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htgrpo.benchmarks.weights import WeightsSpec, require
from htgrpo.config import StorageConfig
from htgrpo.errors import WeightsError

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.py"]
PICKLES = {
    "pytorch_model.bin": "model.safetensors",
    "diffusion_pytorch_model.bin": "diffusion_pytorch_model.safetensors",
}
PICKLE_PATTERNS = list(PICKLES)


@dataclass(frozen=True)
class HubPart:
    repo_id: str
    subdir: str = ""
    allow_pickle: bool = False
    """Also fetch a pickle checkpoint (converted to safetensors) when the repository has no safetensors."""


MODELS: dict[str, tuple[HubPart, ...]] = {
    "mmada": (HubPart("Gen-Verse/MMaDA-8B-Base"), HubPart("showlab/magvitv2", "magvitv2", allow_pickle=True)),
    "mmada-mixcot": (
        HubPart("Gen-Verse/MMaDA-8B-MixCoT"),
        HubPart("showlab/magvitv2", "magvitv2", allow_pickle=True),
    ),
    "dimoo": (HubPart("Alpha-VLLM/Lumina-DiMOO"),),
}
"""What ``--model`` downloads, and where inside the destination."""

CHECKPOINT_SPEC = WeightsSpec(
    "backbone checkpoint",
    (("config.json",), ("model.safetensors.index.json", "model.safetensors"), ("tokenizer.json",)),
)


def _offline_reason() -> str | None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return None


def _snapshot(part: HubPart, dest: Path, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = WEIGHT_PATTERNS + (PICKLE_PATTERNS if part.allow_pickle else [])
    try:
        return Path(
            snapshot_download(part.repo_id, revision=revision, local_dir=str(dest), allow_patterns=patterns)
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # network boundary: every failure becomes one message without a traceback
        from huggingface_hub import constants

        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        raise WeightsError(
            f"cannot download {part.repo_id} from the Hugging Face Hub ({constants.ENDPOINT}): {cause}. "
            "Download it on a machine with Hub access (htgrpo weights download, or huggingface-cli download) and "
            "copy the directory here, or upload it to S3 and point backbone.weights at the s3:// URI"
        ) from None


def _convert_pickles(directory: Path) -> list[str]:
    """Replace pickle checkpoints by safetensors (tensors only: weights_only=True never runs code)."""
    import torch
    from safetensors.torch import save_file

    converted = []
    for name, safe_name in PICKLES.items():
        src = directory / name
        if not src.is_file():
            continue
        target = directory / safe_name
        if not any(directory.glob("*.safetensors")):
            state = torch.load(src, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            save_file({k: v.contiguous() for k, v in state.items()}, str(target))
            converted.append(f"{src.name} -> {target.name}")
        src.unlink()
    return converted


def download_weights(
    model: str, to: str, *, revision: str | None = None, storage: StorageConfig | None = None
) -> dict[str, Any]:
    """Download ``model`` (a key of MODELS) into ``to`` (a directory, file://DIR or s3://BUCKET/PREFIX)."""
    if model not in MODELS:
        raise WeightsError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    reason = _offline_reason()
    if reason:
        raise WeightsError(
            f"cannot download {model}: {reason}, so the Hugging Face Hub is not contacted. Unset it where the Hub "
            "is reachable, or download elsewhere and copy the directory (or an s3:// copy) here"
        )
    remote = str(to).startswith("s3://")
    with tempfile.TemporaryDirectory(prefix="htgrpo-weights-") as tmp:
        root = Path(tmp) / "weights" if remote else Path(str(to).removeprefix("file://")).expanduser()
        converted: list[str] = []
        for i, part in enumerate(MODELS[model]):
            dest = root / part.subdir if part.subdir else root
            _snapshot(part, dest, revision if i == 0 else None)
            converted += _convert_pickles(dest)
        shutil.rmtree(root / ".cache", ignore_errors=True)  # huggingface_hub's local_dir bookkeeping
        require(f"{model} weights", root, CHECKPOINT_SPEC)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        if remote:
            from htgrpo.storage.base import open_store

            store = open_store(str(to), storage)
            for path in files:
                store.put_file(path.relative_to(root).as_posix(), path)
    return {
        "model": model,
        "repositories": [p.repo_id for p in MODELS[model]],
        "to": str(to),
        "files": len(files),
        "bytes": total,
        "converted": converted,
    }


__all__ = ["MODELS", "download_weights"]
