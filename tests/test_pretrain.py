"""Masked-diffusion pretraining: the loss, a tiny end-to-end pretrain() run, and a real overfitting check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from htgrpo.backbones.base import MASK_CODE
from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.checkpoint import load_checkpoint, verify_checkpoint
from htgrpo.config import load_config
from htgrpo.pretrain import PromptTable, masked_diffusion_loss, pretrain
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer
from htgrpo.world.dataset import draw_prompts, render_rows, splits_for

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "backbone.d_model=32",
    "backbone.n_layers=2",
    "backbone.n_heads=2",
    "backbone.mlp_hidden_size=64",
]
CFG = load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, "tokenizer.codebook_size=32"])
SPLITS = splits_for(CFG.world)
GRID = CFG.world.grid
N = GRID * GRID


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: much faster for tiny models when the CPU is shared with a training job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, list[dict]]:
    """64 training scenes and their prompts (the tokenizer is fitted on all, the batch is the first 8)."""
    rng = np.random.default_rng(3)
    index = draw_prompts(SPLITS.train, CFG.world.task_weights, 64, rng)
    metas = [SPLITS.train[i] for i in index]
    return render_rows(metas, rng, GRID, SPLITS.unseen_pairs), metas


@pytest.fixture(scope="module")
def tokenizer(scenes) -> PatchKMeansTokenizer:
    images, _ = scenes
    return PatchKMeansTokenizer.fit(images, 32, iterations=2, seed=0, progress=False)


def make_backbone(tokenizer: PatchKMeansTokenizer, seed: int = 0) -> TinyBackbone:
    torch.manual_seed(seed)
    return TinyBackbone(CFG.backbone, tokenizer, GRID)


@pytest.fixture(scope="module")
def batch(scenes, tokenizer):
    images, metas = scenes
    x0 = tokenizer.encode(images[:8])
    return [m["prompt"] for m in metas[:8]], x0


# --- the loss -------------------------------------------------------------------------------------------------


def test_loss_is_finite_and_positive(tokenizer, batch):
    bb = make_backbone(tokenizer)
    prompts, x0 = batch
    loss = masked_diffusion_loss(bb, bb.encode_prompts(prompts), x0, torch.Generator().manual_seed(0))
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert loss.item() > 0
    # a freshly initialised model is close to uniform over the codebook: E[loss] ~ log K
    losses = [
        masked_diffusion_loss(bb, bb.encode_prompts(prompts), x0, torch.Generator().manual_seed(s)).item()
        for s in range(8)
    ]
    assert 0.5 * math.log(32) < float(np.mean(losses)) < 2.0 * math.log(32)


def _capture_logits(bb: TinyBackbone, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = bb.logits

    def spy(prompt, image_state):
        out = real(prompt, image_state)
        out.retain_grad()
        calls.append((image_state.clone(), out))
        return out

    monkeypatch.setattr(bb, "logits", spy)
    return calls


@pytest.mark.parametrize("min_ratio", [0.0, 0.9])
def test_gradient_flows_only_through_masked_tokens(tokenizer, batch, monkeypatch, min_ratio):
    bb = make_backbone(tokenizer)
    prompts, x0 = batch
    calls = _capture_logits(bb, monkeypatch)
    loss = masked_diffusion_loss(
        bb, bb.encode_prompts(prompts), x0, torch.Generator().manual_seed(1), min_ratio
    )
    loss.backward()
    ((xt, logits),) = calls
    masked = xt == MASK_CODE
    # the corrupted state keeps the clean codes where it is not masked, and every scene has a masked token
    assert torch.equal(xt[~masked], x0[~masked])
    assert masked.any(1).all()
    if min_ratio == 0.9:
        assert masked.float().mean() > 0.8
    grad = logits.grad.abs().sum(-1)  # [B, N]
    assert (grad[~masked] == 0).all()
    assert (grad[masked] > 0).all()
    # and the parameters receive a gradient
    assert bb.net.model.transformer["wte"].weight.grad.abs().sum() > 0
    assert bb.net.model.transformer["ff_out"].weight.grad.abs().sum() > 0


def test_every_scene_scores_a_token_even_at_tiny_ratios(tokenizer, monkeypatch):
    """With t clamped to 1/N and a forced mask, no scene is left without a masked token."""
    bb = make_backbone(tokenizer)
    calls = _capture_logits(bb, monkeypatch)
    x0 = torch.zeros(64, N, dtype=torch.long)
    prompts = bb.encode_uncond(64)
    for seed in range(3):
        masked_diffusion_loss(bb, prompts, x0, torch.Generator().manual_seed(seed))
    for xt, _ in calls:
        assert (xt == MASK_CODE).any(1).all()


def test_loss_is_zero_for_a_perfect_model(tokenizer, batch, monkeypatch):
    """A model that puts all its mass on the right code has (near) zero loss: the loss scores the clean codes."""
    bb = make_backbone(tokenizer)
    prompts, x0 = batch

    def oracle(prompt, image_state):
        return torch.nn.functional.one_hot(x0, 32).float() * 100.0

    monkeypatch.setattr(bb, "logits", oracle)
    loss = masked_diffusion_loss(bb, bb.encode_prompts(prompts), x0, torch.Generator().manual_seed(0))
    assert 0 <= loss.item() < 1e-6


# --- learning ---------------------------------------------------------------------------------------------------


def test_loss_goes_down_when_overfitting_a_fixed_batch(tokenizer, batch):
    bb = make_backbone(tokenizer)
    prompts, x0 = batch
    prompt = bb.encode_prompts(prompts)

    def eval_loss() -> float:
        # the same masks every time: average over a few fixed draws
        with torch.no_grad():
            return float(
                np.mean(
                    [
                        masked_diffusion_loss(bb, prompt, x0, torch.Generator().manual_seed(100 + s)).item()
                        for s in range(4)
                    ]
                )
            )

    bb.train()
    before = eval_loss()
    opt = torch.optim.AdamW(bb.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss = masked_diffusion_loss(bb, prompt, x0, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_prompt_table_drops_to_the_unconditional_row(tokenizer):
    bb = make_backbone(tokenizer)
    prompts = SPLITS.train[:5]
    table = PromptTable(bb, prompts)
    index = torch.tensor([0, 3, 4])
    got = table.batch(index, torch.tensor([False, True, False]))
    uncond = bb.encode_uncond(1)
    width = table.ids.shape[1]
    assert got.input_ids.shape == (3, width)
    # row 1 is the unconditional template (left-padded), rows 0 and 2 their prompts
    assert got.input_ids[1, -3:].tolist() == uncond.input_ids[0].tolist()
    assert got.attention_mask[1].sum() == 3
    cond = bb.encode_prompts([prompts[0]["prompt"]]).input_ids[0]
    assert got.input_ids[0, -len(cond) :].tolist() == cond.tolist()


def test_tiny_pretrain_run_writes_a_loadable_checkpoint(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            *SMALL,
            "pretrain.steps=6",
            "pretrain.batch_size=8",
            "pretrain.warmup_steps=2",
            "world.dataset_size=256",
            f"world.cache_dir={tmp_path / 'cache'}",
            "tokenizer.codebook_size=32",
            "tokenizer.train_images=64",
            "tokenizer.iterations=2",
        ],
    )
    out = tmp_path / "base"
    result = pretrain(cfg, out, progress=False)
    assert result.checkpoint == out
    assert result.steps == 6
    assert math.isfinite(result.final_loss) and result.final_loss > 0
    assert result.snapshots == []
    # the rendered dataset was cached where the config said
    assert len(list((tmp_path / "cache").glob("world-v*.safetensors"))) == 1
    meta = verify_checkpoint(out)
    assert meta["extra"]["step"] == 6
    assert meta["backbone"]["codebook_size"] == 32
    backbone, saved_cfg = load_checkpoint(out, cfg)
    assert saved_cfg == cfg
    assert backbone.layout.codebook_size == 32
    with torch.no_grad():
        logits = backbone.logits(
            backbone.encode_prompts(["a photo of a red circle"]), backbone.fully_masked(1)
        )
    assert logits.shape == (1, N, 32)
    assert torch.isfinite(logits).all()
    # nothing but the checkpoint and the cache was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cache"]

    # continuing from that checkpoint keeps its tokenizer and starts from its weights
    first = {k: v.clone() for k, v in backbone.state_dict().items()}
    more = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"steps": 1, "ema_decay": 0.0})})
    cont = pretrain(more, tmp_path / "cont", progress=False, init=out)
    again, _ = load_checkpoint(cont.checkpoint, more)
    assert torch.equal(again.image_tokenizer.codebook, backbone.image_tokenizer.codebook)
    moved = [k for k in first if not torch.equal(first[k], again.state_dict()[k])]
    assert moved, "one optimizer step should change the weights"
    # a single small step from the loaded weights: close to them, unlike a fresh initialisation
    delta = max((first[k] - again.state_dict()[k]).abs().max().item() for k in first)
    assert delta < 0.05
