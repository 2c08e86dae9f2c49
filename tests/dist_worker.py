"""One rank of `htgrpo train` under torchrun, for tests/test_distributed.py.

Usage: torchrun --standalone --nproc_per_node N tests/dist_worker.py DUMP_DIR train --config ... --init ... --out ...

Runs the real command line in this rank, with a test reward (the mean pixel, which varies within every group) and
with ``GRPOTrainer.train`` wrapped so that every rank writes its final weights and step records to DUMP_DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from htgrpo.cli import main
from htgrpo.rl.rewards import register_reward
from htgrpo.rl.trainer import GRPOTrainer

register_reward("mean_pixel", lambda images, p, m: images.reshape(len(images), -1).mean(1) / 255.0)
dump = Path(sys.argv[1])
_train = GRPOTrainer.train


def train_and_dump(self, until=None):
    history = _train(self, until)
    rank = self.dist.rank
    state = {k: v.detach().cpu().contiguous() for k, v in self.policy.state_dict().items()}
    save_file(state, str(dump / f"rank{rank}.safetensors"))
    (dump / f"rank{rank}.json").write_text(json.dumps({"world": self.dist.world_size, "history": history}))
    return history


GRPOTrainer.train = train_and_dump
raise SystemExit(main(sys.argv[2:]))
