"""The rl config section: shipped values, method defaults, and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from htgrpo.config import RL_METHODS, Config, RLConfig, load_config
from htgrpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, overrides)
    return str(info.value)


def test_tiny_yaml_has_an_rl_section():
    cfg = load_config(TINY)
    rl = cfg.rl
    assert rl.method == "ht-grpo"
    assert (rl.n_global, rl.n_struct, rl.n_refine, rl.inner_iterations) == (2, 2, 2, 6)
    assert (rl.min_mask_ratio, rl.rho, rl.alpha, rl.clip_eps, rl.kl_beta) == (0.7, 0.25, 1.0, 0.2, 0.01)
    assert rl.rewards == {"geneval_aligned": 1.0}
    assert rl.partition == "prompt_pmi" and rl.score_cfg and rl.task_weights is None
    assert rl.normalisation == "token"


@pytest.mark.parametrize(
    "method, eps, beta, k, norm, m",
    [
        ("ht-grpo", 0.2, 0.01, 6, "token", 0.7),
        ("maskgrpo", 0.2, 0.01, 6, "token", 0.6),
        ("unigrpo", 0.2, 0.01, 6, "sample", 0.7),
        ("d1", 0.5, 0.04, 12, "token", 0.7),
        ("tracegrpo", 0.2, 0.01, None, "sample", 0.7),
        ("coupled", 0.2, 0.01, 6, "token", 0.7),
    ],
)
def test_method_defaults_apply_to_keys_left_out(method, eps, beta, k, norm, m):
    rl = load_config(TINY, [f"rl.method={method}"]).rl
    assert (rl.clip_eps, rl.kl_beta, rl.inner_iterations, rl.normalisation, rl.min_mask_ratio) == (
        eps,
        beta,
        k,
        norm,
        m,
    )
    assert set(RL_METHODS) >= {method}


def test_explicit_values_win_over_method_defaults():
    rl = load_config(TINY, ["rl.method=d1", "rl.clip_eps=0.3", "rl.normalisation=sample"]).rl
    assert (rl.clip_eps, rl.kl_beta, rl.normalisation) == (0.3, 0.04, "sample")
    # null means "the method's value"
    assert RLConfig(method="maskgrpo", min_mask_ratio=None).min_mask_ratio == 0.6


def test_ht_grpo_k_follows_the_split():
    assert RLConfig(n_global=3, n_struct=3, n_refine=3).inner_iterations == 9


def test_resolved_config_round_trips():
    cfg = load_config(TINY, ["rl.method=tracegrpo"])
    again = Config.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["rl.method=grpo2"], "rl.method: Input should be 'ht-grpo'"),
        (["rl.group_size=1"], "group_size must be at least 2 (got 1)"),
        (["rl.inner_iterations=5"], "K split does not add up: n_global 2 + n_struct 2 + n_refine 2 = 6"),
        (["rl.n_refine=0", "rl.inner_iterations=6"], "= 4, but inner_iterations is 6"),
        (["rl.method=coupled", "rl.inner_iterations=5"], "inner_iterations must be even"),
        (["rl.method=tracegrpo", "rl.inner_iterations=4"], "set trace_shrink, not inner_iterations"),
        (
            ["rl.rollout_sampler=emerge", "rl.partition=commit"],
            "use partition=entropy0 with rollout_sampler=emerge",
        ),
        (["rl.rewards={}"], "name at least one reward"),
        (["rl.rewards={geneval_partial: 0}"], "every weight is 0"),
        (["rl.rewards={geneval_partial: .nan}"], "must be finite"),
        (["rl.coupled_t_range=[0.9, 0.1]"], "0 < lo <= hi < 1"),
        (["rl.betas=[0.9, 1.5]"], "betas must lie in [0, 1)"),
        (["rl.rho=0"], "rl.rho"),
        (["rl.min_mask_ratio=1.0"], "rl.min_mask_ratio"),
        (["rl.hca=entropy"], "rl.hca"),
        (["rl.partition=random"], "rl.partition"),
        (["rl.estimator=onestep"], "rl.estimator"),
        (["rl.normalisation=batch"], "rl.normalisation"),
        (["rl.clip_eps=0"], "rl.clip_eps"),
        (["rl.lrr=1"], "rl.lrr: unknown key"),
    ],
)
def test_bad_rl_settings_have_clear_messages(overrides, expected):
    msg = error(*overrides)
    assert str(TINY) in msg
    assert expected in msg


def test_rollout_sampler_config_applies_overrides():
    cfg = load_config(TINY, ["rl.rollout_steps=6", "rl.rollout_cfg_scale=3.5"])
    s = cfg.rl.rollout_sampler_config(cfg.sampler)
    assert (s.kind, s.steps, s.cfg_scale, s.temperature) == ("maskgit", 6, 3.5, cfg.sampler.temperature)
    plain = load_config(TINY).rl.rollout_sampler_config(cfg.sampler)
    assert plain.steps == cfg.sampler.steps and plain.cfg_scale == cfg.sampler.cfg_scale
