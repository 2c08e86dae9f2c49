"""One online GRPO trainer for HT-GRPO and every baseline (algorithm.md §4.10, §5).

Per RL step:

1. draw ``prompts_per_step`` prompts from the prompt pool (tasks weighted by ``rl.task_weights``, else evenly);
2. roll out G images per prompt with the rollout sampler under theta (= theta_old), with CFG, recording commit
   steps and entropies; decode them;
3. score them with the mixed reward; group z-score advantages (non-finite rewards dropped and counted);
4. let the method's estimator draw the K iteration plans (V_k, U_k, prompt, weights; HT-GRPO builds its
   partition and HCA weights here); precompute l_old (theta) and l_ref (the frozen initial weights) for all K
   plans without gradient;
5. K inner iterations: l_theta at the plan's visibility, the loss of ``loss.grpo_loss``, backward, gradient
   clipping, one AdamW step each (§4.7).

Randomness is derived from (rl.seed, step, purpose), so a run is deterministic under its seed and a resumed run
continues exactly as an uninterrupted one: a checkpoint holds the weights, the frozen reference, the optimizer
state and the trainer state (step, history, per-prompt statistics).

The reference is a frozen copy of the initial weights, or, when the backbone trains a LoRA adapter
(``backbone.lora.enabled``), the same network with the adapter disabled (no copy, no reference file).

Under ``torchrun`` (``dist``: a ``DistContext`` with several ranks) each rank rolls out a contiguous shard of the
step's prompts, rewards are gathered so advantages are global, gradients are summed over the ranks before each
optimizer step, and only rank 0 writes (``htgrpo.distributed``).

Run directory: ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per step) and ``checkpoints/step-NNNNNN``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm.auto import tqdm

from htgrpo.backbones.base import Backbone, PromptBatch
from htgrpo.checkpoint import (
    load_checkpoint,
    read_checkpoint_file,
    save_checkpoint,
    verify_checkpoint,
    verify_once,
)
from htgrpo.config import Config, StorageConfig, config_to_dict
from htgrpo.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_gradients,
    all_reduce_values,
    broadcast_parameters,
)
from htgrpo.errors import CheckpointError, PromptError, RLError
from htgrpo.prompts import check_prompt_pool, check_shapes_pool, load_prompt_pool
from htgrpo.rl.adamw import AdamW
from htgrpo.rl.advantages import PerPromptStatTracker
from htgrpo.rl.estimators import IterationPlan, RolloutRecord, build_estimator
from htgrpo.rl.hierarchy import SCORED_RULES
from htgrpo.rl.loss import LossOutput, grpo_loss, guided_log_probs, policy_log_probs
from htgrpo.rl.phases import RolloutBatch, ScoredBatch
from htgrpo.rl.rewards import check_reward_metadata, mixed_reward
from htgrpo.rl.scoring import NONFINITE_SKIP, score_rollout
from htgrpo.rl.structure_scores import group_disagreement, oracle_object_cells, prompt_pmi
from htgrpo.sampling import sample
from htgrpo.sampling.core import model_device
from htgrpo.world.dataset import draw_prompts
from htgrpo.world.grammar import TASKS, Metadata

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
REFERENCE_FILE = "reference.safetensors"
RESUMABLE_CHANGES = frozenset(
    {"steps", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_split", "max_skipped_steps"}
)
"""rl keys a resumed run may change; any other difference from the checkpoint's rl section is an error."""

_PURPOSE = {"prompts": 0, "rollout": 1, "plans": 2}


def derive_seed(seed: int, step: int, purpose: str, rank: int = 0) -> int:
    """The seed of one purpose at one step (each rank of a distributed run draws its own plans)."""
    key = [seed, step, _PURPOSE[purpose]] + ([rank] if rank else [])
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)


def shard_seed(seed: int, step: int, shard: int) -> int:
    """Rollout seed of one of several shards of a step (a single shard uses the step's own rollout seed)."""
    key = [seed, step, _PURPOSE["rollout"], shard]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class UpdateBatch:
    """A scored batch made ready for the inner iterations: plans, the rollout record, advantages, chunks, and
    (after ``old_ref_log_probs``) theta_old / theta_ref log-probs per runnable plan."""

    plans: list[IterationPlan]
    runnable: list[IterationPlan]
    record: RolloutRecord
    advantages: torch.Tensor
    chunks: list[slice]
    old: list[torch.Tensor] | None = None
    ref: list[torch.Tensor] | None = None

    def log_probs_to_bytes(self) -> bytes:
        """theta_old / theta_ref log-probs, and the partition's structure score when the plans used one (a later
        stage, in another process with updated weights, must rebuild the very same plans)."""
        tensors = {f"old.{k}": t.detach().cpu().contiguous() for k, t in enumerate(self.old or [])}
        tensors.update({f"ref.{k}": t.detach().cpu().contiguous() for k, t in enumerate(self.ref or [])})
        if self.record.structure_score is not None:
            tensors["structure_score"] = self.record.structure_score.detach().cpu().contiguous()
        return save_tensors(tensors)

    @staticmethod
    def structure_score_from_bytes(data: bytes) -> torch.Tensor | None:
        return load_tensors(data).get("structure_score")

    def log_probs_from_bytes(self, data: bytes, device: torch.device) -> None:
        t = load_tensors(data)
        n = len(self.runnable)
        self.old = [t[f"old.{k}"].to(device) for k in range(n)]
        self.ref = [t[f"ref.{k}"].to(device) for k in range(n)] if "ref.0" in t else []
        if any(f"old.{k}" not in t for k in range(n)):
            raise RLError("stored log-probs do not match this batch's plans")


