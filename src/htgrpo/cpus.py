"""How many CPU threads torch should use in this process.

torch sizes its intra-op pool by the machine's cores, not by what the process may use: in a Kubernetes pod with a
CPU limit, or next to the other rollout shards that the local pipeline runner starts side by side, its OpenMP
threads then outnumber the cores, spin at every barrier and slow each process down several times over.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from htgrpo.errors import ConfigError

THREADS_ENV = "HTGRPO_THREADS"
"""Threads for this process, or for every process on the machine together when SHARED_ENV is set."""
SHARED_ENV = "HTGRPO_SHARED_MACHINE"
"""Set (by ``htgrpo pipeline run-local``) when parallel tasks share this machine's CPUs."""


def _cgroup_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this container (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_*``), rounded up; None if none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by the container's CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_limit(cgroup_root)
    return max(1, min(n, limit) if limit else n)


def thread_count(parallel: int = 1, environ: os._Environ | dict[str, str] | None = None) -> int:
    """Threads for one of `parallel` tasks: HTGRPO_THREADS (default: the available CPUs), divided among the
    tasks that run side by side when they share the machine (HTGRPO_SHARED_MACHINE)."""
    env = os.environ if environ is None else environ
    raw = env.get(THREADS_ENV, "")
    try:
        total = int(raw) if raw else available_cpus()
    except ValueError:
        raise ConfigError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads") from None
    if total < 1:
        raise ConfigError(f"{THREADS_ENV}={raw!r}: expected at least 1 thread")
    if env.get(SHARED_ENV):
        total = max(1, total // max(int(parallel), 1))
    return total


def set_torch_threads(parallel: int = 1) -> int:
    import torch

    n = thread_count(parallel)
    torch.set_num_threads(n)
    return n
