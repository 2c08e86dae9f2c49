"""HT-GRPO's scored partition rules (oracle, prompt_pmi, group_disagreement), the trajectory estimator, grouped
optimizer steps and HCA's stage credit as a step size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htgrpo.config import Config, RLConfig
from htgrpo.rl.estimators import HTGRPOEstimator
from htgrpo.rl.estimators.htgrpo import structure_steps
from htgrpo.rl.hierarchy import partition_order, partition_tokens
from htgrpo.rl.loss import policy_log_probs
from htgrpo.rl.structure_scores import group_disagreement, oracle_object_cells, prompt_pmi
from htgrpo.rl.trainer import GRPOTrainer, RLError
from htgrpo.world.dataset import render_rows
from htgrpo.world.detect import ShapeDetector
from htgrpo.world.palette import CELL_PX
from rl_tiny import N, fake_record, tiny_backbone, tiny_config
from test_rl_trainer import weights


@pytest.fixture
def varied_reward(monkeypatch):
    """A reward that varies within every group: the mean pixel (a random model earns 0 from the detector)."""
    from htgrpo.rl import rewards as rw

    monkeypatch.setattr(rw, "_REGISTRY", dict(rw._REGISTRY))
    rw.register_reward("mean_pixel", lambda images, p, m: images.reshape(len(images), -1).mean(1) / 255.0)
    return {"mean_pixel": 1.0}


def test_oracle_cells_are_the_detected_objects():
    rows = [
        {
            "tag": "two_object",
            "prompt": "a photo of a circle and a square",
            "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
        },
        {
            "tag": "counting",
            "prompt": "a photo of three rings",
            "include": [{"class": "ring", "count": 3}],
            "exclude": [{"class": "ring", "count": 4}],
        },
    ]
    grid = 5
    images = render_rows(rows, np.random.default_rng(0), grid)
    cells = oracle_object_cells(images, grid, grid)
    expected = torch.zeros(2, grid * grid)
    for i, res in enumerate(ShapeDetector().detect_many(images)):
        for det in res.detections:
            expected[i, (int(det.box[1]) // CELL_PX) * grid + int(det.box[0]) // CELL_PX] = 1.0
    assert torch.equal(cells, expected)
    assert cells.sum(1).tolist() == [2.0, 3.0]


def test_group_disagreement_by_hand():
    codes = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 7, 7], [8, 7, 7]])
    d = group_disagreement(codes, [0, 0, 0, 1, 1])
    # group 0, position 0: all agree; position 1: rows 0 and 1 agree, row 2 differs from both
    assert d[:3, 0].tolist() == [0.0, 0.0, 0.0]
    assert d[:3, 1].tolist() == [0.5, 0.5, 1.0]
    assert d[:3, 2].tolist() == [1.0, 1.0, 1.0]
    assert d[3:].tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_prompt_pmi_is_the_conditional_minus_the_unconditional_log_prob():
    bb = tiny_backbone()
    texts = ["a photo of a red circle", "a photo of two squares"]
    codes = torch.randint(16, (2, N), generator=torch.Generator().manual_seed(0))
    hidden = torch.zeros_like(codes, dtype=torch.bool)
    cond = policy_log_probs(bb, bb.encode_prompts(texts), codes, hidden)
    uncond = policy_log_probs(bb, bb.encode_uncond(2), codes, hidden)
    got = prompt_pmi(bb, texts, codes, chunk=1)
    assert torch.allclose(got, cond - uncond, atol=1e-5)
    assert got.abs().sum() > 0


def test_scored_rules_rank_by_score_then_commit_order():
    rec = fake_record(batch=2)
    score = torch.zeros(2, N)
    score[:, [3, 7, 11]] = torch.tensor([0.5, 2.0, 1.0])
    order = partition_order(
        "prompt_pmi", commit_step=rec.commit_step, entropy_commit=rec.entropy_commit, structure_score=score
    )
    assert order[:, :3].tolist() == [[7, 11, 3], [7, 11, 3]]
    commit = partition_order("commit", commit_step=rec.commit_step, entropy_commit=rec.entropy_commit)
    rest = [t for t in commit[0].tolist() if t not in (3, 7, 11)]
    assert order[0, 3:].tolist() == rest  # ties: the commit order
    with pytest.raises(ValueError, match="structure score"):
        partition_order("oracle", commit_step=rec.commit_step, entropy_commit=rec.entropy_commit)
    exact = partition_tokens(order, 0.25, exact=score > 0).structure
    assert exact.sum(1).tolist() == [3, 3]


def test_oracle_outside_the_shapes_world_and_unknown_rules_are_config_errors():
    with pytest.raises(ValueError, match="rl.partition: 'oracle'"):
        Config.model_validate({"backbone": {"kind": "mmada"}, "rl": {"partition": "oracle"}})
    with pytest.raises(ValueError, match="partition"):
        RLConfig(partition="sketchy")
    with pytest.raises(ValueError, match="task_weights: unknown task 'drawing'"):
        RLConfig(task_weights={"drawing": 1.0})


def test_trajectory_plans_replay_every_step_once_in_stage_order():
    rl = tiny_config(estimator="trajectory", n_global=2, n_struct=2, n_refine=2, rho=0.25).rl
    rec = fake_record(batch=3, steps=4)
    plans = HTGRPOEstimator(rl).build_plans(rec, torch.Generator().manual_seed(0))
    split = structure_steps(rec.commit_step, 4, 0.25)
    assert split == 1  # 4 tokens per step of 16; ceil(0.25 * 16) = 4 are committed by step 1
    replay = [p for p in plans if p.stage != "global"]
    assert [p.info["replayed_step"] for p in replay] == [1, 2, 3, 4]
    assert [p.stage for p in replay] == ["structure", "refinement", "refinement", "refinement"]
    covered = torch.zeros_like(rec.commit_step)
    for p in replay:
        step = p.info["replayed_step"]
        assert torch.equal(p.visible, rec.commit_step < step)  # the state the sampler was in
        assert torch.equal(p.update, rec.commit_step == step)
        covered += p.update.long()
    assert torch.equal(covered, torch.ones_like(covered))  # every token scored exactly once
    # optimizer steps: 2 global + 1 structure (one step only) + 2 refinement groups of the 3 late steps
    assert [p.step_group for p in plans] == [0, 1, 2, 3, 3, 4]
    assert plans[0].mask_ratio == 1.0 and plans[0].update.all()


def test_optimizer_steps_group_plans_within_stages(varied_reward):
    trainer = GRPOTrainer(
        tiny_config(method="tracegrpo", optimizer_steps=2, rewards=varied_reward),
        tiny_backbone(),
        progress=False,
    )
    rec = trainer.train_step()
    assert rec["optimizer_steps"] == 2 and [it["plans"] for it in rec["iterations"]] == [2, 2]
    assert rec["forward_passes_per_sample"]["train"] == 4
    ht = GRPOTrainer(tiny_config(optimizer_steps=2, rewards=varied_reward), tiny_backbone(), progress=False)
    groups = ht.step_groups(ht.estimator.build_plans(fake_record(), torch.Generator().manual_seed(0)))
    # 6 plans in 2 halves, but a group never spans two stages
    assert groups == [[0, 1], [2], [3], [4, 5]]


def _structure_step_delta(alpha: float, varied_reward) -> tuple[float, float]:
    trainer = GRPOTrainer(
        tiny_config(alpha=alpha, rho=0.25, rewards=varied_reward, kl_beta=0.0),
        tiny_backbone(),
        progress=False,
    )
    scored = trainer.score(trainer.rollout())
    upd = trainer.prepare_update(scored)
    trainer.old_ref_log_probs(upd)
    before = weights(trainer.policy)
    _, its, _ = trainer.update(upd, stages=["structure"])
    after = weights(trainer.policy)
    delta = sum(float((after[k] - before[k]).abs().sum()) for k in before)
    return delta, its[0]["lr_scale"]


def test_hca_changes_the_structure_stage_update(varied_reward):
    d0, s0 = _structure_step_delta(0.0, varied_reward)
    d1, s1 = _structure_step_delta(1.0, varied_reward)
    assert s0 == 1.0
    # |S| = 4 of 16: w on S = 2 * 16 / (16 + 4) = 1.6, the structure stage scores only S
    assert s1 == pytest.approx(1.6)
    # AdamW's first step moves each weight by about lr * sign(g): the step size carries the stage's credit
    assert d1 / d0 == pytest.approx(1.6, rel=0.05)


def test_task_mix_is_the_run_s_not_the_base_s(varied_reward):
    skewed = tiny_config(rewards=varied_reward, prompts_per_step=64).model_dump()
    skewed["world"]["task_weights"] = {"color_attr": 1.0}
    cfg = Config.model_validate(skewed)
    trainer = GRPOTrainer(cfg, tiny_backbone(), progress=False)
    tags = {trainer.prompts[i]["tag"] for i in trainer.step_prompts()}
    assert len(tags) == 6  # even over the pool's tasks, not world.task_weights
    cfg2 = Config.model_validate({**skewed, "rl": {**skewed["rl"], "task_weights": {"counting": 1.0}}})
    t2 = GRPOTrainer(cfg2, tiny_backbone(), progress=False)
    assert {t2.prompts[i]["tag"] for i in t2.step_prompts()} == {"counting"}
    bad = {**skewed, "rl": {**skewed["rl"], "task_weights": {"single_object": 1.0}, "prompts": "unseen"}}
    with pytest.raises(RLError, match=r"rl.task_weights .* no prompt of the pool 'unseen'"):
        GRPOTrainer(Config.model_validate(bad), tiny_backbone(), progress=False)


def test_later_stages_rebuild_the_first_stage_s_plans(varied_reward):
    """In the pipeline each stage runs in its own process on updated weights: the structure score travels with
    the log-probs, so prompt_pmi's partition (a function of the policy) is the first stage's."""
    from htgrpo.rl.trainer import UpdateBatch

    trainer = GRPOTrainer(
        tiny_config(partition="prompt_pmi", rewards=varied_reward), tiny_backbone(), progress=False
    )
    scored = trainer.score(trainer.rollout())
    upd = trainer.prepare_update(scored)
    trainer.old_ref_log_probs(upd)
    blob = upd.log_probs_to_bytes()
    trainer.update(upd, stages=["global"])  # the weights move
    fresh = trainer.prepare_update(scored)
    assert not torch.equal(fresh.record.structure_score, upd.record.structure_score)
    again = trainer.prepare_update(scored, UpdateBatch.structure_score_from_bytes(blob))
    assert torch.equal(again.record.structure_score, upd.record.structure_score)
    for a, b in zip(again.plans, upd.plans, strict=True):
        assert torch.equal(a.visible, b.visible) and torch.equal(a.update, b.update)


def test_a_geneval_reward_without_metadata_in_the_pool_is_one_clear_error():
    from htgrpo.errors import ConfigError

    rows = [{"tag": "counting", "prompt": "a photo of two rings"}]
    with pytest.raises(ConfigError, match=r"^rl.rewards.geneval_aligned: .* no row of the prompt pool"):
        GRPOTrainer(tiny_config(), tiny_backbone(), prompts=rows, progress=False)
