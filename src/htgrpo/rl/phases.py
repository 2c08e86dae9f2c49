"""The phases of one RL step as data, so that they can run in separate processes (the Kubeflow pipeline).

``RolloutBatch``: a shard of the step's prompts x G sampled images with their tokens and trajectories (commit
steps, entropies) and the decoded images. ``ScoredBatch``: the whole step's rollouts, concatenated in shard order,
with rewards, advantages and the samples kept for the update. Both serialise to one safetensors blob
(``to_bytes`` / ``from_bytes``), written to the run's store by the pipeline components.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from htgrpo.sampling.result import SampleResult
from htgrpo.world.grammar import Metadata

_TRAJ = ("codes", "commit_step", "entropy_commit", "entropy0")


def _pack(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy()
    return save_tensors(
        {**{k: v.contiguous() for k, v in tensors.items()}, "__meta__": torch.from_numpy(blob)}
    )


def _unpack(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = load_tensors(data)
    meta = json.loads(tensors.pop("__meta__").numpy().tobytes().decode())
    return tensors, meta


_SAMPLE_SCALARS = ("forward_passes", "model_seconds", "total_seconds")


def _sample_meta(sample: SampleResult) -> dict:
    """The scalar fields of a SampleResult, stored beside its tensors."""
    return {k: getattr(sample, k) for k in _SAMPLE_SCALARS}


def _sample_from(tensors: dict, meta: dict) -> SampleResult:
    return SampleResult(**{k: tensors[k] for k in _TRAJ}, **{k: meta[k] for k in _SAMPLE_SCALARS})


@dataclass
class RolloutBatch:
    """One shard of a step's rollout: rows are (prompt, sample) in group order."""

    step: int
    shard: int
    shards: int
    metas: list[Metadata]
    sample: SampleResult
    images: np.ndarray

    @property
    def texts(self) -> list[str]:
        return [m["prompt"] for m in self.metas]

    def to_bytes(self) -> bytes:
        s = self.sample
        tensors = {k: getattr(s, k).cpu() for k in _TRAJ}
        tensors["images"] = torch.from_numpy(np.ascontiguousarray(self.images))
        meta = {
            "kind": "rollout",
            "step": self.step,
            "shard": self.shard,
            "shards": self.shards,
            "metas": self.metas,
            **_sample_meta(s),
        }
        return _pack(tensors, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> RolloutBatch:
        t, meta = _unpack(data)
        if meta.get("kind") != "rollout":
            raise ValueError("not a rollout batch")
        sample = _sample_from(t, meta)
        return cls(meta["step"], meta["shard"], meta["shards"], meta["metas"], sample, t["images"].numpy())

    @classmethod
    def concat(cls, parts: list[RolloutBatch]) -> RolloutBatch:
        """The shards of one step, in shard order, as one batch."""
        parts = sorted(parts, key=lambda p: p.shard)
        if not parts:
            raise ValueError("no rollout shards")
        steps = {p.step for p in parts}
        if len(steps) != 1 or [p.shard for p in parts] != list(range(parts[0].shards)):
            raise ValueError(
                f"rollout shards do not form one step: steps {sorted(steps)}, shards {[p.shard for p in parts]} "
                f"of {parts[0].shards}"
            )
        if len(parts) == 1:
            return parts[0]
        sample = SampleResult(
            **{k: torch.cat([getattr(p.sample, k) for p in parts]) for k in _TRAJ},
            forward_passes=parts[0].sample.forward_passes,
            model_seconds=sum(p.sample.model_seconds for p in parts),
            total_seconds=sum(p.sample.total_seconds for p in parts),
        )
        return cls(
            parts[0].step,
            0,
            1,
            [m for p in parts for m in p.metas],
            sample,
            np.concatenate([p.images for p in parts]),
        )


@dataclass
class ScoredBatch:
    """A step's rollout with rewards and group advantages; ``record`` holds the step's reward statistics."""

    rollout: RolloutBatch
    rewards: np.ndarray
    components: dict[str, np.ndarray]
    advantages: np.ndarray
    keep: np.ndarray
    record: dict[str, Any]
    tracker_state: dict[str, Any] | None = None
    times: dict[str, float] = field(default_factory=dict)
    skip: str | None = None
    """Why the step has nothing to update (every group skipped or zero-variance), else None."""

    def to_bytes(self) -> bytes:
        r = self.rollout
        tensors = {k: getattr(r.sample, k).cpu() for k in _TRAJ}
        tensors["images"] = torch.from_numpy(np.ascontiguousarray(r.images))
        tensors["rewards"] = torch.from_numpy(np.asarray(self.rewards, dtype=np.float64))
        tensors["advantages"] = torch.from_numpy(np.asarray(self.advantages, dtype=np.float64))
        tensors["keep"] = torch.from_numpy(np.asarray(self.keep, dtype=bool))
        for k, v in self.components.items():
            tensors[f"component.{k}"] = torch.from_numpy(np.asarray(v, dtype=np.float64))
        meta = {
            "kind": "scored",
            "step": r.step,
            "metas": r.metas,
            **_sample_meta(r.sample),
            "record": self.record,
            "tracker_state": self.tracker_state,
            "times": self.times,
            "skip": self.skip,
        }
        return _pack(tensors, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoredBatch:
        t, meta = _unpack(data)
        if meta.get("kind") != "scored":
            raise ValueError("not a scored rollout batch")
        sample = _sample_from(t, meta)
        rollout = RolloutBatch(meta["step"], 0, 1, meta["metas"], sample, t["images"].numpy())
        comps = {k.removeprefix("component."): v.numpy() for k, v in t.items() if k.startswith("component.")}
        return cls(
            rollout,
            t["rewards"].numpy(),
            comps,
            t["advantages"].numpy(),
            t["keep"].numpy(),
            meta["record"],
            meta["tracker_state"],
            meta["times"],
            meta.get("skip"),
        )


__all__ = ["RolloutBatch", "ScoredBatch"]
