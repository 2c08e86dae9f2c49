"""The phases of one RL step as data, so that they can run in separate processes (the Kubeflow pipeline).

``RolloutBatch``: a shard of the step's prompts x G sampled images with their tokens and trajectories (commit
steps, entropies) and the decoded images. ``ScoredBatch``: the whole step's rollouts, concatenated in shard order,
with rewards, advantages and the samples kept for the update. Both serialise to one safetensors blob
(``to_bytes`` / ``from_bytes``), written to the run's store by the pipeline components; the pipeline's scored
batch leaves the images out (the stages do not read them).

Reading with ``arrays=True`` keeps every tensor a numpy array (``Trajectories`` instead of a ``SampleResult``), so
the reward step scores a rollout without importing torch; the blobs are the same either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from htgrpo.world.grammar import Metadata

if TYPE_CHECKING:
    from htgrpo.sampling.result import SampleResult

_TRAJ = ("codes", "commit_step", "entropy_commit", "entropy0")


def _np(x: Any) -> np.ndarray:
    """A CPU numpy view of a numpy array or a torch tensor."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x)
    return x.detach().cpu().contiguous().numpy()


def _pack(tensors: dict[str, Any], meta: dict[str, Any]) -> bytes:
    from safetensors.numpy import save

    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy()
    return save({**{k: _np(v) for k, v in tensors.items()}, "__meta__": blob})


def _unpack(data: bytes, arrays: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors (numpy arrays when ``arrays``, else torch tensors) and the JSON metadata of a blob."""
    if arrays:
        from safetensors.numpy import load
    else:
        from safetensors.torch import load
    tensors = load(data)
    meta = json.loads(_np(tensors.pop("__meta__")).tobytes().decode())
    return tensors, meta


_SAMPLE_SCALARS = ("forward_passes", "model_seconds", "total_seconds")


@dataclass
class Trajectories:
    """A ``SampleResult``'s tensors as numpy arrays: what scoring carries along without torch."""

    codes: np.ndarray
    commit_step: np.ndarray
    entropy_commit: np.ndarray
    entropy0: np.ndarray
    forward_passes: int
    model_seconds: float
    total_seconds: float

    def __len__(self) -> int:
        return self.codes.shape[0]


def _sample_meta(sample: SampleResult | Trajectories) -> dict:
    """The scalar fields of a SampleResult, stored beside its tensors."""
    return {k: getattr(sample, k) for k in _SAMPLE_SCALARS}


def _sample_from(tensors: dict, meta: dict, arrays: bool = False) -> SampleResult | Trajectories:
    if arrays:
        return Trajectories(**{k: tensors[k] for k in _TRAJ}, **{k: meta[k] for k in _SAMPLE_SCALARS})
    from htgrpo.sampling.result import SampleResult

    return SampleResult(**{k: tensors[k] for k in _TRAJ}, **{k: meta[k] for k in _SAMPLE_SCALARS})


def _cat(xs: list[Any]) -> Any:
    if isinstance(xs[0], np.ndarray):
        return np.concatenate(xs)
    import torch

    return torch.cat(xs)


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
        tensors = {k: getattr(s, k) for k in _TRAJ}
        tensors["images"] = self.images
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
    def from_bytes(cls, data: bytes, *, arrays: bool = False) -> RolloutBatch:
        """``arrays``: numpy trajectories (``Trajectories``), no torch."""
        t, meta = _unpack(data, arrays)
        if meta.get("kind") != "rollout":
            raise ValueError("not a rollout batch")
        sample = _sample_from(t, meta, arrays)
        images = _np(t["images"])
        return cls(meta["step"], meta["shard"], meta["shards"], meta["metas"], sample, images)

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
        sample = type(parts[0].sample)(
            **{k: _cat([getattr(p.sample, k) for p in parts]) for k in _TRAJ},
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
    info: dict[str, Any] = field(default_factory=dict)
    """Facts about how the batch was made (the pipeline's shard count, the scoring step's time), not in the step
    record."""

    def to_bytes(self, images: bool = True) -> bytes:
        """``images=False`` leaves the decoded images out (the update needs only tokens and trajectories); read
        back, such a batch's ``rollout.images`` is empty."""
        r = self.rollout
        tensors = {k: getattr(r.sample, k) for k in _TRAJ}
        if images:
            tensors["images"] = r.images
        tensors["rewards"] = np.asarray(self.rewards, dtype=np.float64)
        tensors["advantages"] = np.asarray(self.advantages, dtype=np.float64)
        tensors["keep"] = np.asarray(self.keep, dtype=bool)
        for k, v in self.components.items():
            tensors[f"component.{k}"] = np.asarray(v, dtype=np.float64)
        meta = {
            "kind": "scored",
            "step": r.step,
            "metas": r.metas,
            **_sample_meta(r.sample),
            "record": self.record,
            "tracker_state": self.tracker_state,
            "times": self.times,
            "skip": self.skip,
            "info": self.info,
        }
        return _pack(tensors, meta)

    @classmethod
    def from_bytes(cls, data: bytes, *, arrays: bool = False) -> ScoredBatch:
        t, meta = _unpack(data, arrays)
        if meta.get("kind") != "scored":
            raise ValueError("not a scored rollout batch")
        sample = _sample_from(t, meta, arrays)
        images = _np(t["images"]) if "images" in t else np.zeros((0, 0, 0, 3), dtype=np.uint8)
        rollout = RolloutBatch(meta["step"], 0, 1, meta["metas"], sample, images)
        comps = {k.removeprefix("component."): _np(v) for k, v in t.items() if k.startswith("component.")}
        return cls(
            rollout,
            _np(t["rewards"]),
            comps,
            _np(t["advantages"]),
            _np(t["keep"]),
            meta["record"],
            meta["tracker_state"],
            meta["times"],
            meta.get("skip"),
            meta.get("info") or {},
        )


__all__ = ["RolloutBatch", "ScoredBatch", "Trajectories"]
