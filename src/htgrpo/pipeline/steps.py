"""What each pipeline component does, as plain functions of strings and numbers (the components' own types).

A pipeline run keeps everything under one *run root* in the store (``storage.uri``/runs/RUN_NAME)::

    config.yaml, prompts.jsonl                  resolved configuration and the prompt set (lineage)
    round-001/rollout/shard-000.safetensors     tokens, trajectories and images of one shard
    round-001/scored.safetensors                the round's tokens and trajectories with rewards and advantages
    round-001/preview.npy                       a grid of up to 32 of the round's images (for MLflow)
    round-001/global, structure, refinement     a checkpoint after each HT-GRPO stage
    eval/base.json, eval/trained.json           shapes-benchmark reports; summary.json at the end

Round r is RL step r of ``htgrpo train`` with the same configuration: with one rollout shard the pipeline
computes exactly what ``GRPOTrainer.train_step`` computes (same seeds, same plans, the same theta_old and
theta_ref log-probs carried from the global stage to the later ones inside the stage checkpoints). Every step
is idempotent: when its output already exists whole (a re-run after a killed pod), it returns it unchanged.

Each step runs in a process of its own, so each loads only what it uses: scoring needs neither torch nor the
backbone, no step but the last of a round (refinement) imports MLflow, which logs the round's four runs (score,
global, structure, refinement) at once, and a checkpoint is hashed once per step (``checkpoint.verify_once``).
``timings/STEP.json`` records each step's time inside, its process's start-up before it and its CPU seconds.
"""

from __future__ import annotations

import atexit
import gc
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from htgrpo.config import Config, apply_overrides, check_run_name, config_to_dict, format_errors
from htgrpo.errors import ConfigError, HtgrpoError
from htgrpo.storage import checkpoint_is_whole, join_uri, open_store, split_uri
from htgrpo.tracking import artifact_root_for

STAGES = ("global", "structure", "refinement")
LOG_PROBS_FILE = "old_ref_logprobs.safetensors"
TRAINER_STATE = "trainer_state.json"  # htgrpo.rl.trainer.TRAINER_STATE, named here to score without torch


class PipelineError(HtgrpoError):
    """A pipeline parameter or intermediate result that a step cannot use."""


if os.environ.get("_KFP_RUNTIME") == "true":
    # In a KFP task process (the executor sets _KFP_RUNTIME), freeze the heap when the process exits: the
    # interpreter's shutdown then skips the collection of everything torch and MLflow created, which takes 0.7 s
    # with torch loaded and 1.4 s with MLflow, per task. Every output is written and closed before exit.
    atexit.register(gc.freeze)


def _threads(parallel: int = 1) -> None:
    """torch's threads; `parallel` tasks of this kind may run side by side (see ``htgrpo.cpus``)."""
    from htgrpo.cpus import set_torch_threads

    set_torch_threads(parallel)


def _absolute_file_uri(uri: str) -> str:
    scheme, rest = split_uri(uri)
    return f"file://{Path(rest).resolve()}" if scheme == "file" else uri


def _absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    return uri


def process_started_at() -> float | None:
    """When this process started (wall clock, from Linux's /proc), or None where that is not known."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def record_time(cfg: Config, run_root: str, name: str, start: float) -> None:
    """Wall time of one step (``timings/NAME.json`` in the run root), for the per-component split: ``seconds``
    inside the step function, ``startup_s`` from the process's start to the step function (interpreter, KFP
    executor, imports), ``cpu_s`` the process's CPU seconds so far."""
    end = time.time()
    row: dict[str, Any] = {"step": name, "start": start, "seconds": round(end - start, 3), "end": end}
    born = process_started_at()
    if born is not None and born <= start:
        row.update(process_start=born, startup_s=round(start - born, 3))
    row["cpu_s"] = round(time.process_time(), 3)
    open_store(join_uri(run_root, "timings"), cfg.storage).put_bytes(f"{name}.json", json.dumps(row).encode())


def read_timings(run_root: str, cfg: Config) -> list[dict[str, Any]]:
    store = open_store(join_uri(run_root, "timings"), cfg.storage)
    rows = [json.loads(store.get_bytes(k)) for k in store.list() if k.endswith(".json")]
    return sorted(rows, key=lambda r: r["start"])


def load_run_config(config_json: str) -> Config:
    return Config.model_validate(json.loads(config_json))


