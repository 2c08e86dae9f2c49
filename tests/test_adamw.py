"""The project's AdamW against torch.optim.AdamW: same update, interchangeable state, no compiler import."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from htgrpo.rl.adamw import AdamW


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))


def _groups(model: torch.nn.Module) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]


def _train(model, opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(4, 8, generator=gen)).square().sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_update_equals_torch_adamw_bit_for_bit():
    ours, theirs = _model(), _model()
    kw = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8}
    _train(ours, AdamW(_groups(ours), **kw), 12, seed=1)
    _train(theirs, torch.optim.AdamW(_groups(theirs), foreach=False, **kw), 12, seed=1)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0].weight, _model()[0].weight)  # it did train


@pytest.mark.parametrize("direction", ["ours->torch", "torch->ours"])
def test_state_dict_moves_between_the_two(direction):
    kw = {"lr": 5e-3, "betas": (0.9, 0.98)}
    src_model = _model()
    src = (AdamW if direction == "ours->torch" else torch.optim.AdamW)(_groups(src_model), **kw)
    _train(src_model, src, 3, seed=2)
    dst_model = copy.deepcopy(src_model)
    dst = (torch.optim.AdamW if direction == "ours->torch" else AdamW)(_groups(dst_model), **kw)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    _train(src_model, src, 4, seed=3)
    _train(dst_model, dst, 4, seed=3)
    for a, b in zip(src_model.parameters(), dst_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mismatched_state_is_refused():
    opt = AdamW(_groups(_model()))
    other = AdamW(list(_model().parameters()))
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="betas"):
        AdamW(_model().parameters(), betas=(0.9, 1.0))


def test_no_compiler_import():
    code = (
        "import sys, torch\n"
        "from htgrpo.rl.adamw import AdamW\n"
        "m = torch.nn.Linear(3, 3); o = AdamW(m.parameters())\n"
        "m(torch.ones(1, 3)).sum().backward(); o.step()\n"
        "print(any(k.startswith('torch._dynamo') for k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
