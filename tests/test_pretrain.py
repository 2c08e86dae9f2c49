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
from htgrpo.pretrain import (
    PromptTable,
    fill_share,
    masked_diffusion_loss,
    object_codes,
    pretrain,
    scene_world,
)
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


# --- the fill curriculum ----------------------------------------------------------------------------------------


def test_fill_share_is_one_then_falls_linearly_to_zero():
    pc = CFG.pretrain.model_copy(update={"fill_steps": 3, "fill_decay_steps": 3, "fill_final_share": 0.0})
    assert [fill_share(pc, s) for s in range(8)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    off = CFG.pretrain.model_copy(update={"fill_steps": 0, "fill_decay_steps": 0, "fill_final_share": 0.0})
    assert [fill_share(off, s) for s in range(3)] == [0.0, 0.0, 0.0]
    sharp = CFG.pretrain.model_copy(update={"fill_steps": 2, "fill_decay_steps": 0, "fill_final_share": 0.0})
    assert [fill_share(sharp, s) for s in range(4)] == [1.0, 1.0, 0.0, 0.0]
    kept = CFG.pretrain.model_copy(update={"fill_steps": 1, "fill_decay_steps": 3, "fill_final_share": 0.2})
    assert [round(fill_share(kept, s), 6) for s in range(6)] == [1.0, 0.8, 0.6, 0.4, 0.2, 0.2]


def test_fill_mode_masks_exactly_the_object_cells(tokenizer, batch, monkeypatch):
    """Fill scenes: object cells masked, background visible, loss = mean CE on the object cells (weight 1, not
    1/t); a scene without object cells and a scene not flagged keep the random mask."""
    bb = make_backbone(tokenizer)
    prompts, x0 = batch
    x0 = x0.clone()
    is_object = torch.zeros(32, dtype=torch.bool)
    is_object[:6] = True
    x0[x0 < 6] += 6  # object codes only where placed below
    x0[1:6, :3] = torch.tensor([0, 1, 2])
    x0[1:6, 7] = 5
    fill = torch.tensor([True] * 6 + [False] * 2)
    calls = _capture_logits(bb, monkeypatch)
    loss = masked_diffusion_loss(
        bb, bb.encode_prompts(prompts), x0, torch.Generator().manual_seed(4), 0.0, fill, is_object
    )
    ((xt, logits),) = calls
    obj = is_object[x0]
    masked = xt == MASK_CODE
    for i in range(1, 6):
        assert torch.equal(masked[i], obj[i]), i
    assert masked[0].any() and not torch.equal(masked[0], obj[0])  # random mask, not the (empty) object set
    # the flagged rows' share of the loss is their plain CE on object cells
    ce = torch.nn.functional.cross_entropy(logits.detach().reshape(-1, 32), x0.reshape(-1), reduction="none")
    ce = ce.view(x0.shape)
    fill_part = float((ce[1:6] * obj[1:6]).sum()) / x0.numel()
    rest = loss.item() - fill_part
    assert rest > 0  # rows 0, 6, 7 add their 1/t-weighted terms
    loss.backward()
    grad = logits.grad.abs().sum(-1)
    assert (grad[1:6][~obj[1:6]] == 0).all() and (grad[1:6][obj[1:6]] > 0).all()
    with pytest.raises(ValueError, match="is_object"):
        masked_diffusion_loss(bb, bb.encode_prompts(prompts), x0, torch.Generator(), 0.0, fill, None)


def test_object_codes_are_the_codes_at_object_cells():
    """With a codebook as large as the world's distinct patches, a code is an object code exactly when it occurs
    at an object cell of fresh scenes, and never at a background cell."""
    from htgrpo.world.render import render, sample_scene

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, "tokenizer.codebook_size=256"])
    rng = np.random.default_rng(11)
    metas = [SPLITS.train[i] for i in draw_prompts(SPLITS.train, cfg.world.task_weights, 400, rng)]
    tok = PatchKMeansTokenizer.fit(render_rows(metas, rng, GRID), 256, iterations=2, seed=0, progress=False)
    flags = object_codes(cfg, tok, scenes=400)
    scenes = [sample_scene(m, rng, GRID) for m in metas[:100]]
    codes = tok.encode(np.stack([render(sc) for sc in scenes]))
    for k, sc in enumerate(scenes):
        cells = {o.row * GRID + o.col for o in sc.objects}
        for cell in range(N):
            assert bool(flags[codes[k, cell]]) == (cell in cells), (k, cell)


