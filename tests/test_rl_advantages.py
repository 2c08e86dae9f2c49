"""Group advantages: z-scores per group, equal rewards, non-finite and overflowing rewards, clipping, per-prompt
tracking."""

from __future__ import annotations

import numpy as np
import pytest

from htgrpo.rl.advantages import STD_EPS, PerPromptStatTracker, group_advantages


def test_group_z_score_by_hand():
    out = group_advantages(np.array([1.0, 2.0, 3.0, 0.0, 0.0, 1.0]), 3)
    std = np.std([1.0, 2.0, 3.0], ddof=1)
    np.testing.assert_allclose(out.advantages[:3], np.array([-1.0, 0.0, 1.0]) / (std + STD_EPS))
    g2 = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(out.advantages[3:], (g2 - g2.mean()) / (g2.std(ddof=1) + STD_EPS))
    assert out.keep.all() and out.nonfinite == 0 and out.zero_variance_share == 0.0


def test_equal_rewards_give_exactly_zero_advantage():
    out = group_advantages(np.array([0.1 * 3] * 4 + [0.2, 0.4, 0.6, 0.8]), 4)
    assert (out.advantages[:4] == 0.0).all()
    assert out.zero_variance_groups == 1 and out.zero_variance_share == 0.5
    dropped = group_advantages(np.array([0.3] * 4 + [0.2, 0.4, 0.6, 0.8]), 4, drop_zero_variance=True)
    assert not dropped.keep[:4].any() and dropped.keep[4:].all()


def test_nonfinite_rewards_are_dropped_and_counted():
    r = np.array([1.0, np.nan, 3.0, np.inf, np.nan, 0.5, 0.0, -np.inf, 1.0])
    out = group_advantages(r, 3)
    assert out.nonfinite == 4
    # group 0 keeps two valid samples, group 1 has one left and is skipped, group 2 keeps two
    assert out.keep.tolist() == [True, False, True, False, False, False, True, False, True]
    assert out.groups_skipped == 1
    assert np.isfinite(out.advantages).all()
    assert out.advantages[0] < 0 < out.advantages[2]
    assert (out.advantages[~out.keep] == 0).all()


def test_all_nonfinite_leaves_nothing():
    out = group_advantages(np.full(4, np.nan), 2)
    assert not out.keep.any() and out.groups_skipped == 2 and out.zero_variance_share == 0.0


def test_clip_and_argument_checks():
    out = group_advantages(np.array([0.0, 0.0, 0.0, 10.0]), 4, clip=1.0)
    assert out.advantages.max() == 1.0 and out.advantages.min() >= -1.0
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(np.zeros(3), 1)
    with pytest.raises(ValueError, match="do not split"):
        group_advantages(np.zeros(5), 2)


def test_per_prompt_tracker_uses_the_prompt_history():
    tr = PerPromptStatTracker(buffer=8)
    first = tr.update(["a", "a", "b", "b"], np.array([0.0, 1.0, 0.5, 0.5]))
    np.testing.assert_allclose(first[:2], [-1.0, 1.0], atol=1e-4)  # population std of {0, 1} is 0.5
    assert (first[2:] == 0).all()
    second = tr.update(["a", "a"], np.array([1.0, 1.0]))
    pool = np.array([0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(second, (1.0 - pool.mean()) / (pool.std() + STD_EPS))
    state = tr.state_dict()
    again = PerPromptStatTracker(1)
    again.load_state_dict(state)
    assert again.state_dict() == state
    via = group_advantages(np.array([0.0, 1.0]), 2, tracker=PerPromptStatTracker(4), prompts=["a", "a"])
    np.testing.assert_allclose(via.advantages, [-1.0, 1.0], atol=1e-4)


def test_finite_rewards_whose_group_statistics_overflow_count_as_nonfinite():
    with np.errstate(all="raise"):  # no overflow warning escapes: it is caught and counted
        # mean 0 but the std overflows; the mean itself overflows; a sane group beside them stays
        out = group_advantages(np.array([1e308, -1e308, 1e308, 1e308, -1e308, 0.0, 1.0, 2.0, 3.0]), 3)
    assert out.nonfinite == 6 and out.groups_skipped == 2
    assert out.dropped.tolist() == [True] * 6 + [False] * 3
    assert out.keep.tolist() == [False] * 6 + [True] * 3
    assert np.isfinite(out.advantages).all() and (out.advantages[:6] == 0).all()
    every = group_advantages(np.array([1e308, -1e308, -1e308, 1e308]), 2)
    assert not every.keep.any() and every.groups_skipped == every.groups == 2 and every.nonfinite == 4


def test_per_prompt_statistics_that_overflow_drop_the_samples_and_record_nothing():
    tracker = PerPromptStatTracker(4)
    first = group_advantages(np.array([-1.2e154, 0.0]), 2, tracker=tracker, prompts=["a", "a"])
    assert first.keep.all() and first.nonfinite == 0
    # the group alone is fine; pooled with the prompt's history its squared deviations overflow
    second = group_advantages(np.array([1.2e154, 0.0]), 2, tracker=tracker, prompts=["a", "a"])
    assert second.nonfinite == 2 and not second.keep.any() and second.groups_skipped == 1
    assert np.isfinite(second.advantages).all()
    assert list(tracker.history["a"]) == [-1.2e154, 0.0]


def test_nonfinite_components_name_the_cause_of_each_dropped_sample():
    from htgrpo.rl.scoring import nonfinite_components

    weights = {"a": 1.0, "b": 10.0}
    values = {
        "a": np.array([np.nan, 0.0, 1e308, 1.0, 1.0]),  # sample 0: NaN
        "b": np.array(
            [0.0, 1e308, 1e307, 1.0, 1.0]
        ),  # sample 1: 10 x 1e308 overflows; sample 2: the sum does
    }
    with np.errstate(all="ignore"):
        total = values["a"] + 10.0 * values["b"]
    assert not np.isfinite(total[:3]).any() and np.isfinite(total[3:]).all()
    dropped = np.array([True, True, True, True, False])  # sample 3: finite, its group's statistics overflowed
    assert nonfinite_components(weights, values, total, dropped) == {
        "a": 1,
        "b": 1,
        "weighted_sum": 1,
        "group_statistics": 1,
    }
