"""Loading models from local weights directories, with one clear error when they are missing.

The team's machines reach no model hub, so every metric names the directory it loads from. ``require`` checks
it before anything is imported or generated, and the error says which metric wanted it, which files it
expects and where they come from (the Hugging Face id to download elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from htgrpo.errors import WeightsError

HF_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
"""Any one of these is a transformers checkpoint's weights."""


@dataclass(frozen=True)
class WeightsSpec:
    """What one model directory must hold.

    ``files``: each entry is a tuple of alternatives, one of which must exist (e.g. the weights formats).
    ``source``: where the files come from (an HF id), quoted in the error.
    """

    what: str
    files: tuple[tuple[str, ...], ...]
    source: str = ""

    def describe(self) -> str:
        return ", ".join("/".join(alts) for alts in self.files)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model")
"""Any one of these is a tokenizer (fast tokenizer file, BPE vocabulary, WordPiece vocabulary, sentencepiece)."""


def hf_spec(
    what: str, source: str, processor: Sequence[str | tuple[str, ...]] = ("preprocessor_config.json",)
) -> WeightsSpec:
    """A transformers model directory: config.json, the weights, and the processor/tokenizer files
    (each entry of ``processor`` a file name or a tuple of alternatives)."""
    extra = tuple((p,) if isinstance(p, str) else tuple(p) for p in processor)
    return WeightsSpec(what, (("config.json",), HF_WEIGHTS, *extra), source)


def require(metric: str, directory: str | Path | None, spec: WeightsSpec) -> Path:
    """The directory as a Path if it holds every file of ``spec``; otherwise one WeightsError naming it all."""
    hint = f" (download {spec.source} on a machine with hub access and copy it there)" if spec.source else ""
    if directory is None or str(directory) == "":
        raise WeightsError(
            f"{metric}: no weights directory configured for the {spec.what}; it must hold {spec.describe()}{hint}"
        )
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise WeightsError(
            f"{metric}: weights directory {path} for the {spec.what} does not exist; it must hold "
            f"{spec.describe()}{hint}"
        )
    missing = [alts for alts in spec.files if not any((path / a).exists() for a in alts)]
    if missing:
        raise WeightsError(
            f"{metric}: weights directory {path} for the {spec.what} lacks "
            f"{', '.join('/'.join(a) for a in missing)}; it must hold {spec.describe()}{hint}"
        )
    return path


def torch_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
