"""Base-model pretraining on the shapes world: the image tokenizer, then the masked-diffusion objective.

Objective (MMaDA / LLaDA): draw t ~ U(min_mask_ratio, 1) per scene, mask every image token independently with
probability t, and minimise  (1/N) * sum_{masked i} -log p(x0_i | x_t, c) / t. A share of prompts is replaced by the
unconditional template so the same network serves classifier-free guidance.

Fill curriculum (``pretrain.fill_steps``): on its own the objective above teaches layout, shapes and counts but
leaves colour words at chance (benchmarks/results/colour_binding.md). For the first steps every scene is instead
trained in *fill* mode: all object cells masked, the background visible, the loss on the object cells (weight 1).
With nothing to copy and the positions given, the only way to lower that loss is to read shape *and colour* off the
prompt. Fill mode leaks a pattern (masked = object) that generation must not learn, so its share then falls
linearly over ``fill_decay_steps`` to ``fill_final_share``, kept for the rest of the run (optionally only for the
scenes of ``fill_final_tasks``) so that the binding does not fade; the other scenes get the plain objective.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from htgrpo.backbones.base import MASK_CODE, PromptBatch
from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.checkpoint import save_checkpoint
from htgrpo.config import Config, PretrainConfig, WorldConfig
from htgrpo.errors import ConfigError
from htgrpo.rl.adamw import AdamW
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer
from htgrpo.world.dataset import WorldDataset, build_dataset, draw_prompts, render_rows, splits_for
from htgrpo.world.render import render, sample_scene


def scene_world(cfg: Config) -> WorldConfig:
    """The world the pretraining scenes are drawn from: cfg.world with pretrain.task_weights as its task mix."""
    weights = cfg.pretrain.task_weights
    return cfg.world if weights is None else cfg.world.model_copy(update={"task_weights": dict(weights)})


def train_tokenizer(cfg: Config, progress: bool = True) -> PatchKMeansTokenizer:
    """Fit the k-means patch codebook on freshly rendered scenes.

    The tokenizer is an image codec, not the text-to-image model: it sees every colour-shape pair, the held-out
    (unseen) ones included, so that unseen-split images are representable at all. Only the backbone's training
    data excludes them.
    """
    tc = cfg.tokenizer
    splits = splits_for(cfg.world)
    rng = np.random.default_rng(tc.seed + 7919)
    pool = splits.train + splits.unseen
    index = draw_prompts(pool, scene_world(cfg).task_weights, tc.train_images, rng)
    images = render_rows([pool[i] for i in index], rng, cfg.world.grid, background=cfg.world.background)
    return PatchKMeansTokenizer.fit(images, tc.codebook_size, tc.iterations, tc.seed, progress=progress)


def object_codes(cfg: Config, tokenizer: PatchKMeansTokenizer, scenes: int = 3000) -> torch.Tensor:
    """[codebook] bool: the codes that stand for an object (one object fills one cell, hence one token).

    Read off rendered scenes whose object cells are known: a code counts as an object code when most of its
    occurrences are at object cells.
    """
    splits = splits_for(cfg.world)
    pool = splits.train + splits.unseen
    rng = np.random.default_rng(cfg.pretrain.seed + 104729)
    index = draw_prompts(pool, scene_world(cfg).task_weights, scenes, rng)
    grid = cfg.world.grid
    scene_list = [sample_scene(pool[i], rng, grid, background=cfg.world.background) for i in index]
    codes = tokenizer.encode(np.stack([render(sc) for sc in scene_list]))
    at_object = torch.zeros(codes.shape, dtype=torch.bool)
    for k, sc in enumerate(scene_list):
        for o in sc.objects:
            at_object[k, o.row * grid + o.col] = True
    size = tokenizer.codebook_size
    on = torch.bincount(codes[at_object], minlength=size)
    off = torch.bincount(codes[~at_object], minlength=size)
    return on > off


def fill_share(pc: PretrainConfig, step: int) -> float:
    """Share of scenes trained in fill mode at `step`: 1 for fill_steps, then linearly down to
    fill_final_share, which is kept for the rest of the run (for the scenes of ``fill_final_tasks``)."""
    if step < pc.fill_steps:
        return 1.0
    floor = pc.fill_final_share
    if pc.fill_decay_steps == 0:
        return floor
    frac = min(1.0, (step - pc.fill_steps + 1) / (pc.fill_decay_steps + 1))
    return floor + (1.0 - floor) * (1.0 - frac)


def masked_diffusion_loss(
    backbone: TinyBackbone,
    prompt: PromptBatch,
    x0: torch.Tensor,
    generator: torch.Generator,
    min_ratio: float = 0.0,
    fill: torch.Tensor | None = None,
    is_object: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 1/t-weighted masked-diffusion loss; scenes flagged in `fill` ([B] bool, needs `is_object`) are
    trained in fill mode instead (object cells masked, weight 1)."""
    b, n = x0.shape
    t = min_ratio + (1 - min_ratio) * torch.rand(b, 1, generator=generator)
    t = t.clamp_min(1.0 / n)
    mask = torch.rand(b, n, generator=generator) < t
    weight = 1.0 / t.expand(b, n)
    if fill is not None and bool(fill.any()):
        if is_object is None:
            raise ValueError("fill mode needs is_object, the object codes of the tokenizer")
        obj = is_object[x0]
        fill = fill & obj.any(1)
        mask = torch.where(fill[:, None], obj, mask)
        weight = torch.where(fill[:, None], torch.ones_like(weight), weight)
    # every scene scores at least one token
    none = ~mask.any(1)
    if none.any():
        mask[none, torch.randint(n, (int(none.sum()),), generator=generator)] = True
    xt = torch.where(mask, torch.full_like(x0, MASK_CODE), x0)
    logits = backbone.logits(prompt, xt)
    ce = F.cross_entropy(logits.reshape(b * n, -1).float(), x0.reshape(-1), reduction="none").view(b, n)
    return (ce * mask * weight).sum() / (b * n)


