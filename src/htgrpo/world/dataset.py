"""Pre-rendered training data for the shapes world, cached on disk.

Rendering and tokenising scenes on the fly cost a third of every CPU training step, so the training set is
rendered once, encoded with the image tokenizer and cached as safetensors, keyed by the world's version, its
configuration, the size, the seed and the tokenizer's codebook digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from htgrpo.config import WorldConfig
from htgrpo.tokenizers.base import ImageTokenizer
from htgrpo.world.grammar import TASKS, Metadata, splits_for
from htgrpo.world.render import render, sample_scene

WORLD_VERSION = 3  # 2: objects on a light-grey tile; 3: background themes


def draw_prompts(
    rows: list[Metadata], weights: dict[str, float], n: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices into `rows`: a task drawn by weight, then a prompt of that task uniformly."""
    by_task: dict[str, list[int]] = {t: [] for t in TASKS}
    for i, r in enumerate(rows):
        by_task[r["tag"]].append(i)
    tasks = [t for t in TASKS if by_task[t] and weights.get(t, 0) > 0]
    if not tasks:
        raise ValueError("no task with both prompts and a positive weight")
    p = np.array([weights[t] for t in tasks], dtype=np.float64)
    chosen = rng.choice(len(tasks), size=n, p=p / p.sum())
    out = np.empty(n, dtype=np.int64)
    for k, t in enumerate(tasks):
        sel = chosen == k
        out[sel] = np.asarray(by_task[t])[rng.integers(len(by_task[t]), size=int(sel.sum()))]
    return out


def render_rows(
    rows: list[Metadata],
    rng: np.random.Generator,
    grid: int,
    forbidden=(),
    progress: bool = False,
    background: str = "themes",
) -> np.ndarray:
    return np.stack(
        [
            render(sample_scene(m, rng, grid, forbidden, background))
            for m in tqdm(rows, desc="rendering", disable=not progress)
        ]
    )


@dataclass
class WorldDataset:
    """Training scenes: image codes [S, N] and the index of each scene's prompt in `prompts`."""

    codes: torch.Tensor
    prompt_index: torch.Tensor
    prompts: list[Metadata]

    def __len__(self) -> int:
        return self.codes.shape[0]


def _cache_key(world: WorldConfig, size: int, seed: int, tokenizer_digest: str) -> str:
    blob = json.dumps(
        {
            "v": WORLD_VERSION,
            "world": world.model_dump(exclude={"cache_dir", "dataset_size"}),
            "size": size,
            "seed": seed,
            "tok": tokenizer_digest,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tokenizer_digest(tokenizer: ImageTokenizer) -> str:
    codebook = getattr(tokenizer, "codebook", None)
    if codebook is None:
        return type(tokenizer).__name__
    return hashlib.sha256(codebook.numpy().tobytes()).hexdigest()[:16]


def build_dataset(
    world: WorldConfig,
    tokenizer: ImageTokenizer,
    size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    chunk: int = 8192,
) -> WorldDataset:
    """Render and encode `size` training scenes (cached under world.cache_dir)."""
    size = size or world.dataset_size
    splits = splits_for(world)
    prompts = splits.train
    key = _cache_key(world, size, seed, tokenizer_digest(tokenizer))
    path = Path(world.cache_dir) / f"world-v{WORLD_VERSION}-{key}.safetensors"
    if path.is_file():
        try:
            t = load_file(str(path))
            return WorldDataset(t["codes"].long(), t["prompt_index"].long(), prompts)
        except Exception:  # a damaged cache file is rebuilt, not trusted
            path.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    index = draw_prompts(prompts, world.task_weights, size, rng)
    codes = []
    for start in tqdm(range(0, size, chunk), desc="rendering world", disable=not progress, unit="chunk"):
        rows = [prompts[i] for i in index[start : start + chunk]]
        codes.append(
            tokenizer.encode(
                render_rows(rows, rng, world.grid, splits.unseen_pairs, background=world.background)
            ).to(torch.int16)
        )
    codes_t = torch.cat(codes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"codes": codes_t, "prompt_index": torch.from_numpy(index).int()}, str(tmp))
    tmp.replace(path)
    return WorldDataset(codes_t.long(), torch.from_numpy(index), prompts)