def test_pretrain_runs_the_fill_curriculum(tmp_path, monkeypatch):
    """pretrain() flags every scene for fill mode during fill_steps, a falling share after, none at the end."""
    import htgrpo.pretrain as pre

    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            *SMALL,
            "pretrain.steps=8",
            "pretrain.batch_size=16",
            "pretrain.fill_steps=2",
            "pretrain.fill_decay_steps=3",
            "pretrain.fill_final_share=0.0",
            "world.dataset_size=128",
            f"world.cache_dir={tmp_path / 'cache'}",
            "tokenizer.codebook_size=32",
            "tokenizer.train_images=64",
            "tokenizer.iterations=2",
        ],
    )
    shares: list[float] = []
    real = pre.masked_diffusion_loss

    def spy(backbone, prompt, x0, generator, min_ratio=0.0, fill=None, is_object=None):
        shares.append(0.0 if fill is None else fill.float().mean().item())
        assert fill is None or is_object is not None
        return real(backbone, prompt, x0, generator, min_ratio, fill, is_object)

    monkeypatch.setattr(pre, "masked_diffusion_loss", spy)
    pre.pretrain(cfg, tmp_path / "base", progress=False)
    assert shares[:2] == [1.0, 1.0]
    assert all(0.0 <= s < 1.0 for s in shares[2:5]) and sum(shares[2:5]) > 0
    assert shares[5:] == [0.0, 0.0, 0.0]


def test_after_the_hand_over_fill_mode_keeps_to_fill_final_tasks(tmp_path, monkeypatch):
    """fill_final_share=1 with fill_final_tasks=[colors]: after the hand-over exactly the colors scenes (those
    not dropped to the unconditional prompt by chance of the draw) are flagged, and no other scene."""
    import htgrpo.pretrain as pre

    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            *SMALL,
            "pretrain.steps=5",
            "pretrain.batch_size=64",
            "pretrain.fill_steps=1",
            "pretrain.fill_decay_steps=0",
            "pretrain.fill_final_share=1.0",
            "pretrain.fill_final_tasks=[colors]",
            "pretrain.cond_dropout=0.0",
            "world.dataset_size=256",
            f"world.cache_dir={tmp_path / 'cache'}",
            "tokenizer.codebook_size=32",
            "tokenizer.train_images=64",
            "tokenizer.iterations=2",
        ],
    )
    seen: list[tuple[bool, bool]] = []  # (flagged, is a colors prompt) per scene after the hand-over
    real = pre.masked_diffusion_loss
    step = {"n": 0}

    def spy(backbone, prompt, x0, generator, min_ratio=0.0, fill=None, is_object=None):
        if step["n"] >= 1:
            colors = {
                tuple(backbone.encode_prompts([r["prompt"]]).input_ids[0].tolist())
                for r in SPLITS.train
                if r["tag"] == "colors"
            }
            # rows are left-padded, so a prompt's own ids end the row
            for row, flag in zip(prompt.input_ids.tolist(), fill.tolist(), strict=True):
                seen.append((flag, any(tuple(row[-len(c) :]) == c for c in colors)))
        step["n"] += 1
        return real(backbone, prompt, x0, generator, min_ratio, fill, is_object)

    monkeypatch.setattr(pre, "masked_diffusion_loss", spy)
    pre.pretrain(cfg, tmp_path / "base", progress=False)
    assert len(seen) == 4 * 64
    assert any(c for _, c in seen) and not all(c for _, c in seen)
    assert all(flag == colour for flag, colour in seen)


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


def test_pretrain_task_weights_set_the_scene_mix_and_leave_the_rl_mix():
    unset = load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, "pretrain.task_weights=null"])
    assert scene_world(unset) is unset.world  # unset: the pretraining scenes follow world.task_weights
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml", [*SMALL, "pretrain.task_weights={color_attr: 3, counting: 1}"]
    )
    world = scene_world(cfg)
    assert world.task_weights == {"color_attr": 3.0, "counting": 1.0}
    assert cfg.world.task_weights == CFG.world.task_weights  # RL still draws its prompts by the world's mix
    index = draw_prompts(SPLITS.train, world.task_weights, 4000, np.random.default_rng(0))
    tags = [SPLITS.train[i]["tag"] for i in index]
    assert set(tags) == {"color_attr", "counting"}
    assert 0.70 < tags.count("color_attr") / len(tags) < 0.80


@pytest.mark.parametrize("stage", ["tokenizer", "object_codes"])
def test_tokenizer_and_object_codes_draw_from_the_pretraining_mix(monkeypatch, stage):
    import htgrpo.pretrain as pretrain_module

    class Drawn(Exception):
        pass

    def record(rows, weights, n, rng):
        raise Drawn(dict(weights))

    monkeypatch.setattr(pretrain_module, "draw_prompts", record)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, "pretrain.task_weights={color_attr: 3}"])
    with pytest.raises(Drawn) as drawn:
        if stage == "tokenizer":
            pretrain_module.train_tokenizer(cfg, progress=False)
        else:
            object_codes(cfg, tokenizer=None, scenes=8)
    assert drawn.value.args[0] == {"color_attr": 3.0}
