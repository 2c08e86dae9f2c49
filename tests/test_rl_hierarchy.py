"""HT-GRPO's token partition and HCA weights (algorithm.md §4.4, §4.5)."""

from __future__ import annotations

import math

import pytest
import torch

from htgrpo.rl.hierarchy import hca_weights, partition_order, partition_tokens, structure_count


@pytest.mark.parametrize(
    "n, rho, expected", [(36, 0.25, 9), (16, 0.25, 4), (30, 0.1, 3), (10, 0.33, 4), (7, 1.0, 7)]
)
def test_structure_count_is_ceil_rho_n(n, rho, expected):
    assert structure_count(n, rho) == expected == math.ceil(round(rho * n, 9))


def test_commit_rule_orders_by_step_then_entropy():
    commit = torch.tensor([[3, 1, 2, 1, 2, 3]])
    ent = torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.3, 0.0]])
    order = partition_order("commit", commit_step=commit, entropy_commit=ent)
    assert order.tolist() == [[3, 1, 4, 2, 5, 0]]
    part = partition_tokens(order, 0.5)
    assert part.structure.tolist() == [[False, True, False, True, True, False]]
    assert part.rank.tolist() == [[5, 1, 3, 0, 2, 4]]


def test_entropy0_rules_ascending_and_descending():
    h0 = torch.tensor([[0.4, 0.1, 0.3, 0.2], [1.0, 2.0, 0.5, 0.7]])
    assert partition_order("entropy0", entropy0=h0).tolist() == [[1, 3, 2, 0], [2, 3, 0, 1]]
    assert partition_order("entropy0_high", entropy0=h0).tolist() == [[0, 2, 3, 1], [1, 0, 3, 2]]
    with pytest.raises(ValueError, match="unknown partition rule"):
        partition_order("random", entropy0=h0)
    with pytest.raises(ValueError, match="needs the rollout's commit_step"):
        partition_order("commit", entropy0=h0)


def test_partition_size_and_order_on_random_records():
    g = torch.Generator().manual_seed(0)
    commit = torch.randint(1, 6, (5, 36), generator=g)
    ent = torch.rand(5, 36, generator=g)
    part = partition_tokens(partition_order("commit", commit_step=commit, entropy_commit=ent), 0.25)
    assert (part.structure.sum(1) == 9).all()
    for b in range(5):
        s, r = part.structure[b], ~part.structure[b]
        # every structure token comes before every refinement token in (step, entropy) order
        key = commit[b].double() * 10 + ent[b].double()
        assert key[s].max() <= key[r].min()


def test_binary_hca_weights():
    part = partition_tokens(torch.arange(16).repeat(3, 1), 0.25)
    w = hca_weights(part, alpha=1.0, mode="binary")
    torch.testing.assert_close(w.mean(1), torch.ones(3))
    # rho = 0.25, alpha = 1: structure 1.6, refinement 0.8 (§4.5)
    torch.testing.assert_close(w[part.structure], torch.full((12,), 1.6))
    torch.testing.assert_close(w[~part.structure], torch.full((36,), 0.8))
    assert (hca_weights(part, alpha=0.0) == 1.0).all()


def test_rank_hca_weights_decay_and_average_one():
    g = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(36, generator=g) for _ in range(4)])
    part = partition_tokens(order, 0.25)
    w = hca_weights(part, alpha=2.0, mode="rank")
    torch.testing.assert_close(w.mean(1), torch.ones(4))
    ranked = w.gather(1, order)  # weights in partition order
    assert (ranked[:, 1:] < ranked[:, :-1]).all()
    with pytest.raises(ValueError, match="unknown HCA mode"):
        hca_weights(part, 1.0, mode="entropy")
