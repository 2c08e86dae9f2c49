"""Online RL for masked-diffusion T2I: HT-GRPO (algorithm.md §4) and its baselines (§5) in one trainer.

Where things are:

* ``loss.py``        -- THE HT-GRPO LOSS (§4.8): clipped surrogate with per-token advantages + k3 KL, on U only.
* ``hierarchy.py``   -- the structure/refinement token partition (§4.4) and HCA weights (§4.5).
* ``estimators/``    -- per method, the K iteration plans: visibility V_k, update set U_k, prompt, weights
  (``htgrpo.py`` §4.6-4.7; ``maskgrpo.py``, ``unigrpo.py``, ``d1.py``, ``tracegrpo.py``, ``coupled.py`` §5).
* ``advantages.py``  -- group z-score advantages, non-finite rewards, per-prompt statistics (§4.3).
* ``rewards.py``     -- the reward registry and weighted mix.
* ``adamw.py``       -- torch's AdamW update without torch.optim (whose import costs a stage task ~2 s).
* ``trainer.py``     -- ``GRPOTrainer``: rollout -> reward -> advantages -> old/ref log-probs -> K updates.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from htgrpo.rl.advantages import group_advantages
    from htgrpo.rl.hierarchy import hca_weights, partition_order, partition_tokens
    from htgrpo.rl.loss import grpo_loss, policy_log_probs, token_log_probs
    from htgrpo.rl.rewards import get_reward, mixed_reward, register_reward
    from htgrpo.rl.trainer import GRPOTrainer

# imported on first use, so that ``htgrpo.rl.rewards`` (the pipeline's reward step) loads without torch
_EXPORTS = {
    "GRPOTrainer": "trainer",
    "get_reward": "rewards",
    "group_advantages": "advantages",
    "grpo_loss": "loss",
    "hca_weights": "hierarchy",
    "mixed_reward": "rewards",
    "partition_order": "hierarchy",
    "partition_tokens": "hierarchy",
    "policy_log_probs": "loss",
    "register_reward": "rewards",
    "token_log_probs": "loss",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"htgrpo.rl.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'htgrpo.rl' has no attribute {name!r}")


__all__ = [
    "GRPOTrainer",
    "get_reward",
    "group_advantages",
    "grpo_loss",
    "hca_weights",
    "mixed_reward",
    "partition_order",
    "partition_tokens",
    "policy_log_probs",
    "register_reward",
    "token_log_probs",
]
