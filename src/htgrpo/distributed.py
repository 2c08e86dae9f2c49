"""Data-parallel RL training under ``torchrun`` (and Kubeflow Trainer's ``torch-distributed`` runtime).

``torchrun`` (or the Trainer's ``PET_*`` environment, which torchrun reads) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process; ``init_distributed`` reads them, joins the
process group (NCCL on GPUs, gloo on CPUs) and picks the process's device (``cuda:LOCAL_RANK``).

How ``GRPOTrainer`` uses it (every rank holds the whole model):

* each step's prompts are drawn from the same seed on every rank and split into ``WORLD_SIZE`` contiguous shards;
  a rank rolls out and scores its shard's groups (a group never straddles two ranks);
* rewards are all-gathered, so advantages, per-prompt statistics and the logged step record are computed on the
  whole batch, identically everywhere;
* the loss normaliser (sum |U| or the number of scored samples) is all-reduced, each rank's loss is its share of
  the global loss, and gradients are all-reduced (summed) before clipping: every rank takes the same optimizer
  step, so the weights stay identical (they are broadcast from rank 0 once, at the start);
* only rank 0 writes the run directory (config, metrics, checkpoints) and logs to MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from htgrpo.errors import HtgrpoError


class DistributedError(HtgrpoError):
    """The distributed environment is incomplete or inconsistent."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise DistributedError(f"WORLD_SIZE is above 1 but {name} is not set (launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def default_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group described by the environment (a single process when WORLD_SIZE is unset or 1)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(device=default_device())
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", 0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(f"WORLD_SIZE={world} but {name} is not set (launch with torchrun)")
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside 0..{world - 1}")
    device = default_device(local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_values(ctx: DistContext, values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise sum, max or min of a few numbers over the ranks."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return [float(v) for v in t.cpu()]


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _buckets(params: list[torch.nn.Parameter], limit: int):
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        n = p.numel() * p.element_size()
        if bucket and (size + n > limit or p.dtype != bucket[0].dtype or p.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += n
    if bucket:
        yield bucket


def all_reduce_gradients(ctx: DistContext, params: Iterable[torch.nn.Parameter], bucket_mb: int = 64) -> None:
    """Sum every parameter's gradient over the ranks (a missing gradient counts as zeros), in flat buckets."""
    if not ctx.enabled:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dev = _comm_device(ctx)
    for bucket in _buckets(params, bucket_mb << 20):
        flat = torch.cat([q.grad.reshape(-1) for q in bucket]).to(dev)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for q in bucket:
            n = q.numel()
            q.grad.copy_(flat[offset : offset + n].view_as(q.grad))
            offset += n


def broadcast_parameters(ctx: DistContext, params: Iterable[torch.Tensor]) -> None:
    """Make every rank's tensors equal to rank 0's (in place)."""
    if not ctx.enabled:
        return
    dev = _comm_device(ctx)
    with torch.no_grad():
        for p in params:
            t = p.data.to(dev)
            dist.broadcast(t, src=0)
            if t.data_ptr() != p.data.data_ptr():
                p.data.copy_(t)


__all__ = [
    "DistContext",
    "DistributedError",
    "all_gather_objects",
    "all_reduce_gradients",
    "all_reduce_values",
    "broadcast_parameters",
    "default_device",
    "init_distributed",
    "shutdown",
]
