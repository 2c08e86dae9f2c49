"""`htgrpo train` under torchrun: two CPU ranks (gloo) train in step and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from htgrpo.checkpoint import save_checkpoint
from htgrpo.config import config_to_dict
from htgrpo.distributed import DistContext, all_reduce_gradients, init_distributed
from htgrpo.rl.trainer import GRPOTrainer, RLError
from rl_tiny import tiny_backbone, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1
    p = torch.nn.Parameter(torch.ones(3))
    all_reduce_gradients(ctx, [p])  # a no-op in one process
    assert p.grad is None


def test_incomplete_torchrun_environment_is_a_clear_error(monkeypatch):
    from htgrpo.distributed import DistributedError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DistributedError, match="RANK is not set"):
        init_distributed()


def test_more_ranks_than_prompts_is_refused():
    cfg = tiny_config(prompts_per_step=2)
    with pytest.raises(RLError, match="3 ranks for rl.prompts_per_step=2"):
        GRPOTrainer(cfg, tiny_backbone(), dist=DistContext(rank=0, world_size=3), progress=False)


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    cfg = tiny_config(
        steps=2, prompts_per_step=2, group_size=3, rewards={"mean_pixel": 1.0}, checkpoint_every=1
    )
    base = save_checkpoint(tmp_path / "base", tiny_backbone(), cfg)
    config = tmp_path / "tiny-dist.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    dump, run = tmp_path / "dump", tmp_path / "run"
    dump.mkdir()
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "dist_worker.py"),
        str(dump),
    ]
    cmd += ["train", "--config", str(config), "--init", str(base), "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HTGRPO_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    initial = tiny_backbone().state_dict()
    assert any(not torch.equal(w0[k], initial[k]) for k in w0)  # it trained
    h0, h1 = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    assert h0["world"] == h1["world"] == 2
    strip = [{k: v for k, v in h.items() if k != "times"} for h in h0["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "times"} for h in h1["history"]]
    first = h0["history"][0]
    assert first["samples_kept"] == 6 and first["iterations"][0]["ratio_max"] == 1.0  # the whole step's batch
    # only rank 0 wrote the run directory: one metrics line per step, the checkpoints, one summary line
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert [p.name for p in GRPOTrainer.checkpoint_dirs(run)] == ["step-000001", "step-000002"]
    saved = load_file(str(run / "checkpoints" / "step-000002" / "model.safetensors"))
    assert all(torch.equal(saved[k], w0[k]) for k in saved)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1 and json.loads(summary[0])["steps"] == 2


@pytest.mark.parametrize("name", ["trainjob-mmada.yaml", "trainjob-dimoo.yaml"])
def test_trainjob_examples_run_htgrpo_train_on_the_trainer_runtime(name):
    from htgrpo.cli import build_parser
    from htgrpo.config import load_config

    job = yaml.safe_load((ROOT / "infra" / "trainer" / name).read_text())
    runtime = yaml.safe_load(
        (ROOT / "infra" / "components" / "trainer-runtime" / "training-runtime.yaml").read_text()
    )
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    ref = job["spec"]["runtimeRef"]
    assert (ref["kind"], ref["name"]) == (runtime["kind"], runtime["metadata"]["name"])
    trainer = job["spec"]["trainer"]
    args = build_parser().parse_args(["train", *trainer["args"]])  # what the runtime's command receives
    config = ROOT / args.config.removeprefix("/app/")
    cfg = load_config(config, args.overrides)
    assert (
        cfg.backbone.kind in name and cfg.backbone.weights.startswith("s3://") and cfg.backbone.lora.enabled
    )
    ranks = trainer["numNodes"] * trainer["numProcPerNode"]
    assert (
        cfg.rl.prompts_per_step >= ranks
        and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == trainer["numProcPerNode"]
    )
