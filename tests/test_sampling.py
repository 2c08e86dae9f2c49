"""Samplers on a tiny random backbone (16 codes, 4x4 grid): schedules, records, determinism, CFG, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from htgrpo.backbones.base import MASK_CODE
from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.config import BackboneConfig, SamplerConfig
from htgrpo.sampling import SampleResult, emerge_sample, maskgit_sample, sample
from htgrpo.sampling.schedule import (
    cosine_masked_counts,
    emerge_expected_reveal_fractions,
    emerge_stay_probs,
    remask_noise_scales,
)
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer

N, K = 16, 16
PROMPTS = [
    "a photo of a red circle",
    "a photo of two squares",
    "a photo of a blue triangle and a green ring",
    "a photo of a cross left of a diamond",
    "a photo of a ring",
]
SAMPLERS = [maskgit_sample, emerge_sample]


@pytest.fixture(scope="module")
def backbone() -> TinyBackbone:
    torch.manual_seed(0)
    cfg = BackboneConfig(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64)
    bb = TinyBackbone(cfg, PatchKMeansTokenizer(torch.rand(K, 192)), grid=4)
    # Random init is near uniform over codes; sharpen the head so samples and CFG actually depend on the seed.
    with torch.no_grad():
        bb.net.model.transformer["ff_out"].weight.mul_(50.0)
    return bb.eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), -1)
    return -(logp.exp() * logp).sum(-1)


# --- schedules -----------------------------------------------------------------------------------------


def test_cosine_counts_match_mmada_and_end_at_zero():
    counts = cosine_masked_counts(16, 8)
    # §2.6: masked counts entering each step of MMaDA (N=16, T=8) are 16, 15, 14, 13, 11, 8, 6, 3.
    assert [16, *counts[:-1]] == [16, 15, 14, 13, 11, 8, 6, 3]
    assert counts[-1] == 0


def test_cosine_counts_use_float32_like_the_official_samplers():
    # MMaDA at 512^2 (1,024 tokens), T = 15: after step 10 of 15 the ratio is cos(pi/3). In float32 that is
    # 0.49999997 (1,024 x it = 511.99997), in float64 0.5000000000000001 (512.0000000000001).
    assert float(np.float32(0.49999997)) < 0.5 < math.cos(math.pi / 3)
    counts = cosine_masked_counts(1024, 15)
    assert counts[9] == 511
    assert math.floor(1024 * math.cos(math.pi / 2 * 10 / 15)) == 512  # what float64 would keep
    assert counts[-1] == 0


def test_cosine_counts_commit_at_least_one_per_step():
    counts = cosine_masked_counts(4, 8)  # T > N: the floor alone would stall
    before = [4, *counts[:-1]]
    assert all(c < b for b, c in zip(before, counts, strict=True) if b > 0)
    assert counts == [3, 2, 1, 0, 0, 0, 0, 0]
    big = cosine_masked_counts(1024, 16)
    assert big[0] == math.floor(1024 * math.cos(math.pi / 32)) and big[-1] == 0


def test_remask_noise_annealed_compounds_and_constant_is_flat():
    got = remask_noise_scales(1.0, 8, "annealed")
    want = [
        0.875,
        0.65625,
        0.41015625,
        0.205078125,
        0.076904296875,
        0.01922607421875,
        0.00240325927734375,
        0.0,
    ]
    assert got == pytest.approx(want, abs=1e-12)
    assert [round(x, 3) for x in got[:3]] == [0.875, 0.656, 0.410]
    assert remask_noise_scales(2.0, 8, "annealed") == pytest.approx([2 * w for w in want])
    assert remask_noise_scales(0.7, 5, "constant") == [0.7] * 5
    with pytest.raises(ValueError, match="noise schedule"):
        remask_noise_scales(1.0, 4, "linear")  # type: ignore[arg-type]


def test_emerge_schedule_reveals_everything():
    stay = emerge_stay_probs(12)
    assert stay[-1] == 0.0 and all(0 < p < 1 for p in stay[:-1])
    fr = emerge_expected_reveal_fractions(12)
    assert sum(fr) == pytest.approx(1.0)
    # Product of stay probabilities up to s equals k((s+1)/T).
    assert math.prod(stay[:5]) == pytest.approx(math.cos(math.pi / 2 * 5 / 12))


# --- records -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", SAMPLERS)
def test_every_token_committed_with_valid_records(backbone, fn):
    cfg = SamplerConfig(steps=8, cfg_scale=2.0)
    res = fn(backbone, PROMPTS, cfg, gen())
    assert isinstance(res, SampleResult) and len(res) == len(PROMPTS)
    assert res.codes.shape == (len(PROMPTS), N) and res.codes.dtype == torch.long
    assert not (res.codes == MASK_CODE).any()
    assert int(res.codes.min()) >= 0 and int(res.codes.max()) < K
    assert res.commit_step.dtype == torch.long
    assert int(res.commit_step.min()) >= 1 and int(res.commit_step.max()) <= 8
    for h in (res.entropy_commit, res.entropy0):
        assert h.shape == (len(PROMPTS), N) and h.dtype == torch.float32
        assert bool(((h >= -1e-5) & (h <= math.log(K) + 1e-5)).all())
    assert res.forward_passes == 16
    assert 0 < res.model_seconds <= res.total_seconds
    assert 0 <= res.outside_model_share < 1
    assert res.decode(backbone).shape == (len(PROMPTS), 32, 32, 3)


def test_maskgit_commit_counts_follow_cosine_schedule(backbone):
    for steps in (8, 12):
        res = maskgit_sample(backbone, PROMPTS, SamplerConfig(steps=steps), gen(1))
        counts = cosine_masked_counts(N, steps)
        want = torch.tensor([b - a for b, a in zip([N, *counts[:-1]], counts, strict=True)])
        per_step = torch.stack([(res.commit_step == s + 1).sum(1) for s in range(steps)], 1)
        assert torch.equal(per_step, want.expand(len(PROMPTS), steps))


def test_maskgit_stops_when_schedule_is_exhausted(backbone):
    res = maskgit_sample(backbone, PROMPTS[:2], SamplerConfig(steps=24, cfg_scale=1.0), gen())
    assert res.forward_passes == 2 * N  # one token per step: steps 17..24 would be no-op forwards
    assert int(res.commit_step.max()) == N
    assert all(sorted(row.tolist()) == list(range(1, N + 1)) for row in res.commit_step)


def test_maskgit_commits_most_confident_first(backbone, monkeypatch):
    # Position i allows 16-i equally likely codes, so log p(sampled) = -log(16-i) whatever is drawn. Without
    # remask noise the commit order is therefore exactly position 15, 14, ..., 0.
    logits = torch.zeros(N, K)
    for i in range(N):
        logits[i, K - i :] = float("-inf")
    monkeypatch.setattr(backbone, "logits", lambda prompt, state: logits.expand(state.shape[0], N, K))
    cfg = SamplerConfig(steps=8, cfg_scale=0.0, remask_noise=0.0)
    res = maskgit_sample(backbone, PROMPTS[:2], cfg, gen())
    counts = cosine_masked_counts(N, 8)
    want = torch.empty(N, dtype=torch.long)
    order = list(range(N - 1, -1, -1))
    done = 0
    for s, c in enumerate(counts):
        for pos in order[done : N - c]:
            want[pos] = s + 1
        done = N - c
    assert torch.equal(res.commit_step, want.expand(2, N))
    ent = torch.tensor([math.log(K - i) for i in range(N)])
    assert torch.allclose(res.entropy_commit, ent.expand(2, N), atol=1e-5)
    assert torch.allclose(res.entropy0, ent.expand(2, N), atol=1e-5)
    assert bool((res.codes < (K - torch.arange(N))).all())  # never a code the position forbids


@pytest.mark.parametrize("g", [0.0, 2.5])
@pytest.mark.parametrize("fn", SAMPLERS)
def test_entropy0_matches_independent_step0_forward(backbone, fn, g):
    cfg = SamplerConfig(steps=6, cfg_scale=g)
    res = fn(backbone, PROMPTS, cfg, gen())
    with torch.no_grad():
        x = backbone.fully_masked(len(PROMPTS))
        cond = backbone.logits(backbone.encode_prompts(PROMPTS), x)  # separate calls: no shared padding
        uncond = backbone.logits(backbone.encode_uncond(len(PROMPTS)), x)
    guided = (1 + g) * cond - g * uncond
    assert torch.allclose(res.entropy0.double(), entropy(guided), atol=1e-4)
    if g > 0:  # guidance must actually matter for this to test anything
        assert (entropy(guided) - entropy(cond)).abs().max() > 1e-2


# --- determinism and chunking --------------------------------------------------------------------------


@pytest.mark.parametrize("fn", SAMPLERS)
def test_same_seed_same_result_different_seed_different_codes(backbone, fn):
    cfg = SamplerConfig(steps=6, cfg_scale=1.5)
    a, b, c = (
        fn(backbone, PROMPTS, cfg, gen(7)),
        fn(backbone, PROMPTS, cfg, gen(7)),
        fn(backbone, PROMPTS, cfg, gen(8)),
    )
    for name in ("codes", "commit_step", "entropy_commit", "entropy0"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.codes, c.codes)


@pytest.mark.parametrize("fn", SAMPLERS)
def test_chunking_keeps_shapes_and_determinism(backbone, fn):
    prompts = PROMPTS + PROMPTS[:2]  # 7 prompts in chunks of 3, 3, 1
    cfg = SamplerConfig(steps=5, cfg_scale=2.0, batch_size=3)
    a, b = fn(backbone, prompts, cfg, gen(3)), fn(backbone, prompts, cfg, gen(3))
    full = fn(backbone, prompts, cfg.model_copy(update={"batch_size": 64}), gen(3))
    for name in ("codes", "commit_step", "entropy_commit", "entropy0"):
        assert getattr(a, name).shape == getattr(full, name).shape == (7, N)
        assert torch.equal(getattr(a, name), getattr(b, name))
    # entropy0 does not depend on the random draws, so chunking must not change it.
    assert torch.allclose(a.entropy0, full.entropy0, atol=1e-5)
    assert a.forward_passes == full.forward_passes == 10


def test_chunks_forward_at_most_batch_size_images(backbone, monkeypatch):
    rows = []
    real = backbone.logits

    def spy(prompt, state):
        rows.append(state.shape[0])
        return real(prompt, state)

    monkeypatch.setattr(backbone, "logits", spy)
    maskgit_sample(backbone, PROMPTS, SamplerConfig(steps=4, cfg_scale=1.0, batch_size=2), gen())
    assert rows == [4] * 4 + [4] * 4 + [2] * 4  # chunks of 2, 2, 1 prompts, doubled by CFG, 4 steps each


# --- CFG -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", SAMPLERS)
def test_cfg_zero_halves_forward_passes(backbone, fn, monkeypatch):
    rows = []
    real = backbone.logits

    def spy(prompt, state):
        rows.append(state.shape[0])
        return real(prompt, state)

    monkeypatch.setattr(backbone, "logits", spy)
    on = fn(backbone, PROMPTS, SamplerConfig(steps=6, cfg_scale=3.0), gen())
    rows_on, rows[:] = sum(rows), []
    off = fn(backbone, PROMPTS, SamplerConfig(steps=6, cfg_scale=0.0), gen())
    assert on.forward_passes == 2 * off.forward_passes == 12
    assert rows_on == 2 * sum(rows) == 2 * 6 * len(PROMPTS)
    assert len(rows) == 6  # one forward per step either way


@pytest.mark.parametrize("fn", SAMPLERS)
def test_cfg_formula_on_fixed_logits(backbone, fn, monkeypatch):
    g = 3.0
    cond = torch.zeros(K)
    uncond = torch.zeros(K)
    cond[1], uncond[1] = 20.0, 20.0  # both branches alone prefer code 1 ...
    cond[2], uncond[2] = 10.0, 0.0  # ... but (1+g)*10 - g*0 = 40 beats (1+g)*20 - g*20 = 20: guided picks 2
    calls = []
    uncond_ids = backbone.encode_uncond(1).input_ids[0]

    def fake(prompt, state):
        b = state.shape[0] // 2
        calls.append((prompt, state))
        assert torch.equal(state[:b], state[b:])
        return torch.cat([cond.expand(b, N, K), uncond.expand(b, N, K)])

    monkeypatch.setattr(backbone, "logits", fake)
    res = fn(backbone, PROMPTS[:3], SamplerConfig(steps=4, cfg_scale=g), gen())
    assert bool((res.codes == 2).all())
    want = entropy((1 + g) * cond - g * uncond).float()
    assert torch.allclose(res.entropy0, want.expand(3, N), atol=1e-6)
    prompt = calls[0][0]
    assert len(prompt) == 6
    real = backbone.encode_prompts(PROMPTS[:3])
    for i in range(3):  # first half: the conditional template; second half: the unconditional one
        assert torch.equal(
            prompt.input_ids[i][prompt.attention_mask[i].bool()],
            real.input_ids[i][real.attention_mask[i].bool()],
        )
        assert torch.equal(prompt.input_ids[3 + i][prompt.attention_mask[3 + i].bool()], uncond_ids)


# --- emerge statistics and misc ------------------------------------------------------------------------


def test_emerge_reveals_follow_cosine_schedule_on_average(backbone):
    steps, n_img = 6, 192
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_img)]
    res = emerge_sample(backbone, prompts, SamplerConfig(kind="emerge", steps=steps, cfg_scale=0.0), gen(11))
    got = torch.stack([(res.commit_step == s + 1).float().mean() for s in range(steps)])
    want = torch.tensor(emerge_expected_reveal_fractions(steps))
    # 3072 tokens per step: the standard error of each share is below 0.01.
    assert (got - want).abs().max() < 0.04, (got, want)
    # Random order: unlike MaskGIT, the per-image count at a step varies.
    assert (res.commit_step == 1).sum(1).unique().numel() > 1


def test_restores_training_mode_and_runs_in_eval(backbone, monkeypatch):
    seen = []
    real = backbone.logits

    def spy(prompt, state):
        seen.append((backbone.training, torch.is_grad_enabled()))
        return real(prompt, state)

    monkeypatch.setattr(backbone, "logits", spy)
    backbone.train()
    try:
        maskgit_sample(backbone, PROMPTS[:2], SamplerConfig(steps=3), gen())
        assert backbone.training
    finally:
        backbone.eval()
    assert seen and all(mode == (False, False) for mode in seen)
    emerge_sample(backbone, PROMPTS[:2], SamplerConfig(steps=3), gen())
    assert not backbone.training


def test_sample_dispatches_on_kind(backbone):
    cfg = SamplerConfig(kind="emerge", steps=5, cfg_scale=1.0)
    a, b = sample(backbone, PROMPTS, cfg, gen(5)), emerge_sample(backbone, PROMPTS, cfg, gen(5))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.commit_step, b.commit_step)
    cfg = cfg.model_copy(update={"kind": "maskgit"})
    a, b = sample(backbone, PROMPTS, cfg, gen(5)), maskgit_sample(backbone, PROMPTS, cfg, gen(5))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.commit_step, b.commit_step)


def test_empty_prompt_list(backbone):
    res = maskgit_sample(backbone, [], SamplerConfig(steps=4), gen())
    assert res.codes.shape == (0, N) and res.commit_step.shape == (0, N)


def test_entropies_are_of_the_temperature_scaled_distribution(backbone):
    cfg = SamplerConfig(steps=4, cfg_scale=1.0, temperature=0.5)
    res = maskgit_sample(backbone, PROMPTS, cfg, gen())
    with torch.no_grad():
        x = backbone.fully_masked(len(PROMPTS))
        cond = backbone.logits(backbone.encode_prompts(PROMPTS), x)
        uncond = backbone.logits(backbone.encode_uncond(len(PROMPTS)), x)
    assert torch.allclose(res.entropy0.double(), entropy((2 * cond - uncond) / 0.5), atol=1e-4)


def test_confidence_is_the_untempered_probability_at_any_temperature():
    """Lumina-DiMOO draws at temperature t but ranks commits by softmax(guided) without t (§2.6)."""
    from htgrpo.sampling.core import draw_codes

    guided = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]]])
    for t in (0.5, 1.0, 2.0):
        draw = draw_codes(guided, t, torch.Generator().manual_seed(0))
        want = torch.log_softmax(guided, -1).gather(-1, draw.codes[..., None])[..., 0]
        assert torch.allclose(draw.logp, want, atol=1e-6)
        tempered = torch.softmax(guided / t, -1)
        assert torch.allclose(draw.entropy, torch.special.entr(tempered).sum(-1), atol=1e-6)
        if t != 1.0:  # the tempered probability would rank differently
            picked = tempered.gather(-1, draw.codes[..., None])[..., 0].log()
            assert not torch.allclose(draw.logp, picked, atol=1e-3)
