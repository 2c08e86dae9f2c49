"""Machinery shared by the samplers: CFG forward, seeded draws, and the chunked step loop with its records.

A sampler only decides, at each step, which masked positions to commit (``CommitRule``); everything else —
prompt encoding, one batched CFG forward, drawing a code everywhere, entropies, bookkeeping, timing — lives here so
both samplers record exactly the same things in the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from htgrpo.backbones.base import MASK_CODE, Backbone, PromptBatch
from htgrpo.config import SamplerConfig
from htgrpo.sampling.result import SampleResult


@dataclass
class Draw:
    """One step's proposal at every position: sampled code, its log-prob and the distribution's entropy."""

    codes: torch.Tensor  # [b, N] long
    logp: torch.Tensor  # [b, N] float32, log p(sampled code) under the *untempered* guided distribution
    entropy: torch.Tensor  # [b, N] float32, nats, of the tempered distribution the code was drawn from


CommitRule = Callable[[int, Draw, torch.Tensor, torch.Generator], torch.Tensor]
"""(step, draw, masked [b, N] bool, generator) -> positions to commit now, a subset of ``masked``."""


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without a sync the forward's time would be billed to the sampler.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exponential(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Exp(1) draws from ``generator`` (made on its device, then moved: use a generator on the model's device)."""
    e = torch.empty(tuple(shape), device=generator.device).exponential_(generator=generator)
    return e.to(device, non_blocking=True)


def gumbel(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise: -log E with E ~ Exp(1)."""
    return exponential(shape, generator, device).log_().neg_()


def uniform(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(
        device, non_blocking=True
    )


def draw_codes(guided: torch.Tensor, temperature: float, generator: torch.Generator) -> Draw:
    """Sample a code at every position from softmax(guided / temperature).

    Exponential race (argmax p / E, E ~ Exp(1)) is Gumbel-max without a log over the whole [b, N, K] tensor.
    The confidence ``logp`` is the sampled code's log-prob under the untempered softmax(guided): Lumina-DiMOO's
    sampler draws at temperature t but ranks its commits by the untempered probability (MMaDA samples at t = 1,
    where the two agree).
    """
    z = guided if temperature == 1.0 else guided / temperature
    probs = torch.softmax(z, dim=-1)
    race = exponential(probs.shape, generator, probs.device)
    codes = torch.div(probs, race, out=race).argmax(-1)
    # entr(p) = -p log p with 0 at p = 0, so codebook entries a backbone pins to -inf do not turn into NaN.
    entropy = torch.special.entr(probs).sum(-1)
    if temperature != 1.0:
        logp = torch.log_softmax(guided, dim=-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    else:
        logp = probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1).log()
    return Draw(codes, logp, entropy)


class GuidedForward:
    """The guided logits of one chunk of prompts: one network forward per step over [cond; uncond] rows."""

    def __init__(self, backbone: Backbone, prompts: Sequence[str], cfg_scale: float, device: torch.device):
        self.backbone = backbone
        self.g = float(cfg_scale)
        self.b = len(prompts)
        self.device = device
        batch = backbone.encode_prompts(prompts)
        if self.g > 0:
            batch = PromptBatch.cat([batch, backbone.encode_uncond(self.b)], backbone.pad_id)
        self.prompt = PromptBatch(batch.input_ids.to(device), batch.attention_mask.to(device))
        self.branches = 2 if self.g > 0 else 1
        self.model_seconds = 0.0

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        x = torch.cat([state, state]) if self.g > 0 else state
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.backbone.logits(self.prompt, x)
        _sync(self.device)
        self.model_seconds += time.perf_counter() - t0
        out = out.float()
        if self.g == 0:
            return out
        cond, uncond = out[: self.b], out[self.b :]
        # (1+g)*cond - g*uncond, written as cond + g*(cond - uncond) to reuse one buffer.
        return torch.sub(cond, uncond).mul_(self.g).add_(cond)


def model_device(backbone: Backbone) -> torch.device:
    p = next(backbone.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run_sampler(
    backbone: Backbone,
    prompts: Sequence[str],
    cfg: SamplerConfig,
    generator: torch.Generator,
    rule: CommitRule,
    *,
    steps_to_run: int | None = None,
    progress: bool = False,
    desc: str = "sampling",
) -> SampleResult:
    """Run ``rule`` over cfg.steps steps for every prompt, cfg.batch_size prompts at a time.

    ``steps_to_run`` lets a sampler stop early when its schedule has nothing left to commit (MaskGIT with T > N);
    those steps would be forwards with no effect.
    """
    start = time.perf_counter()
    prompts = list(prompts)
    steps = cfg.steps if steps_to_run is None else steps_to_run
    device = model_device(backbone)
    n = backbone.layout.num_tokens
    out_codes, out_step, out_hc, out_h0 = [], [], [], []
    model_seconds = 0.0
    was_training = backbone.training
    backbone.eval()
    bar = tqdm(total=steps * -(-len(prompts) // cfg.batch_size), desc=desc, disable=not progress, leave=False)
    try:
        with torch.no_grad():
            for lo in range(0, len(prompts), cfg.batch_size):
                chunk = prompts[lo : lo + cfg.batch_size]
                forward = GuidedForward(backbone, chunk, cfg.cfg_scale, device)
                state = backbone.fully_masked(len(chunk), device)
                commit_step = torch.zeros_like(state)
                entropy_commit = torch.zeros(state.shape, dtype=torch.float32, device=device)
                entropy0 = entropy_commit
                for s in range(steps):
                    masked = state == MASK_CODE
                    draw = draw_codes(forward(state), cfg.temperature, generator)
                    if s == 0:
                        entropy0 = draw.entropy
                    commit = rule(s, draw, masked, generator)
                    state = torch.where(commit, draw.codes, state)
                    commit_step.masked_fill_(commit, s + 1)
                    entropy_commit = torch.where(commit, draw.entropy, entropy_commit)
                    bar.update(1)
                model_seconds += forward.model_seconds
                out_codes.append(state.cpu())
                out_step.append(commit_step.cpu())
                out_hc.append(entropy_commit.cpu())
                out_h0.append(entropy0.cpu())
    finally:
        bar.close()
        backbone.train(was_training)
    if not prompts:
        empty_l, empty_f = torch.zeros((0, n), dtype=torch.long), torch.zeros((0, n))
        return SampleResult(
            empty_l, empty_l.clone(), empty_f, empty_f.clone(), 0, 0.0, time.perf_counter() - start
        )
    codes = torch.cat(out_codes)
    if bool(
        (codes == MASK_CODE).any()
    ):  # a rule bug, not a user error: fail loudly rather than decode garbage
        raise RuntimeError("sampler finished with masked positions left")
    return SampleResult(
        codes=codes,
        commit_step=torch.cat(out_step),
        entropy_commit=torch.cat(out_hc),
        entropy0=torch.cat(out_h0),
        forward_passes=steps * (2 if cfg.cfg_scale > 0 else 1),
        model_seconds=model_seconds,
        total_seconds=time.perf_counter() - start,
    )