@dataclass
class PretrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    final_loss: float
    snapshots: list[tuple[float, int, Path]]
    """(minutes, step, path) of the snapshots taken for the score-versus-time curve."""


class PromptTable:
    """All training prompts tokenised once into one left-padded table (plus the unconditional row)."""

    def __init__(self, backbone: TinyBackbone, prompts: list[dict]) -> None:
        cond = backbone.encode_prompts([p["prompt"] for p in prompts])
        uncond = backbone.encode_uncond(1)
        both = PromptBatch.cat([cond, uncond], backbone.pad_id)
        self.ids, self.att = both.input_ids, both.attention_mask
        self.uncond_row = self.ids.shape[0] - 1

    def batch(self, index: torch.Tensor, drop: torch.Tensor) -> PromptBatch:
        rows = torch.where(drop, torch.full_like(index, self.uncond_row), index)
        return PromptBatch(self.ids[rows], self.att[rows])


def pretrain(
    cfg: Config,
    out: str | Path,
    tokenizer: PatchKMeansTokenizer | None = None,
    dataset: WorldDataset | None = None,
    progress: bool = True,
    snapshot_dir: str | Path | None = None,
    init: str | Path | None = None,
) -> PretrainResult:
    """Pretrain from scratch, or continue from the checkpoint `init` (its tokenizer and weights; a fresh
    warm-up and cosine schedule over `pretrain.steps`)."""
    if cfg.backbone.kind != "tiny":
        raise ConfigError(
            f"htgrpo pretrain trains the tiny shapes-world backbone; backbone.kind={cfg.backbone.kind} comes "
            "pretrained (backbone.weights): go straight to htgrpo train"
        )
    pc = cfg.pretrain
    torch.manual_seed(pc.seed)
    start_weights = None
    if init is not None:
        from htgrpo.checkpoint import load_checkpoint

        loaded, _ = load_checkpoint(init, cfg)
        tokenizer = loaded.image_tokenizer
        start_weights = loaded.state_dict()
    if tokenizer is None:
        tokenizer = train_tokenizer(cfg, progress)
    if dataset is None:
        dataset = build_dataset(scene_world(cfg), tokenizer, seed=pc.seed, progress=progress)
    backbone = TinyBackbone(cfg.backbone, tokenizer, cfg.world.grid)
    if start_weights is not None:
        backbone.load_state_dict(start_weights, strict=True)
    backbone.train()
    ema = copy.deepcopy(backbone).eval() if pc.ema_decay > 0 else None
    table = PromptTable(backbone, dataset.prompts)
    is_object = (
        object_codes(cfg, tokenizer)
        if pc.fill_steps + pc.fill_decay_steps > 0 or pc.fill_final_share > 0
        else None
    )
    # after the hand-over, fill mode only for the scenes of these tasks (all when the list is empty)
    fill_tasks = (
        torch.tensor([p["tag"] in pc.fill_final_tasks for p in dataset.prompts])
        if pc.fill_final_tasks
        else None
    )
    decay, no_decay = [], []
    for name, p in backbone.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    opt = AdamW(
        [{"params": decay, "weight_decay": pc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=pc.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < pc.warmup_steps:
            return pc.lr * (step + 1) / pc.warmup_steps
        frac = (step - pc.warmup_steps) / max(pc.steps - pc.warmup_steps, 1)
        return pc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    gen = torch.Generator().manual_seed(pc.seed)
    start = time.perf_counter()
    snapshots: list[tuple[float, int, Path]] = []
    next_snapshot = pc.snapshot_every_min
    loss_avg = float("nan")
    bar = tqdm(range(pc.steps), desc="pretraining", disable=not progress)
    step = 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(len(dataset), (pc.batch_size,), generator=gen)
        x0 = dataset.codes[idx]
        drop = torch.rand(pc.batch_size, generator=gen) < pc.cond_dropout
        prompt = table.batch(dataset.prompt_index[idx], drop)
        share = fill_share(pc, step)
        fill = torch.rand(pc.batch_size, generator=gen) < share if share > 0 else None
        if fill is not None and fill_tasks is not None and step >= pc.fill_steps + pc.fill_decay_steps:
            fill &= fill_tasks[dataset.prompt_index[idx]]
        loss = masked_diffusion_loss(backbone, prompt, x0, gen, pc.min_mask_ratio, fill, is_object)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), pc.grad_clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                d = min(pc.ema_decay, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), backbone.parameters(), strict=True):
                    pe.lerp_(pm, 1 - d)
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * loss.item()
        if step % pc.log_every == 0:
            bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{lr_at(step):.1e}")
        minutes = (time.perf_counter() - start) / 60
        if snapshot_dir is not None and next_snapshot is not None and minutes >= next_snapshot:
            path = Path(snapshot_dir) / f"step-{step + 1:06d}"
            save_checkpoint(path, ema or backbone, cfg, {"step": step + 1, "minutes": minutes})
            snapshots.append((minutes, step + 1, path))
            next_snapshot += pc.snapshot_every_min
        if pc.time_budget_min is not None and minutes >= pc.time_budget_min:
            break
    seconds = time.perf_counter() - start
    final = ema or backbone
    final.eval()
    ckpt = save_checkpoint(
        out, final, cfg, {"step": step + 1, "seconds": round(seconds, 1), "final_loss": round(loss_avg, 4)}
    )
    if snapshot_dir is not None:
        path = Path(snapshot_dir) / f"step-{step + 1:06d}"
        save_checkpoint(path, final, cfg, {"step": step + 1, "minutes": seconds / 60})
        snapshots.append((seconds / 60, step + 1, path))
    return PretrainResult(ckpt, step + 1, seconds, loss_avg, snapshots)
