"""MMaDA and Lumina-DiMOO behind the Backbone interface, on tiny random checkpoints of the real classes and layout.

Templates with the published special ids, padding, the CFG branch, DiMOO's newlines, the image tokenizers, the
samplers and one RL step of every method on each backbone, LoRA (which modules, the reference), checkpoints, bf16,
gradient checkpointing and the 8B parameter counts.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from htgrpo.backbones.base import MASK_CODE
from htgrpo.backbones.dimoo import BOA, BOI, EOA, EOI, NEWLINE, UNCONDITION
from htgrpo.backbones.llada import DIMOO_8B, MMADA_8B, LLaDAConfig, LLaDAModelLM
from htgrpo.backbones.mmada import EOI as MMADA_EOI
from htgrpo.backbones.mmada import IPAD, SOI, T2I
from htgrpo.backbones.pretrained import load_pretrained
from htgrpo.checkpoint import load_checkpoint
from htgrpo.config import (
    LLADA_LORA_TARGETS,
    RL_METHODS,
    BackboneConfig,
    Config,
    LoraConfig,
    RLConfig,
    SamplerConfig,
    load_config,
)
from htgrpo.errors import ConfigError
from htgrpo.rl import rewards as rw
from htgrpo.rl.rewards import register_reward
from htgrpo.rl.trainer import GRPOTrainer, RLError
from htgrpo.sampling import sample
from htgrpo.sampling.core import GuidedForward
from htgrpo.tokenizers.magvit2 import LookupFreeQuantizer, MAGVITv2, magvit2_parameters
from real_tiny import BOS, CODES, EOS, GRID, IMAGE_PX, dimoo_dir, mmada_dir

N = GRID * GRID
PROMPTS = [
    {
        "prompt": "a photo of a red circle",
        "tag": "single_object",
        "include": [{"class": "circle", "count": 1}],
    },
    {"prompt": "a photo of two squares", "tag": "counting", "include": [{"class": "square", "count": 2}]},
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return {"mmada": mmada_dir(root / "mmada"), "dimoo": dimoo_dir(root / "dimoo")}


def bcfg(dirs, kind: str, **kw) -> BackboneConfig:
    return BackboneConfig(
        kind=kind, weights=str(dirs[kind]), image_size=(IMAGE_PX, IMAGE_PX), max_text_len=8, **kw
    )


@pytest.fixture(scope="module")
def loaded(dirs):
    return {k: load_pretrained(bcfg(dirs, k), device="cpu").eval() for k in ("mmada", "dimoo")}


@pytest.fixture(params=["mmada", "dimoo"])
def kind(request):
    return request.param


# --- templates --------------------------------------------------------------------------------------------


def test_mmada_template_ids_and_left_padding(loaded):
    bb = loaded["mmada"]
    assert bb.layout.image_offset == 126349 and bb.layout.mask_id == 126336 and bb.layout.newline_id is None
    batch = bb.encode_prompts(["a photo of a red circle", "a cat"])
    ids, att = batch.input_ids, batch.attention_mask
    assert ids[0].tolist()[:2] == [T2I, BOS] and ids[0, -1] == EOS
    assert ids[1, :4].tolist() == [IPAD] * 4 and att[1, :4].tolist() == [0] * 4
    assert ids[1, 4:6].tolist() == [T2I, BOS] and ids[1, -1] == EOS and att[1, 4:].all()
    assert batch.word_mask[0].sum() == 6 and batch.word_mask[1].sum() == 2  # the words only
    assert bb.prompt_word_mask(batch).tolist() == batch.word_mask.tolist()
    uncond = bb.encode_uncond(3)
    assert uncond.input_ids.tolist() == [[T2I, BOS, EOS]] * 3 and not uncond.word_mask.any()


def test_mmada_truncates_long_prompts_keeping_eos(loaded):
    bb = loaded["mmada"]  # max_text_len 8: at most 9 tokens, as MMaDA's max_text_len + 1
    row = bb.encode_prompts(["a photo of a red circle and a blue square and a green ring"]).input_ids[0]
    assert len(row) == 9 and row[0] == T2I and row[1] == BOS and row[-1] == EOS


def test_mmada_sequence_wraps_codes_in_soi_eoi(loaded):
    bb = loaded["mmada"]
    prompt = bb.encode_prompts(["a photo of a red circle"])
    state = bb.fully_masked(1)
    state[0, :3] = torch.tensor([0, 5, CODES - 1])
    ids, att, pos = bb.build_sequence(prompt, state)
    L = prompt.input_ids.shape[1]
    assert ids[0, L] == SOI and ids[0, -1] == MMADA_EOI and ids.shape[1] == L + N + 2
    assert pos.tolist() == list(range(L + 1, L + 1 + N))
    assert ids[0, pos[:3]].tolist() == [126349, 126354, 126349 + CODES - 1]
    assert (ids[0, pos[3:]] == 126336).all() and att.all()


def test_dimoo_template_and_unconditional_branch(loaded):
    bb = loaded["dimoo"]
    assert bb.layout.image_offset == 126356 and bb.layout.newline_id == NEWLINE
    cond = bb.encode_prompts(["a photo of a red circle"])
    text = bb.text.decode(cond.input_ids[0])
    assert "<system> generate an image according to the text prompt . </system> <user>" in text
    assert cond.input_ids[0, 0] == BOS and cond.word_mask[0].sum() == 6  # system text is not the prompt's
    long = bb.encode_prompts(["a photo of a red circle and a blue square and a green ring"])
    assert long.word_mask.sum() == 8 and long.input_ids[0, -1] == cond.input_ids[0, -1]  # cut to max_text_len
    uncond = bb.encode_uncond(2)
    assert UNCONDITION in uncond.input_ids[0].tolist() and not uncond.word_mask.any()
    # the CFG branch: the unconditional text followed by the same image part
    state = bb.fully_masked(1)
    state[0, 0] = 7
    a, _, pa = bb.build_sequence(cond, state)
    b, _, pb = bb.build_sequence(uncond.index(slice(0, 1)), state)
    span = bb.layout.grid_span + 4
    assert torch.equal(a[0, -span:], b[0, -span:])
    assert a[0, -span:][:2].tolist() == [BOA, BOI] and a[0, -2:].tolist() == [EOI, EOA]
    assert torch.equal(a[0, pa], b[0, pb])


def test_dimoo_newline_after_every_row_never_masked_never_scored(loaded):
    bb = loaded["dimoo"]
    prompt = bb.encode_prompts(["a photo of a red circle", "a cat"])
    ids, att, pos = bb.build_sequence(prompt, bb.fully_masked(2))
    grid_start = prompt.input_ids.shape[1] + 2
    nl = grid_start + bb.layout.fixed_offsets()
    assert len(nl) == GRID and (nl - grid_start).tolist() == [GRID + r * (GRID + 1) for r in range(GRID)]
    assert (ids[:, nl] == NEWLINE).all()  # present after every row, even in a fully masked state
    assert not set(nl.tolist()) & set(pos.tolist())  # never among the scored (code) positions
    assert (ids[:, pos] == bb.layout.mask_id).all() and len(pos) == N
    assert bb.logits(prompt, bb.fully_masked(2)).shape == (2, N, CODES)
    # codes between the newlines sit in raster order
    state = torch.arange(N).remainder(CODES)[None].repeat(2, 1)
    ids, _, pos = bb.build_sequence(prompt, state)
    assert (ids[0, pos] - bb.layout.image_offset).tolist() == state[0].tolist()


def test_cfg_forward_batches_cond_and_uncond_rows(loaded, kind):
    bb = loaded[kind]
    fwd = GuidedForward(bb, ["a photo of a red circle", "a cat"], cfg_scale=2.0, device=torch.device("cpu"))
    rows = fwd.prompt.input_ids
    cond, uncond = bb.encode_prompts(["a photo of a red circle", "a cat"]), bb.encode_uncond(2)
    w = rows.shape[1]
    assert torch.equal(rows[:2, w - cond.input_ids.shape[1] :], cond.input_ids)
    assert torch.equal(rows[2:, w - uncond.input_ids.shape[1] :], uncond.input_ids)
    assert fwd(bb.fully_masked(2)).shape == (2, N, CODES)


def test_padding_does_not_change_the_logits(loaded, kind):
    bb = loaded[kind]
    state = torch.randint(CODES, (1, N), generator=torch.Generator().manual_seed(0))
    state[0, ::3] = MASK_CODE
    with torch.no_grad():
        alone = bb.logits(bb.encode_prompts(["a cat"]), state)
        batched = bb.logits(
            bb.encode_prompts(["a cat", "a photo of a red circle and a blue square"]), state.repeat(2, 1)
        )
    torch.testing.assert_close(alone[0], batched[0], atol=2e-5, rtol=1e-4)


# --- image tokenizers ---------------------------------------------------------------------------------------


def test_image_tokenizers_round_trip_shapes(loaded, kind):
    tok = loaded[kind].image_tokenizer
    images = np.random.default_rng(0).integers(0, 256, (3, IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
    codes = tok.encode(images)
    assert (
        codes.shape == (3, N)
        and codes.dtype == torch.long
        and 0 <= int(codes.min()) <= int(codes.max()) < CODES
    )
    out = tok.decode(codes, (GRID, GRID))
    assert out.shape == (3, IMAGE_PX, IMAGE_PX, 3) and out.dtype == np.uint8
    assert tok.codebook_size == CODES and tok.downsample == 16


def test_lookup_free_quantizer_is_msb_first():
    q = LookupFreeQuantizer(3)
    z = torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)  # bits 1 0 1 -> 5
    assert q.codes(z).item() == 5 and q.embedding[5].tolist() == [1.0, -1.0, 1.0]
    assert torch.equal(q.lookup(torch.tensor([[5]]), (1, 1)), z)


def test_magvit2_published_layout_and_size():
    with torch.device("meta"):
        keys = MAGVITv2().state_dict()
    assert len(keys) == 382
    for key in (
        "encoder.conv_in.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.mid.attn_1.proj_out.weight",
        "encoder.quant_conv.weight",
        "quantize.embedding",
        "decoder.post_quant_conv.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.4.block.2.conv2.weight",
    ):
        assert key in keys, key
    assert tuple(keys["quantize.embedding"].shape) == (8192, 13)
    assert 95.0e6 < magvit2_parameters() < 96.0e6


# --- network: key layout, config, size ----------------------------------------------------------------------


def test_llada_key_layout_matches_the_published_checkpoints(dirs, loaded):
    index = json.loads((dirs["mmada"] / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(index) == 21  # 2 layers: wte, 2 x 9 block tensors, ln_f, the untied head
    expected = {
        "model.transformer.wte.weight",
        "model.transformer.ln_f.weight",
        "model.transformer.ff_out.weight",
    }
    for i in range(2):
        for name in (
            "attn_norm",
            "ff_norm",
            "q_proj",
            "k_proj",
            "v_proj",
            "attn_out",
            "ff_proj",
            "up_proj",
            "ff_out",
        ):
            expected.add(f"model.transformer.blocks.{i}.{name}.weight")
    assert set(index) == expected == set(loaded["mmada"].net.state_dict())
    # a saved state dict loads strictly into a fresh network
    fresh = LLaDAModelLM(loaded["mmada"].llada_config)
    result = fresh.load_state_dict(loaded["mmada"].net.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize(
    "key, value",
    [("weight_tying", True), ("include_bias", True), ("block_type", "sequential"), ("rope", False)],
)
def test_checkpoint_config_rejects_other_architectures(key, value):
    data = {**MMADA_8B.to_checkpoint_config(), key: value}
    with pytest.raises(ConfigError, match=f"ckpt/config.json: {key} is {value!r}"):
        LLaDAConfig.from_checkpoint_config(data, "ckpt/config.json")
    with pytest.raises(ConfigError, match="lacks d_model"):
        LLaDAConfig.from_checkpoint_config({"n_layers": 2}, "x.json")


def test_8b_parameter_counts_from_the_config_without_allocating():
    tracemalloc.start()
    try:
        mmada, dimoo = MMADA_8B.num_parameters(), DIMOO_8B.num_parameters()
        round_trip = LLaDAConfig.from_checkpoint_config(MMADA_8B.to_checkpoint_config())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mmada == 8_082_690_048 and dimoo == 8_081_805_312
    assert round_trip == MMADA_8B and peak < 1 << 20
    with torch.device("meta"):  # the formula is the module's real count
        assert sum(p.numel() for p in LLaDAModelLM(MMADA_8B, device="meta").parameters()) == mmada


def test_yaml_configs_resolve(tmp_path):
    root = Path(__file__).resolve().parents[1] / "configs"
    m, d = load_config(root / "mmada.yaml"), load_config(root / "dimoo.yaml")
    assert (
        m.backbone.kind == "mmada" and m.sampler.cfg_scale == 3.5 and m.sampler.noise_schedule == "annealed"
    )
    assert d.backbone.kind == "dimoo" and d.sampler.steps == 64 and d.sampler.noise_schedule == "constant"
    assert m.backbone.lora.enabled and set(m.backbone.lora.target_modules) == set(LLADA_LORA_TARGETS)
    with pytest.raises(ConfigError, match="'lm_head' is not a LLaDA block module"):
        load_config(root / "dimoo.yaml", ["backbone.lora.target_modules=[q_proj,lm_head]"])
    with pytest.raises(ConfigError, match="image_size must be positive multiples of 16"):
        load_config(root / "dimoo.yaml", ["backbone.image_size=[500,512]"])


# --- LoRA -----------------------------------------------------------------------------------------------------


def test_lora_touches_exactly_the_named_block_modules(dirs):
    bb = load_pretrained(bcfg(dirs, "mmada", lora=LoraConfig(enabled=True, r=4, alpha=8)), device="cpu")
    expected = [f"model.transformer.blocks.{i}.{m}" for i in range(2) for m in LLADA_LORA_TARGETS]
    assert bb.lora_modules() == sorted(expected)  # the LM head model.transformer.ff_out is not adapted
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(expected)
    few = load_pretrained(
        bcfg(dirs, "dimoo", lora=LoraConfig(enabled=True, r=2, target_modules=("q_proj", "v_proj"))),
        device="cpu",
    )
    assert few.lora_modules() == sorted(
        f"model.transformer.blocks.{i}.{m}" for i in range(2) for m in ("q_proj", "v_proj")
    )


def test_lora_reference_is_the_base_model(dirs, loaded, kind):
    base = loaded[kind]
    bb = load_pretrained(bcfg(dirs, kind, lora=LoraConfig(enabled=True, r=4, alpha=8)), device="cpu").eval()
    with torch.no_grad():
        for name, p in bb.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    prompt = base.encode_prompts(["a photo of a red circle"])
    state = base.fully_masked(1)
    with torch.no_grad():
        ref = base.logits(prompt, state)
        adapted = bb.logits(prompt, state)
        with bb.adapter_disabled():
            disabled = bb.logits(prompt, state)
    torch.testing.assert_close(disabled, ref, atol=0, rtol=0)
    assert (adapted - ref).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="no LoRA adapter"), base.adapter_disabled():
        pass


# --- samplers and RL ------------------------------------------------------------------------------------------


@pytest.fixture
def varied_reward(monkeypatch):
    monkeypatch.setattr(rw, "_REGISTRY", dict(rw._REGISTRY))
    register_reward("mean_pixel", lambda images, p, m: images.reshape(len(images), -1).mean(1) / 255.0)
    return {"mean_pixel": 1.0}


@pytest.mark.parametrize("sampler", ["maskgit", "emerge"])
def test_samplers_run_on_the_real_backbones(loaded, kind, sampler):
    bb = loaded[kind]
    cfg = SamplerConfig(kind=sampler, steps=4, cfg_scale=2.0)
    result = sample(bb, ["a photo of a red circle", "a cat", "a cat"], cfg, torch.Generator().manual_seed(0))
    assert result.codes.shape == (3, N) and not (result.codes == MASK_CODE).any()
    assert int(result.codes.max()) < CODES and result.commit_step.min() >= 1
    assert result.decode(bb).shape == (3, IMAGE_PX, IMAGE_PX, 3)


def rl_config(dirs, kind: str, method: str, lora: bool = True, **rl) -> Config:
    lora_cfg = LoraConfig(enabled=True, r=4, alpha=8) if lora else LoraConfig()
    return Config(
        backbone=bcfg(dirs, kind, lora=lora_cfg),
        sampler=SamplerConfig(steps=4, cfg_scale=1.0),
        rl=RLConfig(method=method, steps=1, prompts_per_step=2, group_size=3, lr=1e-2, micro_batch=4, **rl),
    )


@pytest.mark.parametrize("method", RL_METHODS)
def test_one_rl_step_of_every_method_with_lora(dirs, loaded, kind, method, varied_reward):
    cfg = rl_config(dirs, kind, method, rewards=varied_reward)
    policy = loaded[kind]
    from htgrpo.backbones.pretrained import PretrainedLLaDABackbone

    lora_policy = copy.deepcopy(policy)
    PretrainedLLaDABackbone.add_lora(lora_policy, cfg.backbone.lora)
    base_before = {k: v.clone() for k, v in lora_policy.llada.state_dict().items() if "lora_" not in k}
    trainer = GRPOTrainer(cfg, lora_policy, prompts=PROMPTS, progress=False)
    assert trainer.reference is None  # the reference is the adapter switched off
    rec = trainer.train_step()
    first = rec["iterations"][0]
    assert first["ratio_min"] == 1.0 == first["ratio_max"] and first["kl"] == 0.0
    assert rec["inner_iterations"] == len(rec["iterations"]) > 0
    after = lora_policy.llada.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in base_before.items())  # only the adapters train
    assert any(after[k].abs().sum() > 0 for k in after if "lora_B" in k)


def test_full_fine_tuning_step_and_checkpoint_round_trip(dirs, loaded, tmp_path, varied_reward):
    cfg = rl_config(dirs, "mmada", "maskgrpo", lora=False, rewards=varied_reward, inner_iterations=2)
    policy = copy.deepcopy(loaded["mmada"])
    assert policy.text is loaded["mmada"].text  # tokenizers are shared by copies
    # the 126k-row embedding and head stay frozen here only to keep the test fast (AdamW over 16 M entries)
    policy.net.model.transformer["wte"].requires_grad_(False)
    policy.net.model.transformer["ff_out"].requires_grad_(False)
    trainer = GRPOTrainer(cfg, policy, tmp_path / "run", prompts=PROMPTS, progress=False)
    assert trainer.reference is not None and trainer.reference is not policy
    before = {k: v.clone() for k, v in policy.net.state_dict().items()}
    trainer.train()
    after = policy.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    ckpt = GRPOTrainer.checkpoint_dirs(tmp_path / "run")[-1]
    saved = load_file(str(ckpt / "model.safetensors"))
    assert set(saved) == set(before)  # the published key names
    assert all(torch.equal(saved[k], after[k]) for k in saved)
    assert not (ckpt / "image_tokenizer.safetensors").exists() and (ckpt / "reference.safetensors").exists()
    back, saved_cfg = load_checkpoint(ckpt, cfg)
    assert saved_cfg.backbone == cfg.backbone and not back.has_adapter


def test_lora_checkpoint_holds_only_the_adapter(dirs, tmp_path, varied_reward):
    cfg = rl_config(dirs, "dimoo", "d1", rewards=varied_reward)
    policy = load_pretrained(cfg.backbone, device="cpu")
    trainer = GRPOTrainer(cfg, policy, tmp_path / "run", prompts=PROMPTS, progress=False)
    trainer.train()
    ckpt = GRPOTrainer.checkpoint_dirs(tmp_path / "run")[-1]
    saved = load_file(str(ckpt / "model.safetensors"))
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert not (ckpt / "reference.safetensors").exists()
    meta = json.loads((ckpt / "config.json").read_text())["backbone"]
    assert meta["kind"] == "dimoo" and meta["lora"]["r"] == 4 and meta["grid_hw"] == [GRID, GRID]
    back, _ = load_checkpoint(ckpt, cfg)
    prompt = policy.encode_prompts(["a cat"])
    with torch.no_grad():
        torch.testing.assert_close(
            back.logits(prompt, back.fully_masked(1)), policy.eval().logits(prompt, policy.fully_masked(1))
        )
    resumed = GRPOTrainer.resume(cfg, tmp_path / "run", prompts=PROMPTS, progress=False)
    assert resumed.reference is None and resumed.step == 1
    # a checkpoint of another LoRA rank does not load, and says why
    other = cfg.model_copy(
        update={"backbone": cfg.backbone.model_copy(update={"lora": LoraConfig(enabled=True, r=8)})}
    )
    with pytest.raises(Exception, match="backbone.lora"):
        load_checkpoint(ckpt, other)


def test_trainer_refuses_a_lora_config_without_an_adapter(dirs, loaded, varied_reward):
    cfg = rl_config(dirs, "mmada", "maskgrpo", rewards=varied_reward)
    with pytest.raises(RLError, match="backbone.lora.enabled is True but the policy has no LoRA adapter"):
        GRPOTrainer(cfg, loaded["mmada"], prompts=PROMPTS, progress=False)


# --- precision and memory ---------------------------------------------------------------------------------


def test_bfloat16_weights_and_float32_adapters(dirs):
    bb = load_pretrained(
        bcfg(dirs, "dimoo", dtype="bfloat16", lora=LoraConfig(enabled=True, r=4)), device="cpu"
    ).eval()
    dtypes = {n: p.dtype for n, p in bb.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    with torch.no_grad():
        out = bb.logits(bb.encode_prompts(["a cat"]), bb.fully_masked(1))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_gradient_checkpointing_gives_the_same_gradients(loaded):
    def grads(flag: bool) -> dict[str, torch.Tensor]:
        bb = copy.deepcopy(loaded["mmada"]).train()
        bb.net.gradient_checkpointing = flag
        prompt = bb.encode_prompts(["a photo of a red circle"])
        bb.logits(prompt, bb.fully_masked(1)).logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)


def test_tokenizers_are_not_part_of_the_trainable_module(loaded):
    bb = loaded["mmada"]
    assert not isinstance(bb.image_tokenizer, nn.Module)
    assert not any(k.startswith(("image_tokenizer", "text")) for k in bb.state_dict())


def test_cli_trains_a_real_backbone_from_its_pretrained_weights(dirs, tmp_path, varied_reward, capsys):
    import yaml

    from htgrpo.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    config = {
        "backbone": {
            "kind": "dimoo",
            "weights": str(dirs["dimoo"]),
            "image_size": [IMAGE_PX, IMAGE_PX],
            "max_text_len": 8,
            "lora": {"enabled": True, "r": 4, "alpha": 8},
        },
        "sampler": {"steps": 4, "cfg_scale": 1.0},
        "rl": {
            "method": "coupled",
            "steps": 1,
            "prompts_per_step": 2,
            "group_size": 2,
            "inner_iterations": 2,
            "prompts": str(prompts),
            "rewards": {"mean_pixel": 1.0},
        },
    }
    path = tmp_path / "dimoo-tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert (
        main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    )  # no --init: the weights
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["checkpoint"].endswith("step-000001")
    saved = load_file(str(Path(summary["checkpoint"]) / "model.safetensors"))
    assert all("lora_" in k for k in saved)
    # without weights the error says what to set and how to get them
    config["backbone"]["weights"] = None
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "backbone.weights is not set" in err and "htgrpo weights download --model dimoo" in err