def round_uri(run_root: str, round_: int, *parts: str) -> str:
    return join_uri(run_root, f"round-{int(round_):03d}", *parts)


def _tracker(cfg: Config, run_root: str):
    from htgrpo.tracking import Tracker

    scheme, rest = split_uri(run_root)
    local = Path(rest) if scheme == "file" else Path(cfg.storage.cache_dir) / "tracking"
    return Tracker(cfg.tracking, local)


# --- prepare_data -------------------------------------------------------------------------------------------


def is_inline_config(config: str) -> bool:
    """Whether the ``config`` parameter is inline YAML (several lines, or a ``{...}`` mapping) rather than a path."""
    return "\n" in config or (config.strip().startswith("{") and config.strip().endswith("}"))


def resolve_config(
    config: str,
    overrides: list[str] | None = None,
    *,
    rounds: int,
    shards: int,
    storage_uri: str = "",
    tracking_uri: str = "",
    inline_source: str = "config parameter (inline YAML)",
) -> Config:
    """The run configuration: a YAML file path (or inline YAML), ``--set``-style overrides, then the pipeline's
    own parameters; validated by the same pydantic models as ``htgrpo train``. Errors name the file, or
    ``inline_source`` for inline YAML."""
    if is_inline_config(config):
        source, text = inline_source, config
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config: {config!r} is neither a YAML file nor inline YAML")
        source, text = str(path), path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    overrides = [str(o) for o in overrides or []]
    apply_overrides(data, overrides)
    data.setdefault("rl", {})["steps"] = int(rounds)
    if storage_uri:
        data.setdefault("storage", {})["uri"] = storage_uri
    if tracking_uri:
        data.setdefault("tracking", {})["tracking_uri"] = tracking_uri
        data["tracking"]["enabled"] = True
    if overrides:
        source += f" (with overrides {' '.join(overrides)})"
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None
    if cfg.rl.method != "ht-grpo":
        raise ConfigError(
            f"{source}: rl.method: the pipeline trains ht-grpo in three stage steps (got {cfg.rl.method!r}); "
            "run the baselines with htgrpo train"
        )
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1 (got {rounds})")
    if not 1 <= shards <= cfg.rl.prompts_per_step:
        raise ConfigError(
            f"shards: {shards} rollout shards for rl.prompts_per_step={cfg.rl.prompts_per_step}; "
            f"use 1 to {cfg.rl.prompts_per_step}"
        )
    update: dict[str, Any] = {
        "storage": cfg.storage.model_copy(
            update={
                "uri": _absolute_file_uri(cfg.storage.uri),
                "cache_dir": str(Path(cfg.storage.cache_dir).resolve()),
            }
        ),
        "tracking": cfg.tracking.model_copy(
            update={
                "tracking_uri": _absolute_sqlite(cfg.tracking.tracking_uri),
                "artifact_root": artifact_root_for(cfg.tracking.tracking_uri, cfg.tracking.artifact_root),
            }
        ),
    }
    return cfg.model_copy(update=update)


