"""Test-wide settings: single-threaded torch (small models gain nothing from threads, and it keeps runs repeatable);
the real helm and kubectl for the chart and infra/ tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    """The directory with the pinned helm and kubectl (installed into .cache/tools on first use)."""
    from k8s import tool_bin

    return tool_bin()


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict[str, str]:
    """helm's cache, config and data kept out of $HOME."""
    home = tmp_path_factory.mktemp("helm")
    env = dict(os.environ)
    env.update({f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")})
    return env
