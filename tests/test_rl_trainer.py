"""GRPOTrainer on a tiny backbone: invariants per method, determinism, resume, bad input, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from htgrpo.checkpoint import MANIFEST, save_checkpoint
from htgrpo.cli import main
from htgrpo.config import RL_METHODS, load_config
from htgrpo.rl import rewards as rw
from htgrpo.rl.rewards import register_reward
from htgrpo.rl.scoring import NONFINITE_SKIP
from htgrpo.rl.trainer import METRICS, GRPOTrainer, RLError
from rl_tiny import tiny_backbone, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(rw, "_REGISTRY", dict(rw._REGISTRY))


@pytest.fixture
def varied_reward(scratch_registry):
    """A reward that varies within every group (a random model earns 0 from the detector): mean code id."""
    register_reward("mean_pixel", lambda images, p, m: images.reshape(len(images), -1).mean(1) / 255.0)
    return {"mean_pixel": 1.0}


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def strip_times(history):
    return [{k: v for k, v in h.items() if k != "times"} for h in history]


@pytest.mark.parametrize("method", RL_METHODS)
def test_first_inner_iteration_has_ratio_one_and_no_clipping(method, varied_reward):
    cfg = tiny_config(method=method, steps=1, rewards=varied_reward, micro_batch=4)
    trainer = GRPOTrainer(cfg, tiny_backbone(), progress=False)
    before = weights(trainer.policy)
    rec = trainer.train_step()
    first = rec["iterations"][0]
    assert first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0 and first["clip_frac"] == 0.0
    assert first["kl"] == 0.0  # theta = theta_ref as well at the first step
    assert rec["zero_variance_share"] == 0.0
    assert not same_weights(before, weights(trainer.policy))
    assert rec["inner_iterations"] == len(rec["iterations"]) == trainer.num_iterations
    fp = rec["forward_passes_per_sample"]
    k = trainer.num_iterations
    assert fp == {"rollout": 8, "old": k, "ref": k, "train": k, "total": 8 + 3 * k}
    assert set(rec["stages"]) == set(trainer.estimator.stages)
    assert set(rec["times"]) == {"rollout", "reward", "old_ref", "update"}
    for stage in rec["stages"].values():
        assert {"clip_frac", "kl", "ratio_mean", "ratio_max", "update_tokens_per_sample", "grad_norm"} <= set(
            stage
        )


def test_ht_grpo_logs_structure_per_stage(varied_reward):
    trainer = GRPOTrainer(tiny_config(steps=1, rewards=varied_reward), tiny_backbone(), progress=False)
    stages = trainer.train_step()["stages"]
    assert list(stages) == ["global", "structure", "refinement"]
    assert all(s["structure_frac"] == 0.25 for s in stages.values())
    assert (
        stages["structure"]["update_in_structure"] == 1.0
        and stages["refinement"]["update_in_structure"] == 0.0
    )


def test_seeded_run_is_deterministic(varied_reward):
    runs = []
    for _ in range(2):
        trainer = GRPOTrainer(tiny_config(steps=2, rewards=varied_reward), tiny_backbone(), progress=False)
        history = trainer.train()
        runs.append((weights(trainer.policy), strip_times(history)))
    assert same_weights(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    other = GRPOTrainer(tiny_config(steps=2, seed=1, rewards=varied_reward), tiny_backbone(), progress=False)
    other.train()
    assert not same_weights(runs[0][0], weights(other.policy))


def test_equal_rewards_leave_the_policy_unchanged_without_kl(scratch_registry):
    register_reward("flat", lambda images, p, m: np.full(len(images), 0.5))
    cfg = tiny_config(steps=1, rewards={"flat": 1.0}, kl_beta=0.0, weight_decay=0.0)
    trainer = GRPOTrainer(cfg, tiny_backbone(), progress=False)
    before = weights(trainer.policy)
    rec = trainer.train_step()
    assert rec["zero_variance_share"] == 1.0
    assert all(it["grad_norm"] == 0.0 for it in rec["iterations"])
    assert same_weights(before, weights(trainer.policy))


def test_nan_rewards_are_dropped_and_an_empty_step_is_skipped(scratch_registry, capsys):
    register_reward(
        "half_nan",
        lambda images, p, m: np.where(np.arange(len(images)) % 3 == 0, np.nan, 0.1 * np.arange(len(images))),
    )
    trainer = GRPOTrainer(tiny_config(steps=1, rewards={"half_nan": 1.0}), tiny_backbone(), progress=False)
    with pytest.warns(RuntimeWarning, match="dropped 2 non-finite reward"):
        rec = trainer.train_step()
    assert rec["nonfinite_rewards"] == 2 and rec["samples_kept"] == 4 and "skipped" not in rec

    register_reward("all_nan", lambda images, p, m: np.full(len(images), np.nan))
    trainer = GRPOTrainer(tiny_config(steps=1, rewards={"all_nan": 1.0}), tiny_backbone(), progress=False)
    before = weights(trainer.policy)
    with pytest.warns(RuntimeWarning):
        rec = trainer.train_step()
    assert "non-finite" in rec["skipped"] and rec["samples_kept"] == 0 and trainer.step == 1
    assert same_weights(before, weights(trainer.policy))
    assert "RL step 1 skipped" in capsys.readouterr().out


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, varied_reward):
    full = GRPOTrainer(
        tiny_config(steps=4, rewards=varied_reward), tiny_backbone(), tmp_path / "full", progress=False
    )
    full.train()

    half = GRPOTrainer(
        tiny_config(steps=2, rewards=varied_reward), tiny_backbone(), tmp_path / "half", progress=False
    )
    half.train()
    ckpts = tmp_path / "half" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-000002"]
    # a later checkpoint that was never finished (no manifest) is passed over
    shutil.copytree(ckpts / "step-000002", ckpts / "step-000003")
    (ckpts / "step-000003" / MANIFEST).unlink()
    with pytest.warns(RuntimeWarning, match="skipping checkpoint .*step-000003"):
        resumed = GRPOTrainer.resume(
            tiny_config(steps=4, rewards=varied_reward), tmp_path / "half", progress=False
        )
    assert resumed.step == 2
    resumed.train()
    assert same_weights(weights(full.policy), weights(resumed.policy))
    assert strip_times(full.history) == strip_times(resumed.history)
    lines = (tmp_path / "half" / METRICS).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
    assert (ckpts / "step-000004" / MANIFEST).is_file()


def test_run_directory_guards(tmp_path, varied_reward):
    cfg = tiny_config(steps=1, rewards=varied_reward)
    GRPOTrainer(cfg, tiny_backbone(), tmp_path / "run", progress=False).train()
    with pytest.raises(RLError, match="already has checkpoints.*--resume"):
        GRPOTrainer(cfg, tiny_backbone(), tmp_path / "run", progress=False)
    with pytest.raises(RLError, match="nothing to resume"):
        GRPOTrainer.resume(cfg, tmp_path / "empty", progress=False)
    with pytest.raises(RLError, match="rl.clip_eps: checkpoint 0.2 vs now 0.3"):
        GRPOTrainer.resume(
            tiny_config(steps=2, clip_eps=0.3, rewards=varied_reward), tmp_path / "run", progress=False
        )


def test_bad_prompt_sets(tmp_path):
    with pytest.raises(RLError, match="prompt set 'given' is empty"):
        GRPOTrainer(tiny_config(), tiny_backbone(), prompts=[], progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RLError, match="is empty"):
        GRPOTrainer(tiny_config(prompts=str(empty)), tiny_backbone(), progress=False)
    with pytest.raises(RLError, match="needs GenEval metadata"):
        GRPOTrainer(tiny_config(), tiny_backbone(), prompts=[{"prompt": "a photo of a cat"}], progress=False)
    with pytest.raises(RLError, match="outside the backbone's vocabulary: cat"):
        GRPOTrainer(
            tiny_config(),
            tiny_backbone(),
            prompts=[{"prompt": "a photo of a cat", "tag": "single_object"}],
            progress=False,
        )
    # words the vocabulary has, metadata the shapes world has not: it would train silently with reward 0
    row = {
        "tag": "colors",
        "include": [{"class": "circel", "count": 1, "color": "red"}],
        "prompt": "a photo of a red circle",
    }
    with pytest.raises(RLError) as exc:
        GRPOTrainer(tiny_config(), tiny_backbone(), prompts=[row], progress=False)
    assert str(exc.value).startswith(
        "prompt set 'given', row 0 ('a photo of a red circle'): include class 'circel' is not a shape of the shapes "
        "world (square, circle, triangle, diamond, cross, ring)"
    )
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({**row, "include": [{"class": "circle", "count": 1, "color": "teal"}]}) + "\n")
    with pytest.raises(
        RLError, match=rf"prompt set '{pool}', row 0 .*: include colour 'teal' of the circle is not in"
    ):
        GRPOTrainer(tiny_config(prompts=str(pool)), tiny_backbone(), progress=False)


def _constant(value):
    return lambda images, p, m: np.full(len(images), value)


@pytest.mark.parametrize(
    ("rewards", "named"),
    [
        ({"all_nan": 1.0}, "non-finite reward components: all_nan (12 samples)"),
        ({"huge": 10.0}, "non-finite reward components: huge (12 samples)"),  # 10 x 1e308 overflows
        ({"huge": 1.0, "huge_too": 1.0}, "the weighted sum of huge, huge_too, which overflowed (12 samples)"),
        ({"plus_minus": 1.0}, "the group mean and std of plus_minus, which overflowed (12 samples)"),
    ],
)
def test_steps_skipped_for_nonfinite_rewards_stop_the_run(scratch_registry, rewards, named):
    register_reward("all_nan", _constant(np.nan))
    register_reward("huge", _constant(1e308))
    register_reward("huge_too", _constant(1e308))
    register_reward("plus_minus", lambda images, p, m: np.where(np.arange(len(images)) % 2, 1e308, -1e308))
    cfg = tiny_config(steps=5, rewards=rewards, max_skipped_steps=2)
    trainer = GRPOTrainer(cfg, tiny_backbone(), progress=False)
    with pytest.warns(RuntimeWarning, match="non-finite"), pytest.raises(RLError) as exc:
        trainer.train()
    message = str(exc.value)
    assert message.startswith(
        "rl.max_skipped_steps=2: RL steps 1 to 2 were all skipped because every reward was non-finite; "
    )
    assert named in message and "\n" not in message
    assert trainer.step == 2 and all(h["skipped"] == NONFINITE_SKIP for h in trainer.history)


def test_the_nonfinite_streak_counts_consecutive_steps_only(scratch_registry):
    register_reward("flat", _constant(0.5))
    trainer = GRPOTrainer(tiny_config(rewards={"flat": 1.0}), tiny_backbone(), progress=False)
    assert trainer.rl.max_skipped_steps == 3
    nan = {"skipped": NONFINITE_SKIP, "nonfinite_components": {"flat": 6}}
    trainer.history = [
        {"step": 1, **nan},
        {"step": 2, **nan},
        {"step": 3},
        {"step": 4, **nan},
        {"step": 5, **nan},
    ]
    trainer._check_nonfinite_streak()  # two in a row since step 3 trained
    trainer.history.append({"step": 6, **nan})
    with pytest.raises(RLError, match="RL steps 4 to 6 were all skipped .*: flat \\(18 samples\\)"):
        trainer._check_nonfinite_streak()
    off = GRPOTrainer(
        tiny_config(rewards={"flat": 1.0}, max_skipped_steps=0), tiny_backbone(), progress=False
    )
    off.history = trainer.history
    off._check_nonfinite_streak()  # 0: never stop


# --- the command line -------------------------------------------------------------------------------------

SMALL = [
    "backbone.d_model=32",
    "backbone.n_layers=2",
    "backbone.n_heads=2",
    "backbone.mlp_hidden_size=64",
    "tokenizer.codebook_size=16",
    "world.grid=4",
    "sampler.steps=4",
    "rl.prompts_per_step=2",
    "rl.group_size=2",
    "rl.steps=1",
]


@pytest.fixture
def base_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HTGRPO_THREADS", "1")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", SMALL)
    return save_checkpoint(tmp_path / "base", tiny_backbone(), cfg)


def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def set_args(*items):
    return [x for item in (*SMALL, *items) for x in ("--set", item)]


def test_cli_train_and_resume(tmp_path, base_checkpoint, capsys):
    run = tmp_path / "run"
    rc, out, err = cli(
        capsys,
        "train",
        "--method",
        "maskgrpo",
        "--init",
        str(base_checkpoint),
        "--out",
        str(run),
        *set_args(),
    )
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["method"] == "maskgrpo" and summary["steps"] == 1
    # rollout 4 steps x 2 CFG branches; old, ref and train 6 each, two branches each (tiny.yaml's rl.score_cfg)
    assert summary["forward_passes_per_sample"]["total"] == 8 + 3 * 6 * 2
    assert set(summary["seconds_per_step"]) == {"rollout", "reward", "old_ref", "update"}
    assert (run / "checkpoints" / "step-000001" / "optimizer.safetensors").is_file()
    assert load_config(run / "config.yaml").rl.method == "maskgrpo"
    rc, out, err = cli(
        capsys, "train", "--method", "maskgrpo", "--out", str(run), "--resume", "--steps", "2", *set_args()
    )
    assert rc == 0, err
    assert "resuming" in err and json.loads(out.strip().splitlines()[-1])["steps"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "ppo"], "rl.method: Input should be 'ht-grpo'"),
        (["--set", "rl.group_size=1"], "group_size must be at least 2"),
        (["--set", "rl.n_global=3", "--set", "rl.inner_iterations=6"], "K split does not add up"),
        (["--init", "/nonexistent/base"], "initial checkpoint /nonexistent/base does not exist"),
        (["--set", "rl.rewards={clip: 1.0}"], "unknown reward 'clip'"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_cli_train_bad_input(tmp_path, base_checkpoint, capsys, extra, message):
    argv = ["train", "--init", str(base_checkpoint), "--out", str(tmp_path / "r"), *set_args(), *extra]
    rc, _, err = cli(capsys, *argv)
    assert rc == 2
    assert err.startswith("error: ") and message in err


def test_cli_train_stops_when_every_reward_stays_nonfinite(
    tmp_path, base_checkpoint, scratch_registry, capsys
):
    register_reward("all_nan", _constant(np.nan))
    argv = ["train", "--init", str(base_checkpoint), "--out", str(tmp_path / "r")]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        rc, _, err = cli(capsys, *argv, *set_args("rl.steps=4", "rl.rewards={all_nan: 1.0}"))
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after the progress bar: one line
    assert rc == 2 and last.startswith("error: rl.max_skipped_steps=3: RL steps 1 to 3 were all skipped")
    assert "non-finite reward components: all_nan (12 samples)" in last and "Traceback" not in err
    lines = (tmp_path / "r" / METRICS).read_text().splitlines()
    assert [json.loads(x)["skipped"] for x in lines] == [NONFINITE_SKIP] * 3


def test_cli_train_empty_prompt_file(tmp_path, base_checkpoint, capsys):
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    argv = [
        "train",
        "--init",
        str(base_checkpoint),
        "--out",
        str(tmp_path / "r"),
        *set_args(f"rl.prompts={empty}"),
    ]
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and "is empty" in err


def test_checkpoints_every_n_steps_keep_the_newest(tmp_path, varied_reward):
    cfg = tiny_config(steps=3, checkpoint_every=1, keep_checkpoints=2, rewards=varied_reward)
    GRPOTrainer(cfg, tiny_backbone(), tmp_path / "run", progress=False).train()
    names = [p.name for p in GRPOTrainer.checkpoint_dirs(tmp_path / "run")]
    assert names == ["step-000002", "step-000003"]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["history"]) == 3 and state["method"] == "ht-grpo"


def test_checkpoint_extra_files_are_in_the_manifest(tmp_path):
    from htgrpo.checkpoint import read_checkpoint_file, verify_checkpoint
    from htgrpo.errors import CheckpointError

    cfg = tiny_config()
    path = save_checkpoint(tmp_path / "c", tiny_backbone(), cfg, extra_files={"notes.json": b'{"a": 1}'})
    assert read_checkpoint_file(path, "notes.json") == b'{"a": 1}'
    (path / "notes.json").write_bytes(b'{"a": 2}')
    with pytest.raises(CheckpointError, match="notes.json does not match"):
        verify_checkpoint(path)
    for bad in ("model.safetensors", "manifest.json", "../x", ".hidden"):
        with pytest.raises(ValueError, match="reserved or not a plain file name"):
            save_checkpoint(tmp_path / "d", tiny_backbone(), cfg, extra_files={bad: b""})
    assert not (tmp_path / "d").exists()


def test_periodic_evaluation_is_logged(varied_reward):
    cfg = tiny_config(steps=1, eval_every=1, eval_split="val", rewards=varied_reward)
    rec = GRPOTrainer(cfg, tiny_backbone(), progress=False).train()[0]
    assert rec["eval"]["split"] == "val"
    assert 0.0 <= rec["eval"]["overall"] <= 1.0 and "reward_mean" in rec["eval"]