def prepare_data(
    config: str,
    overrides: list[str],
    init_checkpoint: str,
    run_name: str,
    rounds: int,
    shards: int,
    storage_uri: str = "",
    tracking_uri: str = "",
    kfp_run_id: str = "",
) -> dict[str, Any]:
    """Validate every parameter, check the initial checkpoint, write the prompt set and open the MLflow parent
    run. Returns config_json, run_root, parent_run_id and the shard ids."""
    start = time.time()
    from htgrpo.checkpoint import verify_checkpoint
    from htgrpo.prompts import check_shapes_pool, load_prompt_pool
    from htgrpo.rl.rewards import check_reward_metadata
    from htgrpo.tracking import digest_rows
    from htgrpo.world.grammar import write_jsonl

    check_run_name(run_name)  # it names the run's directory in the store: one safe path segment
    cfg = resolve_config(
        config, overrides, rounds=rounds, shards=shards, storage_uri=storage_uri, tracking_uri=tracking_uri
    )
    init = _absolute_file_uri(init_checkpoint) if "://" not in init_checkpoint else init_checkpoint
    meta = verify_checkpoint(init, cfg.storage)
    saved = Config.model_validate(meta["config"])
    if saved.backbone != cfg.backbone or meta["backbone"]["grid"] != cfg.world.grid:
        raise ConfigError(
            f"init_checkpoint {init}: its backbone or grid differs from the configuration's "
            f"(checkpoint {saved.backbone.model_dump()}, grid {meta['backbone']['grid']})"
        )
    rows = load_prompt_pool(cfg)
    if cfg.backbone.kind == "tiny":
        check_shapes_pool(rows, cfg.rl.prompts)
    check_reward_metadata(cfg.rl.rewards, rows)  # before any GPU step starts
    run_root = join_uri(cfg.storage.uri, "runs", run_name)
    store = open_store(run_root, cfg.storage)
    store.put_bytes("config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())
    local = Path(cfg.storage.cache_dir) / f"prompts-{os.getpid()}.jsonl"
    write_jsonl(rows, local)
    store.put_file("prompts.jsonl", local)
    local.unlink(missing_ok=True)

    tracker = _tracker(cfg, run_root)
    tags = {"kfp.run_id": kfp_run_id, "kfp.run_name": run_name, "run_root": run_root, "init_checkpoint": init}
    parent = tracker.start_pipeline_run(cfg, run_name, tags=tags) or ""
    tracker.log_dataset(
        parent, f"prompts-{cfg.rl.prompts}", join_uri(run_root, "prompts.jsonl"), digest_rows(rows)
    )
    tracker.log_params(parent, {"run.rounds": rounds, "run.shards": shards})
    record_time(cfg, run_root, "prepare_data", start)
    return {
        "config_json": json.dumps(config_to_dict(cfg)),
        "run_root": run_root,
        "init_checkpoint": init,
        "parent_run_id": parent,
        "shard_ids": list(range(shards)),
    }


# --- plan_shards and rollout ----------------------------------------------------------------------------------


def plan_shards(config_json: str, run_root: str, checkpoint_uri: str, round_: int, shards: int) -> list[dict]:
    """The ParallelFor items of a round: one self-contained dict per rollout shard.

    Each item carries everything its rollout needs, so the loop body reads nothing but its item (kfp.local
    2.17.3 replaces every upstream task output used inside a ParallelFor body with the loop item).
    """
    start = time.time()
    items = [
        {
            "config_json": config_json,
            "run_root": run_root,
            "checkpoint_uri": checkpoint_uri,
            "round": int(round_),
            "shard": shard,
            "shards": int(shards),
        }
        for shard in range(int(shards))
    ]
    record_time(load_run_config(config_json), run_root, f"round-{int(round_):03d}-plan_shards", start)
    return items


def _trainer_at(cfg: Config, checkpoint_uri: str, round_: int):
    from htgrpo.rl.trainer import GRPOTrainer

    trainer, state = GRPOTrainer.from_checkpoint(cfg, checkpoint_uri)
    if trainer.step != round_ - 1:
        raise PipelineError(
            f"checkpoint {checkpoint_uri} is at RL step {trainer.step}; round {round_} needs step {round_ - 1}"
        )
    return trainer, state


def rollout(
    config_json: str, run_root: str, checkpoint_uri: str, round_: int, shard: int, shards: int
) -> str:
    """Roll out shard ``shard`` of round ``round_`` with the policy at ``checkpoint_uri``; returns its URI."""
    start = time.time()
    cfg = load_run_config(config_json)
    uri = round_uri(run_root, round_, "rollout", f"shard-{int(shard):03d}.safetensors")
    store = open_store(round_uri(run_root, round_, "rollout"), cfg.storage)
    name = uri.rsplit("/", 1)[1]
    if store.exists(name):
        return uri
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.rl.trainer import GRPOTrainer

    _threads(parallel=int(shards))  # the shards of a round may share this machine
    policy, _ = load_checkpoint(checkpoint_uri, cfg)
    # no reference and no optimizer to sample (the trainer builds its optimizer on first use)
    trainer = GRPOTrainer(cfg, policy, reference=policy, progress=False)
    trainer.step = int(round_) - 1
    batch = trainer.rollout(int(shard), int(shards))
    store.put_bytes(name, batch.to_bytes())
    record_time(cfg, run_root, f"round-{int(round_):03d}-rollout-{int(shard):03d}", start)
    return uri


# --- score_rewards -----------------------------------------------------------------------------------------


def score_rewards(
    config_json: str,
    run_root: str,
    checkpoint_uri: str,
    round_: int,
    shard_uris: list[str],
    parent_run_id: str,
) -> str:
    """Score a round's rollout shards (rewards with weights, group advantages); returns the scored batch URI.

    Loads only the reward functions, the shards (numpy) and the run's trainer state (its step and per-prompt
    statistics, one small verified file of ``checkpoint_uri``): no backbone, no trainer, no torch. Its MLflow
    run (``round-N-score``) is logged with the round's stage runs by ``train_refinement``.
    """
    from htgrpo.rl.advantages import PerPromptStatTracker
    from htgrpo.rl.phases import RolloutBatch
    from htgrpo.rl.rewards import mixed_reward
    from htgrpo.rl.scoring import score_rollout
    from htgrpo.storage.checkpoints import read_verified_object

    start, t0 = time.time(), time.perf_counter()
    cfg = load_run_config(config_json)
    uri = round_uri(run_root, round_, "scored.safetensors")
    store = open_store(round_uri(run_root, round_), cfg.storage)
    if store.exists("scored.safetensors"):
        return uri
    parts = []
    for shard_uri in shard_uris:
        parent, name = str(shard_uri).rsplit("/", 1)
        parts.append(RolloutBatch.from_bytes(open_store(parent, cfg.storage).get_bytes(name), arrays=True))
    batch = RolloutBatch.concat(parts)
    if batch.step != round_:
        raise PipelineError(f"rollout shards of step {batch.step} given to round {round_}")
    state_bytes = read_verified_object(checkpoint_uri, TRAINER_STATE, cfg.storage)
    state = json.loads(state_bytes) if state_bytes is not None else {}  # a base checkpoint: step 0
    if int(state.get("step", 0)) != round_ - 1:
        raise PipelineError(
            f"checkpoint {checkpoint_uri} is at RL step {state.get('step', 0)}; round {round_} needs step "
            f"{round_ - 1}"
        )
    tracker = None
    if cfg.rl.stat_tracking_buffer:
        tracker = PerPromptStatTracker(cfg.rl.stat_tracking_buffer)
        if state.get("tracker"):
            tracker.load_state_dict(state["tracker"])
    scored = score_rollout(cfg.rl, mixed_reward(cfg.rl.rewards), batch, tracker)
    scored.times["rollout"] = sum(p.sample.total_seconds for p in parts)
    scored.info.update(shards=len(parts), score_s=round(time.perf_counter() - t0, 3))
    if cfg.tracking.enabled and cfg.tracking.log_images and len(batch.images):
        step_ = max(1, len(batch.images) // 32)
        store.put_bytes("preview.npy", _npy_bytes(_grid(batch.images[::step_][:32])))
    store.put_bytes("scored.safetensors", scored.to_bytes(images=False))  # the stages need no images
    record_time(cfg, run_root, f"round-{int(round_):03d}-score", start)
    return uri


def _tags(round_: int, stage: str) -> dict[str, str]:
    return {"round": str(round_), "stage": stage, "htgrpo.kind": "round-stage"}


def _npy_bytes(array) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _grid(images, cols: int = 8):
    """Images [B, H, W, 3] as one uint8 grid (no captions)."""
    import numpy as np

    b, h, w, c = images.shape
    rows = -(-b // cols)
    out = np.full((rows * (h + 2), cols * (w + 2), c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        out[r * (h + 2) + 1 : r * (h + 2) + 1 + h, k * (w + 2) + 1 : k * (w + 2) + 1 + w] = img
    return np.kron(out, np.ones((3, 3, 1), dtype=np.uint8))


# --- train_global / train_structure / train_refinement ------------------------------------------------------


def train_stage(
    config_json: str,
    run_root: str,
    stage: str,
    checkpoint_uri: str,
    scored_uri: str,
    round_: int,
    parent_run_id: str,
) -> str:
    """One HT-GRPO stage's inner iterations on a round's scored batch; writes and returns the next checkpoint.

    global (the first stage) computes theta_old and theta_ref log-probs of all K plans and stores them in its
    checkpoint; structure and refinement reuse them. refinement closes the RL step (history, step counter).
    A re-run whose output checkpoint is already whole returns it: nothing saved is lost, nothing is redone.
    """
    start, t0 = time.time(), time.perf_counter()
    if stage not in STAGES:
        raise PipelineError(f"stage must be one of {', '.join(STAGES)} (got {stage!r})")
    cfg = load_run_config(config_json)
    out = round_uri(run_root, round_, stage)
    if checkpoint_is_whole(out, cfg.storage):
        return out
    from htgrpo.checkpoint import verify_once

    _threads()
    with verify_once():
        _train_stage(cfg, run_root, stage, checkpoint_uri, scored_uri, round_, parent_run_id, out, t0)
    record_time(cfg, run_root, f"round-{int(round_):03d}-{stage}", start)
    return out


def _train_stage(
    cfg: Config,
    run_root: str,
    stage: str,
    checkpoint_uri: str,
    scored_uri: str,
    round_: int,
    parent_run_id: str,
    out: str,
    t0: float,
) -> None:
    from htgrpo.checkpoint import read_checkpoint_file
    from htgrpo.rl.phases import ScoredBatch
    from htgrpo.rl.trainer import UpdateBatch

    trainer, state = _trainer_at(cfg, checkpoint_uri, round_)
    parent, name = str(scored_uri).rsplit("/", 1)
    scored = ScoredBatch.from_bytes(open_store(parent, cfg.storage).get_bytes(name))
    if scored.rollout.step != round_:
        raise PipelineError(f"scored batch {scored_uri} is of step {scored.rollout.step}, not round {round_}")
    if trainer.tracker is not None and scored.tracker_state:
        trainer.tracker.load_state_dict(scored.tracker_state)
    first, last = stage == STAGES[0], stage == STAGES[-1]
    pending = state.get("pending") if not first else None
    done_before = list(STAGES[: STAGES.index(stage)])
    if not first and (pending is None or pending.get("step") != round_ or pending.get("done") != done_before):
        raise PipelineError(
            f"{stage} needs the {STAGES[STAGES.index(stage) - 1]} checkpoint of round {round_}; "
            f"{checkpoint_uri} is not one"
        )
    times = (
        dict(pending["times"])
        if pending
        else {
            "rollout": scored.times.get("rollout", 0.0),
            "reward": scored.times.get("reward", 0.0),
            "old_ref": 0.0,
            "update": 0.0,
        }
    )
    stages = dict(pending["stages"]) if pending else {}
    iterations = list(pending["iterations"]) if pending else []
    stage_seconds = dict(pending.get("stage_seconds", {})) if pending else {}
    inputs = {**(pending.get("inputs", {}) if pending else {}), stage: checkpoint_uri}
    upd = None
    if scored.skip is None:
        if first:
            upd = trainer.prepare_update(scored)
            times["old_ref"] = trainer.old_ref_log_probs(upd)
        else:
            # the first stage's plans, rebuilt: its structure score (from theta_old), not the updated policy's
            blob = read_checkpoint_file(checkpoint_uri, LOG_PROBS_FILE, cfg.storage)
            upd = trainer.prepare_update(scored, UpdateBatch.structure_score_from_bytes(blob))
            upd.log_probs_from_bytes(blob, trainer.device)
        summary, its, seconds = trainer.update(upd, [stage])
        stages.update(summary)
        iterations += its
        times["update"] += seconds
    stage_seconds[stage] = round(time.perf_counter() - t0, 3)  # loading and updating (saving comes next)
    if last:
        record = trainer.finish_update(scored, upd, stages, iterations, times)
        trainer.save_to(out)
        _log_round(
            cfg, run_root, round_, parent_run_id, scored, stages, iterations, stage_seconds, inputs, record
        )
    else:
        pending = {
            "step": round_,
            "done": [*done_before, stage],
            "times": times,
            "stages": stages,
            "iterations": iterations,
            "stage_seconds": stage_seconds,
            "inputs": inputs,
        }
        files = {LOG_PROBS_FILE: upd.log_probs_to_bytes()} if upd is not None else {}
        trainer.save_to(out, extra_state={"pending": pending}, extra_files=files)


def _log_round(
    cfg: Config,
    run_root: str,
    round_: int,
    parent_run_id: str,
    scored,
    stages: dict[str, Any],
    iterations: list[dict[str, Any]],
    stage_seconds: dict[str, float],
    inputs: dict[str, str],
    record: dict[str, Any],
) -> None:
    """A round's four MLflow runs, logged by its last step: ``round-N-score`` (rewards per task and component,
    rollout grid) and ``round-N-global|structure|refinement`` (stage statistics, inner iterations, checkpoint
    URIs). One MLflow client per round instead of one per step; everything comes from the scored batch and the
    ``pending`` state the stage checkpoints carry."""
    if not cfg.tracking.enabled:
        return
    tracker = _tracker(cfg, run_root)
    parent = parent_run_id or None
    rec = scored.record
    run = tracker.start_run(f"round-{round_}-score", parent, tags=_tags(round_, "score"))
    tracker.log_metrics(
        run,
        {
            "reward_mean": rec["reward_mean"],
            "reward_std": rec["reward_std"],
            "reward_per_task": rec["reward_per_task"],
            "reward_components": rec["reward_components"],
            "zero_variance_share": rec["zero_variance_share"],
            "samples_kept": rec["samples_kept"],
            "time": {"rollout_s": scored.times.get("rollout"), "score_s": scored.info.get("score_s")},
        },
        step=round_,
    )
    preview = open_store(round_uri(run_root, round_), cfg.storage)
    if cfg.tracking.log_images and preview.exists("preview.npy"):
        import numpy as np

        grid = np.load(io.BytesIO(preview.get_bytes("preview.npy")), allow_pickle=False)
        tracker.log_image(run, grid, key="rollout_samples", step=round_)
    tracker.set_tags(
        run,
        {
            "scored_uri": round_uri(run_root, round_, "scored.safetensors"),
            "shards": scored.info.get("shards", 1),
        },
    )
    tracker.end_run(run)
    for stage in STAGES:
        run = tracker.start_run(f"round-{round_}-{stage}", parent, tags=_tags(round_, stage))
        metrics: dict[str, Any] = {
            "stage": stages.get(stage, {}),
            "time": {"stage_s": stage_seconds.get(stage)},
        }
        if stage == STAGES[-1]:
            metrics.update(
                reward_mean=record.get("reward_mean"),
                reward_std=record.get("reward_std"),
                reward_per_task=record.get("reward_per_task"),
                times=record.get("times"),
            )
        tracker.log_metrics(run, metrics, step=round_)
        for k, it in enumerate(i for i in iterations if i["stage"] == stage):
            tracker.log_metrics(run, {"iteration": {kk: v for kk, v in it.items() if kk != "stage"}}, step=k)
        tags = {
            "checkpoint_uri": round_uri(run_root, round_, stage),
            "input_checkpoint_uri": inputs.get(stage, ""),
        }
        tracker.set_tags(run, tags)
        tracker.end_run(run)


# --- evaluate and register -----------------------------------------------------------------------------------


def evaluate(
    config_json: str, run_root: str, checkpoint_uri: str, name: str, parent_run_id: str
) -> dict[str, Any]:
    """The shapes benchmark (``eval`` section) of a checkpoint; writes eval/NAME.json; returns its metrics."""
    start = time.time()
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.evaluate import evaluate_shapes
    from htgrpo.world.grammar import TASKS

    _threads()
    cfg = load_run_config(config_json)
    store = open_store(join_uri(run_root, "eval"), cfg.storage)
    if store.exists(f"{name}.json"):
        report = json.loads(store.get_bytes(f"{name}.json"))
    else:
        backbone, _ = load_checkpoint(checkpoint_uri, cfg)
        report, images, _ = evaluate_shapes(backbone, cfg, progress=False)
        report["checkpoint"] = checkpoint_uri
        store.put_bytes(f"{name}.json", json.dumps(report, indent=2).encode())
        tracker = _tracker(cfg, run_root)
        run = tracker.start_run(f"evaluate-{name}", parent_run_id or None, tags={"htgrpo.kind": "evaluation"})
        s = report["summary"]
        tracker.log_metrics(
            run,
            {
                "overall": s["overall"],
                **{t: s[t] for t in TASKS if t in s},
                "reward_mean": report["reward_mean"],
            },
            step=0,
        )
        step_ = max(1, len(images) // 32)
        tracker.log_image(run, _grid(images[::step_][:32]), key=f"eval_{name}", step=0)
        tracker.set_tags(run, {"checkpoint_uri": checkpoint_uri, "split": report["split"]})
        tracker.end_run(run)
        record_time(cfg, run_root, f"evaluate-{name}", start)
    s = report["summary"]
    return {
        "overall": s["overall"],
        **{t: s[t] for t in TASKS if t in s},
        "reward_mean": report["reward_mean"],
    }


def compare_evaluations(cfg: Config, run_root: str) -> dict[str, Any] | None:
    """The trained model against the base on the same prompts: each overall with its 95 % interval and the change
    with the interval of a paired bootstrap over prompts (``htgrpo.eval.bootstrap``); None when an evaluation's
    report has no per-prompt rows."""
    from htgrpo.eval.bootstrap import interval, paired_difference, verdict

    store = open_store(join_uri(run_root, "eval"), cfg.storage)
    reports = {}
    for name in ("base", "trained"):
        if not store.exists(f"{name}.json"):
            return None
        reports[name] = json.loads(store.get_bytes(f"{name}.json"))
    base, trained = (reports[k].get("per_prompt") for k in ("base", "trained"))
    if not base or not trained:
        return None
    change = paired_difference(trained, base)
    protocols = {k: {f: r.get(f) for f in ("split", "seed", "images_per_prompt")} for k, r in reports.items()}
    if protocols["base"] != protocols["trained"]:
        raise PipelineError(
            f"the base and trained evaluations differ in protocol (base {protocols['base']}, trained "
            f"{protocols['trained']}); they must use the same split, seed and images per prompt"
        )
    return {
        "metric": "GenEval overall",
        "protocol": protocols["trained"],
        "images_per_prompt": reports["trained"]["images_per_prompt"],
        "base": interval(base),
        "trained": interval(trained),
        "change": change,
        "verdict": verdict(change),
        "method": "95 % intervals from a bootstrap over prompts, stratified by task; the change's is paired",
    }


def register(
    config_json: str,
    run_root: str,
    checkpoint_uri: str,
    base_metrics: dict[str, Any],
    trained_metrics: dict[str, Any],
    parent_run_id: str,
) -> dict[str, Any]:
    """Register the trained checkpoint: alias candidate always; champion only when it beats its base and the
    current champion by ``pipeline.promote_margin`` (default: the half-width of the paired change's 95 %
    interval), on the same evaluation protocol. Write summary.json (base vs trained per task, the intervals, why
    it was or was not promoted); close the parent run."""
    start = time.time()
    cfg = load_run_config(config_json)
    tracker = _tracker(cfg, run_root)
    comparison = compare_evaluations(cfg, run_root)
    margin = cfg.pipeline.promote_margin
    if margin is None:
        margin = comparison["change"]["half_width"] if comparison else 0.0
    key = cfg.tracking.champion_metric
    registry = tracker.register(
        checkpoint_uri,
        parent_run_id or None,
        trained_metrics,
        base=base_metrics.get(key),
        margin=margin,
        protocol=comparison["protocol"] if comparison else None,
    )
    if registry.get("reason"):
        print(f"register: {registry['reason']}")
        tracker.set_tags(parent_run_id or None, {"htgrpo.promotion": registry["reason"]})
    experiment_id = None
    if cfg.tracking.enabled and not tracker.offline:
        try:
            experiment_id = tracker.experiment_id()  # for the run's address in the MLflow UI
        except Exception:  # noqa: BLE001 - only for the summary's pointer
            experiment_id = None
    summary = {
        "run_root": run_root,
        "checkpoint": checkpoint_uri,
        "split": cfg.eval.split,
        "base": base_metrics,
        "trained": trained_metrics,
        "registry": registry,
        "mlflow": {
            "tracking_uri": cfg.tracking.tracking_uri if cfg.tracking.enabled else None,
            "experiment": cfg.tracking.experiment,
            "experiment_id": experiment_id,
            "parent_run_id": parent_run_id or None,
        },
    }
    if comparison is not None:
        summary["comparison"] = comparison
    open_store(run_root, cfg.storage).put_bytes("summary.json", json.dumps(summary, indent=2).encode())
    tracker.log_metrics(parent_run_id or None, {"base": base_metrics, "trained": trained_metrics}, step=0)
    tracker.end_run(parent_run_id or None)
    record_time(cfg, run_root, "register", start)
    return summary


__all__ = [
    "LOG_PROBS_FILE",
    "STAGES",
    "PipelineError",
    "compare_evaluations",
    "evaluate",
    "prepare_data",
    "register",
    "resolve_config",
    "rollout",
    "score_rewards",
    "train_stage",
]
