"""THE HT-GRPO LOSS (§4.8): a hand-computed example, gradients only on U, ratio 1 at theta = theta_old."""

from __future__ import annotations

import math

import pytest
import torch

from htgrpo.rl.advantages import group_advantages
from htgrpo.rl.loss import grpo_loss, policy_log_probs, token_log_probs
from rl_tiny import fake_record, tiny_backbone

# 2 samples x 3 tokens
L = [[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]]
L_OLD = [[-1.1, -2.0, -0.2], [-1.0, -0.2, -3.5]]
L_REF = [[-1.0, -2.5, -0.5], [-1.5, -0.1, -3.0]]
A = [1.0, -0.5]
W = [[1.6, 0.8, 0.6], [1.0, 1.2, 0.8]]
U = [[True, True, True], [True, True, False]]
EPS, BETA = 0.2, 0.1


def by_hand() -> dict[tuple[int, int], float]:
    """Per-token -min(rho A_hat, clip(rho) A_hat) + beta k3, written out token by token."""
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731  (d = l_ref - l)
    return {
        # rho = e^0.1 = 1.1052 inside [0.8, 1.2]; A_hat = 1.6; d = 0
        (0, 0): -(math.exp(0.1) * 1.6) + BETA * 0.0,
        # rho = 1; A_hat = 0.8; d = -0.5
        (0, 1): -(1.0 * 0.8) + BETA * k3(-0.5),
        # rho = e^-0.3 = 0.7408 < 0.8; A_hat = 0.6 > 0: min(0.4445, 0.48) keeps the unclipped term
        (0, 2): -(math.exp(-0.3) * 0.6) + BETA * 0.0,
        # rho = e^-0.5 = 0.6065 < 0.8; A_hat = -0.5 < 0: min(-0.3033, -0.4) takes the clipped term -> +0.4
        (1, 0): -(0.8 * -0.5) + BETA * 0.0,
        # rho = 1; A_hat = -0.6; d = 0.1
        (1, 1): -(1.0 * -0.6) + BETA * k3(0.1),
    }


def call(normalisation: str, **kw):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    args = dict(weights=t(W), clip_eps=EPS, kl_beta=BETA, normalisation=normalisation)
    args.update(kw)
    return grpo_loss(t(L), t(L_OLD), t(L_REF), t(A), torch.tensor(U), **args)


def test_token_mean_loss_equals_the_hand_computed_value():
    per = by_hand()
    out = call("token")
    assert out.loss.item() == pytest.approx(sum(per.values()) / 5, abs=1e-12)
    assert out.tokens == 5 and out.samples == 2
    assert out.clip_frac == pytest.approx(1 / 5)  # token (1, 0) only
    assert out.ratio_max == pytest.approx(math.exp(0.1))
    assert out.ratio_min == pytest.approx(math.exp(-0.5))
    ratios = [math.exp(0.1), 1.0, math.exp(-0.3), math.exp(-0.5), 1.0]
    assert out.ratio_mean == pytest.approx(sum(ratios) / 5)
    k3 = [0.0, math.exp(-0.5) + 0.5 - 1, 0.0, 0.0, math.exp(0.1) - 0.1 - 1]
    assert out.kl_mean == pytest.approx(sum(k3) / 5)


def test_per_sample_mean_loss_equals_the_hand_computed_value():
    per = by_hand()
    s0 = (per[0, 0] + per[0, 1] + per[0, 2]) / 3
    s1 = (per[1, 0] + per[1, 1]) / 2
    assert call("sample").loss.item() == pytest.approx((s0 + s1) / 2, abs=1e-12)


def test_denominator_override_adds_micro_batches_up():
    whole = call("token").loss.item()
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    parts = [
        grpo_loss(
            t(L[i : i + 1]),
            t(L_OLD[i : i + 1]),
            t(L_REF[i : i + 1]),
            t(A[i : i + 1]),
            torch.tensor(U[i : i + 1]),
            weights=t(W[i : i + 1]),
            clip_eps=EPS,
            kl_beta=BETA,
            denominator=5,
        ).loss.item()
        for i in range(2)
    ]
    assert sum(parts) == pytest.approx(whole, abs=1e-12)


def test_kl_needs_reference_and_beta_zero_does_not():
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(
            torch.zeros(1, 2), torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2, dtype=torch.bool)
        )
    out = grpo_loss(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        None,
        torch.ones(1),
        torch.ones(1, 2, dtype=torch.bool),
        kl_beta=0.0,
    )
    assert out.loss.item() == -1.0


def test_only_update_tokens_get_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    codes = torch.randint(7, (3, 5), generator=g)
    update = torch.rand(3, 5, generator=g) < 0.5
    update[0, 0] = True
    old = token_log_probs(logits.detach() + 0.1 * torch.randn(3, 5, 7, generator=g), codes)
    ref = token_log_probs(logits.detach() - 0.1 * torch.randn(3, 5, 7, generator=g), codes)
    # an inf where the token is not scored must not leak into the loss or the gradient
    old[~update] = float("inf")
    out = grpo_loss(token_log_probs(logits, codes), old, ref, torch.tensor([1.0, -2.0, 0.5]), update)
    out.loss.backward()
    grad = logits.grad.abs().sum(-1)
    assert torch.isfinite(out.loss)
    assert (grad[~update] == 0).all()
    assert (grad[update] > 0).all()


def test_equal_rewards_give_zero_policy_gradient():
    adv = torch.as_tensor(group_advantages([0.7, 0.7, 0.7, 0.7], 4).advantages, dtype=torch.float32)
    assert (adv == 0).all()
    logits = torch.randn(4, 6, 5, requires_grad=True)
    codes = torch.randint(5, (4, 6))
    logp = token_log_probs(logits, codes)
    out = grpo_loss(logp, logp.detach() - 0.3, None, adv, torch.ones(4, 6, dtype=torch.bool), kl_beta=0.0)
    out.loss.backward()
    assert (logits.grad == 0).all()


def test_ratio_is_exactly_one_when_theta_is_theta_old():
    bb = tiny_backbone()
    record = fake_record(batch=4, backbone=bb)
    visible = torch.rand(record.codes.shape, generator=torch.Generator().manual_seed(3)) < 0.4
    with torch.no_grad():
        old = policy_log_probs(bb, record.prompt, record.codes, visible)
    logp = policy_log_probs(bb, record.prompt, record.codes, visible)
    out = grpo_loss(logp, old, old, torch.tensor([1.0, -1.0, 0.5, 2.0]), ~visible)
    assert out.ratio_min == 1.0 and out.ratio_max == 1.0 and out.clipped == 0 and out.kl_sum == 0.0


def test_token_log_probs_is_log_softmax_at_the_code():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_log_probs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