def build_optimizer(model: torch.nn.Module, cfg: Config) -> AdamW:
    """AdamW, weight decay on matrices only (norm weights and other 1-D parameters excluded)."""
    rl = cfg.rl
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return AdamW(
        [{"params": decay, "weight_decay": rl.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=rl.lr,
        betas=tuple(rl.betas),
    )


def optimizer_to_files(opt: AdamW) -> tuple[bytes, dict[str, Any]]:
    """Optimizer state as safetensors bytes (its tensors) plus a JSON-able rest (param groups, scalars)."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return save_tensors(tensors), {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: AdamW, blob: bytes, rest: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for name, value in load_tensors(blob).items():
        pid, key = name.split(".", 1)
        state[int(pid)][key] = value
    for name, value in rest["scalars"].items():
        pid, key = name.split(".", 1)
        state[int(pid)][key] = value
    opt.load_state_dict({"state": dict(state), "param_groups": rest["param_groups"]})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round(x: float, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


class StageStats:
    """Running sums of one stage's iterations within a step."""

    def __init__(self) -> None:
        self.iterations = self.tokens = self.clipped = self.samples_total = 0
        self.ratio_sum = self.kl_sum = self.loss_sum = self.grad_norm_sum = 0.0
        self.ratio_max = 0.0
        self.structure_frac_sum = self.update_in_structure_sum = 0.0
        self.has_structure = False

    def add(
        self,
        out: LossOutput,
        loss: float,
        grad_norm: float,
        plan: IterationPlan,
        batch: int | None = None,
        structure: tuple[float, float] | None = None,
    ) -> None:
        """One iteration. ``batch`` / ``structure`` (structure fraction, share of U in S) override what the
        plan alone gives, for a distributed step whose plan holds one rank's samples."""
        self.iterations += 1
        self.tokens += out.tokens
        self.clipped += out.clipped
        self.ratio_sum += out.ratio_sum
        self.ratio_max = max(self.ratio_max, out.ratio_max)
        self.kl_sum += out.kl_sum
        self.loss_sum += loss
        self.grad_norm_sum += grad_norm
        self.samples_total += plan.update.shape[0] if batch is None else batch
        if plan.structure is not None:
            self.has_structure = True
            if structure is None:
                n_u = int(plan.update.sum())
                in_s = float((plan.update & plan.structure).sum()) / n_u if n_u else 0.0
                structure = (float(plan.structure.float().mean()), in_s)
            self.structure_frac_sum += structure[0]
            self.update_in_structure_sum += structure[1]

    def summary(self) -> dict[str, Any]:
        it = max(self.iterations, 1)
        out = {
            "iterations": self.iterations,
            "clip_frac": _round(self.clipped / self.tokens if self.tokens else 0.0),
            "kl": _round(self.kl_sum / self.tokens if self.tokens else 0.0, 8),
            "ratio_mean": _round(self.ratio_sum / self.tokens if self.tokens else 1.0),
            "ratio_max": _round(self.ratio_max),
            "update_tokens_per_sample": _round(self.tokens / max(self.samples_total, 1), 3),
            "loss": _round(self.loss_sum / it, 8),
            "grad_norm": _round(self.grad_norm_sum / it),
        }
        if self.has_structure:
            out["structure_frac"] = _round(self.structure_frac_sum / it, 4)
            out["update_in_structure"] = _round(self.update_in_structure_sum / it, 4)
        return out


class RunLocation:
    """Where a run writes: a local directory (a path or ``file://DIR``) or a store prefix (``s3://BUCKET/PREFIX``,
    through ``htgrpo.storage``, as the pipeline's checkpoints).

    A store run keeps ``config.yaml`` and ``metrics.jsonl`` in a local mirror (``storage.cache_dir/runs/...``) and
    uploads each after every change; its checkpoints are uploaded file by file with the manifest last and read
    back verified (``htgrpo.checkpoint``).
    """

    def __init__(self, where: str | Path, storage: StorageConfig) -> None:
        from htgrpo.storage import open_store, split_uri

        self.storage = storage
        scheme, rest = split_uri(str(where))
        if scheme == "s3":
            import hashlib

            self.uri: str | None = str(where).rstrip("/")
            digest = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
            self.local = Path(storage.cache_dir) / "runs" / digest
            self.store = open_store(self.uri, storage)
        else:
            self.uri = None
            self.local = Path(rest)
            self.store = None

    def __str__(self) -> str:
        return self.uri or str(self.local)

    @property
    def name(self) -> str:
        return str(self).rstrip("/").rsplit("/", 1)[-1]

    def checkpoint(self, step: int) -> str | Path:
        name = f"step-{step:06d}"
        return f"{self.uri}/{CHECKPOINTS}/{name}" if self.uri else self.local / CHECKPOINTS / name

    def checkpoints(self, whole: bool = True) -> list[str | Path]:
        """The run's checkpoints, oldest first: whole ones (with a manifest), or every started one."""
        if self.uri is None:
            dirs = GRPOTrainer.checkpoint_dirs(self.local)
            return [d for d in dirs if (d / "manifest.json").is_file()] if whole else list(dirs)
        from htgrpo.storage import list_checkpoints

        if whole:
            return list(list_checkpoints(f"{self.uri}/{CHECKPOINTS}", self.storage))
        names = {k.split("/", 2)[1] for k in self.store.list(CHECKPOINTS) if k.count("/") >= 2}
        return [f"{self.uri}/{CHECKPOINTS}/{n}" for n in sorted(names) if n.startswith("step-")]

    def write(self, name: str, text: str, append: bool = False) -> None:
        """Write (or append to) a small file of the run and, for a store run, upload it."""
        self.local.mkdir(parents=True, exist_ok=True)
        with (self.local / name).open("a" if append else "w") as fh:
            fh.write(text)
        if self.store is not None:
            self.store.put_file(name, self.local / name)

    def remove(self, checkpoint: str | Path) -> None:
        """Delete an old checkpoint (in a store: its manifest first, so it never looks whole half-deleted)."""
        if self.uri is None:
            shutil.rmtree(checkpoint, ignore_errors=True)
            return
        from htgrpo.storage import open_store

        store = open_store(str(checkpoint), self.storage)
        store.delete("manifest.json")
        store.delete_prefix("")


class GRPOTrainer:
    """Online GRPO for every ``rl.method``; see the module docstring.

    ``policy`` is trained in place. ``reference`` defaults to a frozen copy of the policy as given (the initial
    weights). ``prompts`` defaults to ``rl.prompts``. ``run_dir`` (optional) receives the config, metrics and
    checkpoints; without it nothing is written.
    """

    def __init__(
        self,
        cfg: Config,
        policy: Backbone,
        run_dir: str | Path | None = None,
        *,
        reference: Backbone | None = None,
        prompts: Sequence[Metadata] | None = None,
        progress: bool = True,
        dist: DistContext | None = None,
        _resuming: bool = False,
    ) -> None:
        self.cfg = cfg
        self.rl = cfg.rl
        self.policy = policy
        self.device = model_device(policy)
        self.dist = dist or DistContext(device=self.device)
        if self.dist.world_size > self.rl.prompts_per_step:
            raise RLError(
                f"{self.dist.world_size} ranks for rl.prompts_per_step={self.rl.prompts_per_step}: every rank "
                "needs at least one prompt group per step"
            )
        self.estimator = build_estimator(self.rl)
        self.reward = mixed_reward(self.rl.rewards)
        self.prompts = check_prompt_pool(prompts, "given") if prompts is not None else load_prompt_pool(cfg)
        try:  # every prompt must fit the backbone; say which one does not, before any rollout
            policy.encode_prompts([r["prompt"] for r in self.prompts])
        except PromptError as exc:
            raise RLError(f"rl.prompts {self.rl.prompts!r}: {exc}") from None
        if cfg.backbone.kind == "tiny":  # the shapes world: every class and colour must be one it draws
            check_shapes_pool(self.prompts, "given" if prompts is not None else self.rl.prompts)
        check_reward_metadata(self.rl.rewards, self.prompts)
        # the RL task mix is the run's (rl.task_weights), or even over the pool's tasks: never the mix the base
        # happened to be pretrained on
        pool_tasks = [t for t in TASKS if any(r["tag"] == t for r in self.prompts)]
        self.task_weights = (
            dict(self.rl.task_weights) if self.rl.task_weights is not None else dict.fromkeys(pool_tasks, 1.0)
        )
        if not any(self.task_weights.get(t, 0) > 0 for t in pool_tasks):
            raise RLError(
                f"rl.task_weights {self.rl.task_weights}: no prompt of the pool {self.rl.prompts!r} belongs to a "
                f"task with a positive weight (the pool has {', '.join(pool_tasks) or 'no task'})"
            )
        self.sampler_cfg = self.rl.rollout_sampler_config(cfg.sampler)
        self.num_iterations = self.estimator.num_iterations(self.sampler_cfg.steps)
        self.lora = cfg.backbone.lora.enabled
        if self.lora != policy.has_adapter:
            raise RLError(
                f"backbone.lora.enabled is {self.lora} but the policy {'has no' if self.lora else 'has a'} "
                "LoRA adapter: build the backbone from this configuration"
            )
        if self.lora:
            self.reference: Backbone | None = None  # the policy with its adapter disabled
        else:
            if reference is None:
                reference = copy.deepcopy(policy)
            self.reference = reference.eval().requires_grad_(False)
        # every rank starts from rank 0's trainable weights (LoRA adapters are initialised at random)
        broadcast_parameters(self.dist, [p for p in policy.parameters() if p.requires_grad])
        self._optimizer: AdamW | None = None  # built on first use (see ``optimizer``)
        self.tracker = (
            PerPromptStatTracker(self.rl.stat_tracking_buffer) if self.rl.stat_tracking_buffer else None
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.progress = progress
        self.callbacks: list[Any] = []
        """Called with each finished step's record (e.g. MLflow logging in ``htgrpo train``)."""
        # only rank 0 writes the run directory (a local directory, or the local mirror of a store run)
        self.run = RunLocation(run_dir, cfg.storage) if run_dir is not None else None
        self.run_dir = self.run.local if self.run is not None and self.dist.is_main else None
        if self.run is not None and not _resuming:
            existing = self.run.checkpoints(whole=False)
            if existing:
                raise RLError(
                    f"run directory {self.run} already has checkpoints ({Path(str(existing[-1])).name}); pass "
                    "--resume to continue that run, or choose another --out"
                )
        if self.run_dir is not None and not _resuming:
            self._write_config()
            self.run.write(METRICS, "")

    @property
    def optimizer(self) -> AdamW:
        """AdamW over the policy's trainable parameters, built on first use: a process that only rolls out never
        builds one."""
        if self._optimizer is None:
            self._optimizer = build_optimizer(self.policy, self.cfg)
        return self._optimizer

    # --- one RL step ------------------------------------------------------------------------------------
    def _seed(self, purpose: str) -> int:
        return derive_seed(self.rl.seed, self.step, purpose)

    def _chunks(self, n: int) -> list[slice]:
        mb = self.rl.micro_batch or n
        return [slice(lo, min(lo + mb, n)) for lo in range(0, n, mb)]

    def _log_probs(
        self, model: Backbone, record: RolloutRecord, plan: IterationPlan, sl: slice
    ) -> torch.Tensor:
        dev = self.device
        part = plan.prompt.index(sl)
        prompt = PromptBatch(part.input_ids.to(dev), part.attention_mask.to(dev))
        codes, visible = record.codes[sl].to(dev), plan.visible[sl].to(dev)
        g = self.sampler_cfg.cfg_scale
        if self.rl.score_cfg and g > 0:
            unc = model.encode_uncond(codes.shape[0])
            uncond = PromptBatch(unc.input_ids.to(dev), unc.attention_mask.to(dev))
            return guided_log_probs(model, prompt, uncond, codes, visible, g)
        return policy_log_probs(model, prompt, codes, visible)

    def _ref_log_probs(self, record: RolloutRecord, plan: IterationPlan, sl: slice) -> torch.Tensor:
        """theta_ref: the frozen copy, or the policy with its LoRA adapter disabled."""
        if self.reference is not None:
            return self._log_probs(self.reference, record, plan, sl)
        with self.policy.adapter_disabled():
            return self._log_probs(self.policy, record, plan, sl)

    # --- the phases of one RL step (each also runs on its own, in a pipeline component) -------------------
    def step_prompts(self) -> list[int]:
        """Indices (into the prompt pool) of the ``prompts_per_step`` prompts of RL step ``self.step + 1``."""
        rng = np.random.default_rng(self._seed("prompts"))
        return [int(i) for i in draw_prompts(self.prompts, self.task_weights, self.rl.prompts_per_step, rng)]

    def rollout(self, shard: int = 0, shards: int = 1) -> RolloutBatch:
        """G images for each prompt of shard ``shard`` (of ``shards`` contiguous shards) of this step's prompts.

        One shard uses the step's rollout seed, so an unsharded rollout is exactly ``train_step``'s.
        """
        if not 0 <= shard < shards:
            raise RLError(f"shard {shard} is not in 0..{shards - 1}")
        idx = self.step_prompts()
        if shards > len(idx):
            raise RLError(f"{shards} rollout shards for {len(idx)} prompts per step: use at most {len(idx)}")
        part = np.array_split(np.arange(len(idx)), shards)[shard]
        metas = [self.prompts[idx[i]] for i in part for _ in range(self.rl.group_size)]
        seed = self._seed("rollout") if shards == 1 else shard_seed(self.rl.seed, self.step, shard)
        gen = torch.Generator().manual_seed(seed)
        result = sample(self.policy, [m["prompt"] for m in metas], self.sampler_cfg, gen)
        images = result.decode(self.policy)
        _sync(self.device)
        return RolloutBatch(self.step + 1, shard, shards, metas, result, images)

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        """Rewards and group advantages of a step's rollout (updates the per-prompt statistics, if any)."""
        gather = None
        if self.dist.enabled:  # every rank scores the whole step: global advantages, statistics and record

            def gather(part: tuple) -> list[tuple]:
                return all_gather_objects(self.dist, part)

        return score_rollout(self.rl, self.reward, batch, self.tracker, rank=self.dist.rank, gather=gather)

    def prepare_update(self, scored: ScoredBatch, structure_score: torch.Tensor | None = None) -> UpdateBatch:
        """The K iteration plans of a scored batch (drawn from the step's seed), without log-probs yet.

        ``structure_score``: the per-token score of a scored partition rule as the step's first stage computed it
        (``UpdateBatch.structure_score_from_bytes``); None computes it from the current policy.

        A plan runs when some sample has tokens to update (on any rank, in a distributed run: every rank runs
        the same iterations). A rank none of whose samples is kept (its groups were dropped while others' were
        not) still takes part, with plans over its samples whose update sets are empty.
        """
        keep = np.flatnonzero(scored.keep)
        idle = len(keep) == 0
        rows = np.arange(len(scored.keep)) if idle else keep
        plans, record = self._plans(scored.rollout.sample, scored.rollout.texts, rows, structure_score)
        if idle:
            for plan in plans:
                plan.update = torch.zeros_like(plan.update)
        advantages = torch.as_tensor(
            np.zeros(len(rows)) if idle else scored.advantages[keep], dtype=torch.float32, device=self.device
        )
        flags = [float(bool(p.update.any())) for p in plans]
        if self.dist.enabled:
            flags = all_reduce_values(self.dist, flags, "max")
        runnable = [p for p, f in zip(plans, flags, strict=True) if f > 0]
        return UpdateBatch(plans, runnable, record, advantages, self._chunks(record.batch))

    def old_ref_log_probs(self, upd: UpdateBatch) -> float:
        """theta_old (the current policy) and theta_ref log-probs of every runnable plan; returns seconds."""
        t0 = time.perf_counter()
        upd.old, upd.ref = [], []
        self.policy.train()
        with torch.no_grad():
            for plan in upd.runnable:
                upd.old.append(
                    torch.cat([self._log_probs(self.policy, upd.record, plan, sl) for sl in upd.chunks])
                )
                if self.rl.kl_beta > 0:
                    upd.ref.append(
                        torch.cat([self._ref_log_probs(upd.record, plan, sl) for sl in upd.chunks])
                    )
        _sync(self.device)
        return time.perf_counter() - t0

    def step_groups(self, plans: Sequence[IterationPlan]) -> list[list[int]]:
        """The runnable plans' indices grouped into optimizer steps, in order.

        Plans that name their ``step_group`` are grouped by it; otherwise ``rl.optimizer_steps`` consecutive groups
        (one plan each when it is null). A group never spans two stages: the pipeline runs each stage on its own.
        """
        n = len(plans)
        if n == 0:
            return []
        if all(p.step_group is not None for p in plans):
            keys = [p.step_group for p in plans]
        elif self.rl.optimizer_steps:
            keys = [
                int(i)
                for i, part in enumerate(np.array_split(np.arange(n), min(self.rl.optimizer_steps, n)))
                for _ in part
            ]
        else:
            keys = list(range(n))
        groups: list[list[int]] = []
        for k, plan in enumerate(plans):
            prev = plans[groups[-1][-1]] if groups else None
            if prev is None or keys[k] != keys[groups[-1][-1]] or prev.stage != plan.stage:
                groups.append([k])
            else:
                groups[-1].append(k)
        return groups

    def update(
        self, upd: UpdateBatch, stages: Sequence[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], float]:
        """The optimizer steps of the given stages (all when None), in plan order.

        Each step accumulates the gradients of its group of plans (``step_groups``) and is normalised over the
        whole group (sum |U|, or the (sample, plan) pairs with a non-empty U). HCA's stage credit enters as a
        step size (see ``htgrpo.rl.estimators.htgrpo``): the loss's weights are divided by the step's mean weight
        over its scored tokens, w_bar, and the learning rate is multiplied by it.

        Returns the per-stage summaries, the per-step records and the seconds taken.
        """
        rl, dev = self.rl, self.device
        if upd.old is None:
            raise RLError("update() needs old_ref_log_probs() first")
        t0 = time.perf_counter()
        summaries: dict[str, StageStats] = {}
        iterations = []
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy.train()
        for group in self.step_groups(upd.runnable):
            plans = [upd.runnable[k] for k in group]
            if stages is not None and plans[0].stage not in stages:
                continue
            updates = [p.update.to(dev) for p in plans]
            weights = [p.weights.to(dev) for p in plans]
            counts = [u.sum(1) for u in updates]
            tokens = float(sum(c.sum() for c in counts))
            pairs = float(sum((c > 0).sum() for c in counts))
            w_sum = float(sum((w * u).sum() for w, u in zip(weights, updates, strict=True)))
            # the whole step's normaliser and mean weight on every rank
            tokens, pairs, w_sum = all_reduce_values(self.dist, [tokens, pairs, w_sum])
            denom = tokens if rl.normalisation == "token" else pairs
            w_bar = w_sum / tokens if tokens else 1.0
            self.optimizer.zero_grad(set_to_none=True)
            parts: list[LossOutput] = []
            loss_value = 0.0
            for k, plan, update, weight in zip(group, plans, updates, weights, strict=True):
                for sl in upd.chunks:
                    logp = self._log_probs(self.policy, upd.record, plan, sl)
                    out = grpo_loss(
                        logp,
                        upd.old[k][sl],
                        upd.ref[k][sl] if upd.ref else None,
                        upd.advantages[sl],
                        update[sl],
                        weights=weight[sl] / w_bar,
                        clip_eps=rl.clip_eps,
                        kl_beta=rl.kl_beta,
                        normalisation=rl.normalisation,
                        denominator=denom,
                    )
                    out.loss.backward()
                    loss_value += float(out.loss.detach())
                    parts.append(out)
            all_reduce_gradients(self.dist, params)  # sum of the ranks' shares = the global loss's gradient
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, rl.grad_clip))
            self.optimizer.step(lr_scale=w_bar)
            merged = LossOutput(
                loss=torch.tensor(loss_value),
                tokens=sum(p.tokens for p in parts),
                samples=sum(p.samples for p in parts),
                clipped=sum(p.clipped for p in parts),
                ratio_sum=sum(p.ratio_sum for p in parts),
                ratio_max=max(p.ratio_max for p in parts),
                kl_sum=sum(p.kl_sum for p in parts),
                ratio_min=min(p.ratio_min for p in parts),
            )
            batch = plans[0].update.shape[0]
            structure = None
            if plans[0].structure is not None:
                s = plans[0].structure
                u_in_s = float(sum((p.update & s).sum() for p in plans))
                u_all = float(sum(p.update.sum() for p in plans))
                structure_vals = [float(s.sum()), float(s.numel()), u_in_s, u_all]
            if self.dist.enabled:
                merged, loss_value, batch = self._merge_ranks(merged, loss_value, batch)
                if plans[0].structure is not None:
                    structure_vals = all_reduce_values(self.dist, structure_vals)
            if plans[0].structure is not None:
                s_in, cells, u_in_s, u_all = structure_vals
                structure = (s_in / max(cells, 1.0), u_in_s / u_all if u_all else 0.0)
            summaries.setdefault(plans[0].stage, StageStats()).add(
                merged, loss_value, grad_norm, plans[0], batch, structure
            )
            mask_ratios = [p.mask_ratio for p in plans if p.mask_ratio is not None]
            info: dict[str, Any] = {}
            for p in plans:
                for k2, v in p.info.items():
                    info.setdefault(k2, []).append(v)
            iterations.append(
                {
                    "stage": plans[0].stage,
                    "plans": len(plans),
                    "mask_ratio": _round(float(np.mean(mask_ratios)), 4) if mask_ratios else None,
                    "update_tokens": merged.tokens,
                    "lr_scale": _round(w_bar, 6),
                    "clip_frac": _round(merged.clip_frac),
                    "ratio_mean": _round(merged.ratio_mean, 8),
                    "ratio_min": merged.ratio_min,
                    "ratio_max": merged.ratio_max,
                    "kl": _round(merged.kl_mean, 8),
                    "loss": _round(loss_value, 8),
                    "grad_norm": _round(grad_norm),
                    **{
                        k2: (_round(v[0], 4) if len(v) == 1 else [_round(x, 4) for x in v])
                        for k2, v in info.items()
                    },
                }
            )
        _sync(dev)
        return {name: st.summary() for name, st in summaries.items()}, iterations, time.perf_counter() - t0

    def _merge_ranks(self, out: LossOutput, loss: float, batch: int) -> tuple[LossOutput, float, int]:
        """One iteration's statistics summed (extremes: max/min) over the ranks."""
        sums = all_reduce_values(
            self.dist, [loss, out.tokens, out.samples, out.clipped, out.ratio_sum, out.kl_sum, batch]
        )
        hi = all_reduce_values(self.dist, [out.ratio_max if out.tokens else -math.inf], "max")[0]
        lo = all_reduce_values(self.dist, [out.ratio_min if out.tokens else math.inf], "min")[0]
        tokens = int(sums[1])
        merged = LossOutput(
            loss=torch.tensor(sums[0]),
            tokens=tokens,
            samples=int(sums[2]),
            clipped=int(sums[3]),
            ratio_sum=sums[4],
            ratio_max=hi if tokens else 1.0,
            kl_sum=sums[5],
            ratio_min=lo if tokens else 1.0,
        )
        return merged, sums[0], int(sums[6])

    def finish_update(
        self,
        scored: ScoredBatch,
        upd: UpdateBatch | None,
        stages: dict[str, dict[str, Any]],
        iterations: list[dict[str, Any]],
        times: dict[str, float],
    ) -> dict[str, Any]:
        """Close RL step ``self.step + 1``: its record (rewards, stages, iterations, times), step += 1."""
        record_out = json.loads(json.dumps(scored.record))
        if upd is None:
            record_out.update(skipped=scored.skip, times={k: round(v, 4) for k, v in times.items()})
            tqdm.write(f"RL step {self.step + 1} skipped: {scored.skip}")
            record = self._finish_step(record_out)
            self._check_nonfinite_streak()
            return record
        n_run = len(upd.runnable)
        fp = record_out["forward_passes_per_sample"]
        per = (
            2 if self.rl.score_cfg and self.sampler_cfg.cfg_scale > 0 else 1
        )  # CFG's two branches count as two
        fp.update(old=per * n_run, ref=per * n_run if self.rl.kl_beta > 0 else 0, train=per * n_run)
        if self.rl.method == "ht-grpo" and self.rl.partition == "prompt_pmi":
            fp["partition"] = 2  # the conditional and unconditional forward at the fully masked state
        fp["total"] = sum(fp.values())
        record_out.update(
            inner_iterations=n_run,
            optimizer_steps=len(self.step_groups(upd.runnable)),
            empty_plans_skipped=len(upd.plans) - n_run,
            stages=stages,
            iterations=iterations,
            times={k: round(v, 4) for k, v in times.items()},
        )
        return self._finish_step(record_out)

    def train_step(self) -> dict[str, Any]:
        """Run RL step ``self.step + 1`` (rollout, score, plans, old/ref log-probs, K updates); returns its
        metrics. The same phases run one by one in the Kubeflow pipeline."""
        times = {"rollout": 0.0, "reward": 0.0, "old_ref": 0.0, "update": 0.0}
        t0 = time.perf_counter()
        batch = self.rollout(self.dist.rank, self.dist.world_size)
        times["rollout"] = time.perf_counter() - t0
        scored = self.score(batch)
        times["reward"] = scored.times["reward"]
        if scored.skip is not None:
            return self.finish_update(scored, None, {}, [], times)
        upd = self.prepare_update(scored)
        times["old_ref"] = self.old_ref_log_probs(upd)
        stages, iterations, times["update"] = self.update(upd)
        return self.finish_update(scored, upd, stages, iterations, times)

    def _plans(
        self, result, texts: list[str], keep: np.ndarray, structure_score: torch.Tensor | None = None
    ) -> tuple[list[IterationPlan], RolloutRecord]:
        sel = torch.as_tensor(keep, dtype=torch.long)
        prompt = self.policy.encode_prompts([texts[i] for i in keep])
        words = (
            self.policy.prompt_word_mask(prompt)
            if self.rl.method == "d1"
            else torch.zeros_like(prompt.input_ids, dtype=torch.bool)
        )
        record = RolloutRecord(
            codes=result.codes[sel],
            commit_step=result.commit_step[sel],
            entropy_commit=result.entropy_commit[sel],
            entropy0=result.entropy0[sel],
            prompt=prompt,
            prompt_words=words,
            mask_id=self.policy.layout.mask_id,
            rollout_steps=self.sampler_cfg.steps,
        )
        if structure_score is not None:
            record.structure_score = structure_score
        elif self.rl.method == "ht-grpo" and self.rl.partition in SCORED_RULES:
            record.structure_score = self.structure_score(
                record.codes, [texts[i] for i in keep], [int(i) // self.rl.group_size for i in keep]
            )
        gen = torch.Generator().manual_seed(derive_seed(self.rl.seed, self.step, "plans", self.dist.rank))
        return self.estimator.build_plans(record, gen), record

    def structure_score(self, codes: torch.Tensor, texts: list[str], groups: list[int]) -> torch.Tensor:
        """[B, N] per-token score of the scored partition rule ``rl.partition`` (``htgrpo.rl.structure_scores``)."""
        rule = self.rl.partition
        if rule == "oracle":
            layout = self.policy.layout
            images = self.policy.image_tokenizer.decode(codes.cpu(), (layout.grid_h, layout.grid_w))
            return oracle_object_cells(images, layout.grid_h, layout.grid_w)
        if rule == "prompt_pmi":
            self.policy.train()  # the same mode as the old / current log-probs
            return prompt_pmi(self.policy, texts, codes, self.rl.micro_batch)
        return group_disagreement(codes, groups)

    def _check_nonfinite_streak(self) -> None:
        """An ``RLError`` once the last ``rl.max_skipped_steps`` steps were all skipped for non-finite rewards,
        naming the reward components that were non-finite (the history spans resumes and pipeline rounds)."""
        limit = self.rl.max_skipped_steps
        streak: list[dict[str, Any]] = []
        for rec in reversed(self.history):
            if rec.get("skipped") != NONFINITE_SKIP:
                break
            streak.append(rec)
        if not limit or len(streak) < limit:
            return
        causes: dict[str, int] = {}
        for rec in streak:
            for name, n in (rec.get("nonfinite_components") or {}).items():
                causes[name] = causes.get(name, 0) + n
        every = ", ".join(self.rl.rewards)
        labels = {
            "weighted_sum": f"the weighted sum of {every}, which overflowed",
            "group_statistics": f"the group mean and std of {every}, which overflowed",
        }
        named = "; ".join(f"{labels.get(name, name)} ({n} samples)" for name, n in causes.items())
        raise RLError(
            f"rl.max_skipped_steps={limit}: RL steps {streak[-1]['step']} to {streak[0]['step']} were all skipped "
            f"because every reward was non-finite; non-finite reward components: {named or 'not recorded'}. Fix "
            f"the reward or its weight (rl.rewards {dict(self.rl.rewards)})"
        )

    def _finish_step(self, record: dict[str, Any]) -> dict[str, Any]:
        self.step += 1
        if self.rl.eval_every and self.step % self.rl.eval_every == 0 and self.dist.is_main:
            record["eval"] = self.evaluate()
        self.history.append(record)
        for callback in self.callbacks:
            callback(record)
        if self.run_dir is not None:
            self.run.write(METRICS, json.dumps(record) + "\n", append=True)
        return record

    def evaluate(self) -> dict[str, Any]:
        """The shapes benchmark on ``rl.eval_split`` with the eval sampler (``sampler`` section)."""
        from htgrpo.evaluate import evaluate_shapes

        report, _, _ = evaluate_shapes(
            self.policy,
            self.cfg,
            split=self.rl.eval_split,
            images_per_prompt=self.rl.eval_images_per_prompt,
            progress=False,
        )
        s = report["summary"]
        return {
            "split": self.rl.eval_split,
            "overall": _round(s["overall"], 4),
            **{t: _round(s[t], 4) for t in TASKS if t in s},
            "reward_mean": report["reward_mean"],
        }

    # --- the loop ---------------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> list[dict[str, Any]]:
        """Run RL steps until ``until`` (default ``rl.steps``) are done; checkpoint as configured."""
        total = self.rl.steps if until is None else until
        bar = tqdm(total=total, initial=self.step, desc=f"RL {self.rl.method}", disable=not self.progress)
        try:
            while self.step < total:
                rec = self.train_step()
                bar.update(1)
                post = {"reward": rec["reward_mean"], "zero_var": rec["zero_variance_share"]}
                if "times" in rec:
                    post["s/step"] = round(sum(rec["times"].values()), 2)
                bar.set_postfix(post)
                every = self.rl.checkpoint_every
                if self.run_dir is not None and (self.step == total or (every and self.step % every == 0)):
                    self.save()
        finally:
            bar.close()
        return self.history

    # --- checkpoints ------------------------------------------------------------------------------------
    @staticmethod
    def checkpoint_dirs(run_dir: Path) -> list[Path]:
        root = Path(run_dir) / CHECKPOINTS
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def _write_config(self) -> None:
        assert self.run is not None
        self.run.write("config.yaml", yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))

    def state_files(self, extra_state: dict[str, Any] | None = None) -> dict[str, bytes]:
        """The extra checkpoint files of the run: optimizer, frozen reference and trainer state."""
        opt_blob, opt_rest = optimizer_to_files(self.optimizer)
        state = {
            "step": self.step,
            "seed": self.rl.seed,
            "rng": "every draw is derived from (rl.seed, step, purpose); the step is the whole RNG state",
            "method": self.rl.method,
            "rl": self.rl.model_dump(mode="json"),
            "optimizer": opt_rest,
            "tracker": self.tracker.state_dict() if self.tracker else None,
            "history": self.history,
            **(extra_state or {}),
        }
        files = {OPTIMIZER_FILE: opt_blob, TRAINER_STATE: json.dumps(state).encode()}
        if self.reference is not None:  # a LoRA run's reference is its base weights: nothing to store
            ref_state = {k: v.detach().cpu().contiguous() for k, v in self.reference.state_dict().items()}
            files[REFERENCE_FILE] = save_tensors(ref_state)
        return files

    def save_to(
        self,
        uri: str | Path,
        extra_state: dict[str, Any] | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> Path:
        """A whole resumable checkpoint at ``uri`` (a directory, file:// or s3://; ``cfg.storage`` for S3)."""
        return save_checkpoint(
            uri,
            self.policy,
            self.cfg,
            extra={"rl_step": self.step, "method": self.rl.method},
            extra_files={**self.state_files(extra_state), **(extra_files or {})},
            storage=self.cfg.storage,
        )

    def save(self) -> str | Path:
        """Checkpoint the run at its current step (atomic; in a store, manifest last); keeps the
        ``keep_checkpoints`` newest. Returns the checkpoint's directory or URI."""
        if self.run_dir is None:
            raise RLError("this trainer has no run directory to save into")
        where = self.run.checkpoint(self.step)
        path = self.save_to(where)
        # prune whole checkpoints only; a damaged directory is left for a person to look at
        whole = self.run.checkpoints()
        for old in whole[: -self.rl.keep_checkpoints]:
            if str(old) != str(where):
                self.run.remove(old)
        return where if self.run.uri else path

    @classmethod
    def latest_checkpoint(cls, run_dir: str | Path, storage: StorageConfig | None = None) -> str | Path:
        """The newest whole checkpoint of a run (a directory, or a URI for a store run); damaged or half-written
        ones are passed over with a warning."""
        run = RunLocation(run_dir, storage or StorageConfig())
        for d in reversed(run.checkpoints(whole=False)):
            try:
                with verify_once():
                    verify_checkpoint(d, run.storage)
                    read_checkpoint_file(d, TRAINER_STATE, run.storage)
                return d
            except CheckpointError as exc:
                warnings.warn(f"skipping checkpoint {d}: {exc}", RuntimeWarning, stacklevel=2)
        raise RLError(f"nothing to resume: {run}/{CHECKPOINTS} holds no whole checkpoint")

    @classmethod
    def resume(
        cls,
        cfg: Config,
        run_dir: str | Path,
        *,
        prompts: Sequence[Metadata] | None = None,
        progress: bool = True,
        dist: DistContext | None = None,
    ) -> GRPOTrainer:
        """Continue a run from its newest whole checkpoint, under ``cfg`` (only RESUMABLE_CHANGES may differ)."""
        ckpt = cls.latest_checkpoint(run_dir, cfg.storage)
        state = json.loads(read_checkpoint_file(ckpt, TRAINER_STATE, cfg.storage))
        saved_rl = state["rl"]
        now_rl = cfg.rl.model_dump(mode="json")
        diffs = [
            f"rl.{k}: checkpoint {saved_rl.get(k)!r} vs now {now_rl[k]!r}"
            for k in now_rl
            if k not in RESUMABLE_CHANGES and saved_rl.get(k) != now_rl[k]
        ]
        if diffs:
            raise RLError(f"cannot resume {ckpt}: the rl settings changed: " + "; ".join(diffs))
        with verify_once():
            trainer = cls._restore(cfg, ckpt, state, run_dir, prompts=prompts, progress=progress, dist=dist)
        if trainer.run_dir is not None:
            trainer._write_config()
            # steps after the checkpoint were lost with the process; the metrics file restarts from the checkpoint
            trainer.run.write(METRICS, "".join(json.dumps(rec) + "\n" for rec in trainer.history))
        return trainer

    @classmethod
    def _restore(
        cls,
        cfg: Config,
        ckpt: str | Path,
        state: dict[str, Any],
        run_dir: str | Path | None,
        *,
        prompts: Sequence[Metadata] | None = None,
        progress: bool = True,
        dist: DistContext | None = None,
    ) -> GRPOTrainer:
        policy, _ = load_checkpoint(ckpt, cfg)
        reference = None
        if not policy.has_adapter:
            reference = copy.deepcopy(policy)
            reference.load_state_dict(
                load_tensors(read_checkpoint_file(ckpt, REFERENCE_FILE, cfg.storage)), strict=True
            )
        trainer = cls(
            cfg,
            policy,
            run_dir,
            reference=reference,
            prompts=prompts,
            progress=progress,
            dist=dist,
            _resuming=True,
        )
        optimizer_from_files(
            trainer.optimizer, read_checkpoint_file(ckpt, OPTIMIZER_FILE, cfg.storage), state["optimizer"]
        )
        trainer.step = int(state["step"])
        trainer.history = list(state["history"])
        if trainer.tracker is not None and state.get("tracker"):
            trainer.tracker.load_state_dict(state["tracker"])
        return trainer

    @classmethod
    def from_checkpoint(
        cls,
        cfg: Config,
        uri: str | Path,
        *,
        prompts: Sequence[Metadata] | None = None,
        progress: bool = False,
    ) -> tuple[GRPOTrainer, dict[str, Any]]:
        """A trainer (no run directory) at the state of checkpoint ``uri``: a run's checkpoint (weights,
        reference, optimizer, trainer state) or a base checkpoint (step 0, reference = its weights).

        Returns the trainer and the saved trainer state ({} for a base checkpoint).
        """
        with verify_once():  # the checkpoint is hashed once, though each of its files is read separately
            meta = verify_checkpoint(uri, cfg.storage)
            names = set(_manifest_files(uri, cfg))
            if TRAINER_STATE not in names:
                return cls(cfg, init_policy(cfg, uri, meta), prompts=prompts, progress=progress), {}
            state = json.loads(read_checkpoint_file(uri, TRAINER_STATE, cfg.storage))
            return cls._restore(cfg, uri, state, None, prompts=prompts, progress=progress), state


def _manifest_files(uri: str | Path, cfg: Config) -> list[str]:
    from htgrpo.checkpoint import _local

    return list(json.loads((_local(uri, cfg.storage) / "manifest.json").read_text())["files"])


def init_policy(cfg: Config, init: str | Path | None, meta: dict[str, Any] | None = None) -> Backbone:
    """The starting weights: a checkpoint whose backbone section (and world grid) match ``cfg``; for a real
    backbone (mmada, dimoo) without ``init``, its pretrained weights (``backbone.weights``)."""
    if init is None:
        if cfg.backbone.kind == "tiny":
            raise CheckpointError(
                "no initial checkpoint: pass --init DIR (make pretrain writes checkpoints/base)"
            )
        from htgrpo.backbones.pretrained import load_pretrained

        return load_pretrained(cfg.backbone, cfg.storage)
    if str(init).startswith("s3://"):
        meta = meta or verify_checkpoint(init, cfg.storage)
    elif not Path(str(init).removeprefix("file://")).exists():
        raise CheckpointError(
            f"initial checkpoint {init} does not exist; pass --init DIR (make pretrain writes checkpoints/base)"
        )
    meta = meta or verify_checkpoint(init)
    policy, saved = load_checkpoint(init, cfg)
    if cfg.backbone.kind == "tiny" and (
        saved.world.grid != cfg.world.grid or meta["backbone"]["grid"] != cfg.world.grid
    ):
        raise CheckpointError(
            f"checkpoint {init} was trained on a {meta['backbone']['grid']}-cell grid; world.grid is {cfg.world.grid}"
        )
    return policy


__all__ = [
    "GRPOTrainer",
    "RLError",
    "RunLocation",
    "build_optimizer",
    "check_prompt_pool",
    "derive_seed",
    "init_policy",
    "load_prompt_pool",
]
