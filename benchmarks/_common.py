"""Shared helpers of the benchmark scripts: result files (JSON + Markdown) and thread settings."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def write_results(stem: str | Path, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    js = stem.with_suffix(".json")
    md = stem.with_suffix(".md")
    js.write_text(json.dumps(data, indent=2))
    md.write_text(markdown.rstrip() + "\n")
    return js, md
