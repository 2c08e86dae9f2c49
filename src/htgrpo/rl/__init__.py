"""Online RL for masked-diffusion T2I: HT-GRPO (algorithm.md §4) and its baselines (§5) in one trainer.

Where things are:

* ``loss.py``        -- THE HT-GRPO LOSS (§4.8): clipped surrogate with per-token advantages + k3 KL, on U only.
* ``hierarchy.py``   -- the structure/refinement token partition (§4.4) and HCA weights (§4.5).
* ``estimators/``    -- per method, the K iteration plans: visibility V_k, update set U_k, prompt, weights
  (``htgrpo.py`` §4.6-4.7; ``maskgrpo.py``, ``unigrpo.py``, ``d1.py``, ``tracegrpo.py``, ``coupled.py`` §5).
* ``advantages.py``  -- group z-score advantages, non-finite rewards, per-prompt statistics (§4.3).
* ``rewards.py``     -- the reward registry and weighted mix.
* ``trainer.py``     -- ``GRPOTrainer``: rollout -> reward -> advantages -> old/ref log-probs -> K updates.
"""

from __future__ import annotations

from htgrpo.rl.advantages import group_advantages
from htgrpo.rl.hierarchy import hca_weights, partition_order, partition_tokens
from htgrpo.rl.loss import grpo_loss, policy_log_probs, token_log_probs
from htgrpo.rl.rewards import get_reward, mixed_reward, register_reward
from htgrpo.rl.trainer import GRPOTrainer

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
