"""TinyBackbone templates and code space, the LLaDA network's layout, and parameter counts."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from htgrpo.backbones.base import MASK_CODE, PromptBatch
from htgrpo.backbones.llada import LLaDAConfig, LLaDAModelLM
from htgrpo.backbones.tiny import SPECIAL_TOKENS, TinyBackbone, world_words
from htgrpo.config import BackboneConfig, load_config
from htgrpo.errors import PromptError
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer

ROOT = Path(__file__).resolve().parents[1]
K, GRID = 64, 6
N = GRID * GRID
SMALL = BackboneConfig(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64)


def make_backbone(seed: int = 0, cfg: BackboneConfig = SMALL) -> TinyBackbone:
    torch.manual_seed(seed)
    tok = PatchKMeansTokenizer(torch.rand(K, 192, generator=torch.Generator().manual_seed(seed)))
    return TinyBackbone(cfg, tok, GRID).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster when the CPU is shared with a training job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bb(one_thread) -> TinyBackbone:
    return make_backbone()


def random_codes(b: int, seed: int = 0, masked: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(K, (b, N), generator=g)
    return torch.where(torch.rand(b, N, generator=g) < masked, torch.full_like(codes, MASK_CODE), codes)


# --- templates ------------------------------------------------------------------------------------------


def test_conditional_template_is_left_padded(bb):
    t = bb.text
    long, short = "a photo of a red circle and a blue square", "a photo of a ring"
    batch = bb.encode_prompts([long, short])
    ids, att = batch.input_ids, batch.attention_mask
    assert ids.dtype == torch.long and ids.shape == att.shape
    words_long = [t.ids[w] for w in long.split()]
    words_short = [t.ids[w] for w in short.split()]
    head = [t.special("<|t2i|>"), t.special("<bos>")]
    eos = [t.special("<eos>")]
    assert ids.shape[1] == len(words_long) + 3
    assert ids[0].tolist() == head + words_long + eos
    pad = ids.shape[1] - (len(words_short) + 3)
    assert pad == len(words_long) - len(words_short) > 0
    assert ids[1].tolist() == [bb.pad_id] * pad + head + words_short + eos
    assert att[0].tolist() == [1] * ids.shape[1]
    assert att[1].tolist() == [0] * pad + [1] * (ids.shape[1] - pad)
    assert bb.pad_id == t.special("<pad>") == 0


def test_prompt_words_are_case_and_comma_insensitive(bb):
    a = bb.encode_prompts(["A photo of a red circle, and a ring"]).input_ids
    b = bb.encode_prompts(["a photo of a red circle and a ring"]).input_ids
    assert torch.equal(a, b)


def test_unconditional_template_has_no_words(bb):
    t = bb.text
    batch = bb.encode_uncond(3)
    assert batch.input_ids.tolist() == [[t.special("<|t2i|>"), t.special("<bos>"), t.special("<eos>")]] * 3
    assert batch.attention_mask.tolist() == [[1, 1, 1]] * 3


def test_build_sequence_wraps_image_in_soi_eoi(bb):
    prompt = bb.encode_prompts(["a photo of a ring"])
    state = random_codes(1)
    ids, att, pos = bb.build_sequence(prompt, state)
    L = prompt.input_ids.shape[1]
    assert ids.shape == (1, L + N + 2) and att.shape == ids.shape
    assert ids[0, L].item() == bb.text.special("<|soi|>")
    assert ids[0, -1].item() == bb.text.special("<|eoi|>")
    assert pos.tolist() == list(range(L + 1, L + 1 + N))
    assert torch.equal(ids[:, pos], bb.codes_to_ids(state))


def test_unknown_word_is_a_prompt_error_naming_it(bb):
    with pytest.raises(PromptError, match="zebra"):
        bb.encode_prompts(["a photo of a red circle", "a photo of a zebra"])
    # special tokens cannot be smuggled in as words
    with pytest.raises(PromptError, match="<eos>"):
        bb.encode_prompts(["a ring <eos>"])


def test_over_long_prompt_is_a_prompt_error(bb):
    words = [
        "a",
        "photo",
        "of",
        "a",
        "red",
        "circle",
        "and",
        "a",
        "blue",
        "square",
        "and",
        "a",
        "green",
        "ring",
        "and",
        "a",
        "cross",
    ]
    assert len(words) > SMALL.max_text_len
    with pytest.raises(PromptError) as info:
        bb.encode_prompts([" ".join(words)])
    assert f"{len(words)} words" in str(info.value)
    assert "max_text_len" in str(info.value)
    bb.encode_prompts([" ".join(words[: SMALL.max_text_len])])  # exactly at the limit is fine


def test_vocabulary_layout(bb):
    assert bb.text.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert len(bb.text) == len(SPECIAL_TOKENS) + len(world_words())
    assert len(set(bb.text.tokens)) == len(bb.text)  # no duplicated word
    assert bb.layout.image_offset == len(bb.text)
    assert bb.layout.code_slice() == (len(bb.text), len(bb.text) + K)
    assert bb.llada_config.vocab_size == len(bb.text) + K
    assert bb.layout.mask_id == bb.text.special("<|mask|>")
    assert bb.layout.num_tokens == N


# --- code space -------------------------------------------------------------------------------------------


def test_codes_to_ids(bb):
    state = torch.tensor([[MASK_CODE, 0, 5, K - 1], [3, MASK_CODE, MASK_CODE, 0]])
    ids = bb.codes_to_ids(state)
    off, mask = bb.layout.image_offset, bb.layout.mask_id
    assert ids.tolist() == [[mask, off, off + 5, off + K - 1], [off + 3, mask, mask, off]]
    assert bb.fully_masked(2).tolist() == [[MASK_CODE] * N] * 2


def test_logits_shape(bb):
    prompts = bb.encode_prompts(["a photo of a ring", "a photo of two squares", "a photo of a red circle"])
    with torch.no_grad():
        logits = bb.logits(prompts, random_codes(3))
    assert logits.shape == (3, N, K)
    assert torch.isfinite(logits).all()


def test_logits_reject_bad_shapes(bb):
    prompts = bb.encode_prompts(["a photo of a ring"])
    with pytest.raises(ValueError, match=f"\\[B, {N}\\]"):
        bb.logits(prompts, torch.zeros(1, N - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="2 prompts for 1"):
        bb.logits(prompts.repeat_interleave(2), torch.zeros(1, N, dtype=torch.long))


def test_padding_invariance(bb):
    short = "a photo of a ring"
    longer = "a photo of a red circle and a blue square"
    state = random_codes(2, seed=3)
    with torch.no_grad():
        alone = bb.logits(bb.encode_prompts([short]), state[:1])
        batched_prompts = bb.encode_prompts([short, longer])
        assert batched_prompts.attention_mask[0, 0] == 0  # the short prompt really is padded
        batched = bb.logits(batched_prompts, state)
        # PromptBatch.cat pads the same way
        cat = PromptBatch.cat([bb.encode_prompts([short]), bb.encode_prompts([longer])], bb.pad_id)
        assert torch.equal(cat.input_ids, batched_prompts.input_ids)
        # a different partner (and extra padding) does not change the answer either
        other = bb.logits(bb.encode_prompts([short, longer + " and a green cross"]), state)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other[0], alone[0], atol=1e-5, rtol=1e-5)


def test_padding_tokens_are_ignored(bb):
    """Changing what sits under the padding (attention mask 0) changes nothing."""
    batch = bb.encode_prompts(["a photo of a ring", "a photo of a red circle and a blue square"])
    junk = batch.input_ids.clone()
    junk[0, batch.attention_mask[0] == 0] = bb.text.ids["triangle"]
    state = random_codes(2, seed=4)
    with torch.no_grad():
        a = bb.logits(batch, state)
        b = bb.logits(PromptBatch(junk, batch.attention_mask), state)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_prompt_conditions_the_logits(bb):
    state = random_codes(2, seed=5)
    with torch.no_grad():
        a = bb.logits(bb.encode_prompts(["a photo of a ring"] * 2), state)
        b = bb.logits(bb.encode_prompts(["a photo of a cross"] * 2), state)
    assert (a - b).abs().max() > 1e-4


def test_bidirectional(bb):
    """A later image token influences the logits at an earlier position (no causal mask)."""
    prompts = bb.encode_prompts(["a photo of a ring"])
    state = bb.fully_masked(1)
    changed = state.clone()
    changed[0, N - 1] = 7
    with torch.no_grad():
        a = bb.logits(prompts, state)
        b = bb.logits(prompts, changed)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-5
    # and the last position sees the first one too
    first = state.clone()
    first[0, 0] = 7
    with torch.no_grad():
        c = bb.logits(prompts, first)
    assert (a[0, N - 1] - c[0, N - 1]).abs().max() > 1e-5


# --- LLaDA state dict ---------------------------------------------------------------------------------------


def test_llada_state_dict_keys(bb):
    keys = set(bb.state_dict())
    prefix = "net.model.transformer"
    expected = {f"{prefix}.wte.weight", f"{prefix}.ln_f.weight", f"{prefix}.ff_out.weight"}
    for i in range(SMALL.n_layers):
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
            expected.add(f"{prefix}.blocks.{i}.{name}.weight")
    assert expected <= keys
    # the only extras are the tiny backbone's 2-D image position embeddings
    assert keys - expected == {"row_emb.weight", "col_emb.weight"}
    sd = bb.state_dict()
    d, h = SMALL.d_model, SMALL.mlp_hidden_size
    assert sd[f"{prefix}.wte.weight"].shape == (bb.llada_config.vocab_size, d)
    assert sd[f"{prefix}.ff_out.weight"].shape == (bb.llada_config.vocab_size, d)
    assert sd[f"{prefix}.blocks.0.ff_proj.weight"].shape == (h, d)
    assert sd[f"{prefix}.blocks.0.up_proj.weight"].shape == (h, d)
    assert sd[f"{prefix}.blocks.0.ff_out.weight"].shape == (d, h)
    # the LM head is untied from the embedding
    assert sd[f"{prefix}.wte.weight"].data_ptr() != sd[f"{prefix}.ff_out.weight"].data_ptr()


def test_state_dict_round_trip_strict(bb, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(path))
    fresh = make_backbone(seed=1)
    prompts = bb.encode_prompts(["a photo of a ring", "a photo of two squares"])
    state = random_codes(2, seed=6)
    with torch.no_grad():
        before = fresh.logits(prompts, state)
        assert not torch.allclose(before, bb.logits(prompts, state))
        result = fresh.load_state_dict(load_file(str(path)), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        torch.testing.assert_close(fresh.logits(prompts, state), bb.logits(prompts, state), atol=0, rtol=0)


def test_llada_forward_full_vocab_matches_slice():
    cfg = LLaDAConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, mlp_hidden_size=32)
    torch.manual_seed(0)
    net = LLaDAModelLM(cfg).eval()
    ids = torch.randint(50, (2, 7))
    with torch.no_grad():
        full = net(ids)
        part = net.slice_logits(net.hidden_states(ids), 10, 30)
    assert full.shape == (2, 7, 50)
    torch.testing.assert_close(full[..., 10:30], part, atol=1e-6, rtol=1e-5)


# --- parameter counts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        LLaDAConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64),
        LLaDAConfig(vocab_size=77, d_model=48, n_layers=3, n_heads=4, mlp_hidden_size=40, n_kv_heads=2),
    ],
)
def test_num_parameters_matches_real_count(cfg):
    model = LLaDAModelLM(cfg)
    assert cfg.num_parameters() == sum(p.numel() for p in model.parameters())


def test_mmada_8b_parameter_count_without_allocating():
    cfg = LLaDAConfig(vocab_size=126464 + 8192, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288)
    tracemalloc.start()
    try:
        n = cfg.num_parameters()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 7.5e9 < n < 8.5e9
    assert peak < 1 << 20  # a formula, not a model: far under a megabyte


def test_tiny_yaml_backbone_size():
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    vocab = len(SPECIAL_TOKENS) + len(world_words()) + cfg.tokenizer.codebook_size
    b = cfg.backbone
    llada = LLaDAConfig(vocab, b.d_model, b.n_layers, b.n_heads, b.mlp_hidden_size)
    assert 2e6 < llada.num_parameters() < 10e6
    tok = PatchKMeansTokenizer(torch.zeros(cfg.tokenizer.codebook_size, 192))
    backbone = TinyBackbone(b, tok, cfg.world.grid)
    assert backbone.llada_config == llada
    total = backbone.num_parameters()
    # the network plus the row/column embeddings
    assert total == llada.num_parameters() + 2 * cfg.world.grid * b.d_model
    assert 2e6 < total < 10e6
