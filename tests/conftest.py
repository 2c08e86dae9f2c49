"""Test-wide settings: single-threaded torch (small models gain nothing from threads, and it keeps runs repeatable)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
