"""Each estimator's plans match its definition (algorithm.md §4.6, §5)."""

from __future__ import annotations

import math

import pytest
import torch

from htgrpo.config import RLConfig
from htgrpo.rl.estimators import ESTIMATORS, build_estimator
from htgrpo.rl.estimators.htgrpo import stage_ratios
from htgrpo.rl.estimators.maskgrpo import maskgrpo_ratios
from htgrpo.rl.hierarchy import partition_order, partition_tokens
from rl_tiny import N, fake_record, tiny_backbone


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


def plans_for(backbone, batch=4, seed=0, **rl):
    record = fake_record(batch=batch, backbone=backbone)
    est = build_estimator(RLConfig(**rl))
    return est, record, est.build_plans(record, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_every_method_plans_k_iterations_reproducibly(backbone, method):
    est, record, plans = plans_for(backbone, method=method)
    assert len(plans) == est.num_iterations(record.rollout_steps)
    _, _, again = plans_for(backbone, method=method)
    for a, b in zip(plans, again, strict=True):
        assert torch.equal(a.visible, b.visible) and torch.equal(a.update, b.update)
        assert torch.equal(a.prompt.input_ids, b.prompt.input_ids) and torch.equal(a.weights, b.weights)
        assert not (a.visible & a.update).any()  # a scored token is never visible to its own forward


def test_ht_grpo_stages_start_fully_masked_and_refinement_sees_the_structure(backbone):
    est, record, plans = plans_for(backbone, batch=8, method="ht-grpo")
    assert [p.stage for p in plans] == ["global"] * 2 + ["structure"] * 2 + ["refinement"] * 2
    assert [p.mask_ratio for p in plans] == pytest.approx([1.0, 0.7] * 3)
    s = partition_tokens(
        partition_order("commit", commit_step=record.commit_step, entropy_commit=record.entropy_commit), 0.25
    ).structure
    g0, g1, s0, s1, r0, r1 = plans
    # global: starts at V = 0 scoring everything; then a random re-mask
    assert not g0.visible.any() and g0.update.all()
    assert g1.visible.any() and torch.equal(g1.update, ~g1.visible)
    # structure: refinement tokens always hidden and never scored; first iteration scores all of S from nothing
    for p in (s0, s1):
        assert not (p.visible & ~s).any() and not (p.update & ~s).any()
        assert torch.equal(p.structure, s)
    assert not s0.visible.any() and torch.equal(s0.update, s)
    assert torch.equal(s1.update, s & ~s1.visible)
    # refinement: the whole structure is visible; U = masked refinement tokens; first iteration hides all of R
    for p in (r0, r1):
        assert p.visible[s].all() and not (p.update & s).any()
    assert torch.equal(r0.visible, s) and torch.equal(r0.update, ~s)
    assert torch.equal(r1.update, ~s & ~r1.visible)
    # the prompt is never masked; HCA weights average 1 per image
    for p in plans:
        assert torch.equal(p.prompt.input_ids, record.prompt.input_ids)
        torch.testing.assert_close(p.weights.mean(1), torch.ones(8))


def test_ht_grpo_fully_masked_variant_only_changes_u(backbone):
    _, _, plans = plans_for(backbone, method="ht-grpo", estimator="fully_masked")
    s = plans[0].structure
    assert all(not p.visible.any() for p in plans)
    assert [p.update.sum().item() for p in plans] == [4 * N] * 2 + [int(s.sum())] * 2 + [int((~s).sum())] * 2


def test_stage_ratio_schedule():
    assert stage_ratios(1, 0.7) == [1.0]
    assert stage_ratios(3, 0.7) == pytest.approx([1.0, 0.85, 0.7])
    assert maskgrpo_ratios(6, 0.6) == pytest.approx([0.6 + 0.4 * k / 6 for k in range(1, 6)] + [0.999])


def test_maskgrpo_ratio_rises_and_u_is_the_masked_tokens(backbone):
    _, _, plans = plans_for(backbone, batch=64, method="maskgrpo")
    ratios = [p.mask_ratio for p in plans]
    assert ratios == sorted(ratios) and ratios[0] == pytest.approx(0.6 + 0.4 / 6) and ratios[-1] == 0.999
    observed = [p.update.float().mean().item() for p in plans]
    assert observed == pytest.approx(ratios, abs=0.03)
    for p in plans:
        assert torch.equal(p.update, ~p.visible) and (p.weights == 1).all()


def test_unigrpo_ratios_are_spaced_per_sample(backbone):
    est = build_estimator(RLConfig(method="unigrpo"))
    ratios = est.sample_ratios(5, torch.Generator().manual_seed(0))
    k = ratios.shape[0]
    torch.testing.assert_close(ratios[1:] - ratios[:-1], torch.full((k - 1, 5), 1 / k))
    assert (ratios[0] >= 0).all() and (ratios[0] < 1 / k).all()
    _, _, plans = plans_for(backbone, batch=64, method="unigrpo")
    observed = [p.update.float().mean().item() for p in plans]
    assert observed == sorted(observed)
    assert all(torch.equal(p.update, ~p.visible) for p in plans)


def test_d1_masks_only_prompt_words(backbone):
    est, record, plans = plans_for(backbone, batch=64, method="d1")
    assert len(plans) == 12
    words = record.prompt_words
    ids = record.prompt.input_ids
    specials = {backbone.text.special(t) for t in ("<|t2i|>", "<bos>", "<eos>", "<pad>")}
    assert all(int(i) in specials for i in ids[~words].unique())
    hits = []
    for p in plans:
        assert not p.visible.any() and p.update.all()
        changed = p.prompt.input_ids != ids
        assert not (changed & ~words).any()  # specials and padding untouched
        assert (p.prompt.input_ids[changed] == record.mask_id).all()
        assert torch.equal(p.prompt.attention_mask, record.prompt.attention_mask)
        hits.append(changed[words].float().mean().item())
    assert sum(hits) / len(hits) == pytest.approx(0.15, abs=0.03)
    assert len({tuple(p.prompt.input_ids.flatten().tolist()) for p in plans}) == len(
        plans
    )  # fresh per iteration


@pytest.mark.parametrize("shrink", [1, 3])
def test_tracegrpo_replays_the_trajectory_and_partitions_the_tokens(backbone, shrink):
    est, record, plans = plans_for(backbone, method="tracegrpo", trace_shrink=shrink)
    assert len(plans) == math.ceil(record.rollout_steps / shrink)
    total = torch.zeros_like(record.commit_step)
    for j, p in enumerate(plans):
        total += p.update.long()
        lo = j * shrink + 1
        assert torch.equal(p.visible, record.commit_step < lo)
        steps = record.commit_step[p.update]
        assert ((steps >= lo) & (steps < lo + shrink)).all()
    assert (total == 1).all()  # every token scored exactly once


def test_coupled_pairs_are_complementary(backbone):
    _, _, plans = plans_for(backbone, batch=64, method="coupled")
    assert len(plans) == 6
    for a, b in zip(plans[::2], plans[1::2], strict=True):
        assert torch.equal(a.update, ~b.update) and torch.equal(a.visible, b.update)
        assert torch.equal(a.update, ~a.visible)
    # t ~ U[0.1, 0.9] per sample: the masked share averages 0.5 and varies between samples
    ratios = torch.stack([p.update.float().mean(1) for p in plans[::2]])
    assert ratios.mean().item() == pytest.approx(0.5, abs=0.05)
    assert ratios.std().item() > 0.15
    assert plans[0].mask_ratio + plans[1].mask_ratio == pytest.approx(1.0)
