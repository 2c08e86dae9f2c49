"""rl.score_cfg: the scored forward's log-probs are those of the guided distribution the rollout sampled from."""

from __future__ import annotations

import torch

from htgrpo.backbones.base import MASK_CODE
from htgrpo.rl.loss import guided_log_probs, policy_log_probs
from htgrpo.rl.trainer import GRPOTrainer
from htgrpo.sampling.core import GuidedForward
from rl_tiny import N, tiny_backbone, tiny_config
from test_rl_partition_rules import varied_reward  # noqa: F401 (fixture)


def test_guided_log_probs_match_the_sampler_s_guided_logits():
    bb = tiny_backbone()
    texts = ["a photo of a red circle", "a photo of three rings"]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(16, (2, N), generator=g)
    visible = torch.rand(2, N, generator=g) < 0.5
    state = torch.where(visible, codes, torch.full_like(codes, MASK_CODE))
    with torch.no_grad():
        sampler_logits = GuidedForward(bb, texts, 2.5, torch.device("cpu"))(state)
        want = torch.log_softmax(sampler_logits, -1).gather(-1, codes[..., None])[..., 0]
        got = guided_log_probs(bb, bb.encode_prompts(texts), bb.encode_uncond(2), codes, visible, 2.5)
        plain = policy_log_probs(bb, bb.encode_prompts(texts), codes, visible)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # guidance changes the distribution scored


def test_score_cfg_keeps_the_ratio_at_one_first_and_costs_two_branches(varied_reward):  # noqa: F811
    trainer = GRPOTrainer(tiny_config(score_cfg=True, rewards=varied_reward), tiny_backbone(), progress=False)
    rec = trainer.train_step()
    first = rec["iterations"][0]
    assert first["ratio_min"] == first["ratio_max"] == 1.0 and first["clip_frac"] == 0.0
    k = trainer.num_iterations
    fp = rec["forward_passes_per_sample"]
    assert fp["old"] == fp["ref"] == fp["train"] == 2 * k
