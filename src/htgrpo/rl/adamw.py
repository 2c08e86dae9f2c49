"""AdamW with torch.optim.AdamW's update and state layout, but without torch.optim.

Constructing any ``torch.optim.Optimizer`` imports torch's compiler stack (``torch._dynamo``): about 1.9 s on a
CPU, paid again by every pipeline stage task, each of which lives for a few seconds. This class applies the same
decoupled-weight-decay Adam update as torch's default AdamW path (no amsgrad, no maximize) tensor by tensor, and
its ``state_dict`` has torch's layout, so either optimizer can resume from the other's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# param-group flags that torch.optim.AdamW writes; kept so that torch can load our state_dict
_TORCH_FLAGS: dict[str, Any] = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": True,
}
_HYPER = ("lr", "betas", "eps", "weight_decay")


class AdamW:
    """Decoupled weight-decay Adam (Loshchilov & Hutter, 2019), numerically equal to torch.optim.AdamW."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        unknown = set(group) - set(_HYPER) - {"params"}
        if unknown:
            raise ValueError(f"AdamW param group: unknown keys {sorted(unknown)}")
        g = {**self.defaults, **group, "params": list(group["params"])}
        if g["lr"] < 0 or g["eps"] < 0 or g["weight_decay"] < 0:
            raise ValueError(f"AdamW: lr, eps and weight_decay must be >= 0 (got {[g[k] for k in _HYPER]})")
        if not all(0.0 <= b < 1.0 for b in g["betas"]):
            raise ValueError(f"AdamW: betas must lie in [0, 1) (got {g['betas']})")
        self.param_groups.append(g)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, lr_scale: float = 1.0) -> None:
        """One AdamW update; ``lr_scale`` multiplies every group's learning rate for this step only (the trainer's
        per-step credit, e.g. HT-GRPO's stage weight)."""
        if not (math.isfinite(lr_scale) and lr_scale >= 0):
            raise ValueError(f"AdamW.step: lr_scale must be finite and >= 0 (got {lr_scale})")
        for g in self.param_groups:
            lr, (beta1, beta2), eps, wd = g["lr"] * lr_scale, g["betas"], g["eps"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                st["step"] += 1
                step = float(st["step"])
                p.mul_(1 - lr * wd)
                st["exp_avg"].lerp_(p.grad, 1 - beta1)
                st["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                step_size = lr / (1 - beta1**step)
                denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                p.addcdiv_(st["exp_avg"], denom, value=-step_size)

    # --- torch's state_dict layout: parameters numbered in group order ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append({**{k: g[k] for k in _HYPER}, **_TORCH_FLAGS, "params": ids})
        params = [p for g in self.param_groups for p in g["params"]]
        state = {index[id(p)]: dict(self.state[p]) for p in params if p in self.state}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups, strict=True)
        ):
            raise ValueError("optimizer state does not match the model's parameter groups")
        for s in saved:
            unsupported = {k: s[k] for k in ("amsgrad", "maximize") if s.get(k)}
            if unsupported:
                raise ValueError(
                    f"optimizer state uses settings this AdamW does not implement: {unsupported}"
                )
        params: dict[int, torch.Tensor] = {}
        for s, g in zip(saved, self.param_groups, strict=True):
            g.update({k: (tuple(s[k]) if k == "betas" else s[k]) for k in _HYPER})
            params.update(zip(s["params"], g["params"], strict=True))
        self.state = {}
        for pid, slots in state_dict["state"].items():
            p = params[int(pid)]
            self.state[p] = {
                "step": torch.as_tensor(slots["step"], dtype=torch.float32).detach().clone().cpu(),
                "exp_avg": slots["exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                "exp_avg_sq": slots["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone(),
            }
