"""Tiny random MMaDA and Lumina-DiMOO checkpoint directories, written the way the real ones are laid out.

No weights exist on these machines, so the tests save small random models of the same classes (a LLaDA network
with 2 layers of width 64, a MAGVIT-v2 with 32 channels and 64 codes, a diffusers VQModel with 64 codes) into
directories with the published file layout — ``config.json`` with LLaDA's field names, sharded safetensors with
``model.safetensors.index.json`` and the checkpoint key names, ``tokenizer.json``, and the image tokenizer in
``magvitv2/`` or ``vqvae/`` — and load them through the real loading path.

The text tokenizers are word-level fast tokenizers with the real vocabulary sizes (126349 for MMaDA, 126356 for
DiMOO) and the real special ids (BOS 126080, EOS 126081, <uncondition> 126351, ...), so template tests check the
published ids; most of the vocabulary is filler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from htgrpo.backbones.dimoo import IMAGE_OFFSET as DIMOO_OFFSET
from htgrpo.backbones.dimoo import UNCONDITION
from htgrpo.backbones.llada import LLaDAConfig, LLaDAModelLM
from htgrpo.backbones.mmada import IMAGE_OFFSET as MMADA_OFFSET
from htgrpo.backbones.tiny import world_words
from htgrpo.backbones.weights_io import save_sharded
from htgrpo.tokenizers.magvit2 import Magvit2Config, MAGVITv2

BOS, EOS, MDM_MASK = 126080, 126081, 126336
CODES = 64
IMAGE_PX = 64  # 4 x 4 grid at 16x downsampling
GRID = IMAGE_PX // 16
TINY_MAGVIT = Magvit2Config(
    ch=32,
    encoder_ch_mult=(1, 1, 1, 1, 1),
    encoder_res_blocks=(1, 1, 1, 1, 1),
    decoder_ch_mult=(1, 1, 1, 1, 1),
    decoder_res_blocks=(1, 1, 1, 1, 1),
    z_channels=6,
)
EXTRA_WORDS = [
    "generate",
    "image",
    "according",
    "to",
    "the",
    "text",
    "prompt",
    ".",
    "<",
    ">",
    "/",
    "dog",
    "cat",
]
DIMOO_NAMED = {
    "<system>": 126340,
    "</system>": 126341,
    "<user>": 126342,
    "</user>": 126343,
    "<boi>": 126349,
    "<eoi>": 126350,
    "<uncondition>": UNCONDITION,
    "<boa>": 126354,
    "<eoa>": 126355,
}


def save_text_tokenizer(path: Path, size: int, named: dict[str, int] | None = None) -> None:
    """A word-level fast tokenizer of ``size`` ids: words first, the named specials at their ids, filler."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    named = {"<|startoftext|>": BOS, "<|endoftext|>": EOS, "<|mdm_mask|>": MDM_MASK, **(named or {})}
    vocab = {"[UNK]": 0}
    for w in dict.fromkeys(world_words() + EXTRA_WORDS):
        vocab[w] = len(vocab)
    taken = set(named.values())
    by_id = {i: w for w, i in vocab.items()}
    for tok, i in named.items():
        by_id[i] = tok
    vocab = {w: i for i, w in by_id.items()}
    for i in range(size):
        if i not in by_id and i not in taken:
            vocab[f"<|reserved_token_{i}|>"] = i
    assert len(vocab) == size and max(vocab.values()) == size - 1
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in named])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]"
    )
    fast.save_pretrained(path)


def _network(vocab: int, seed: int) -> LLaDAModelLM:
    torch.manual_seed(seed)
    net = LLaDAModelLM(LLaDAConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128))
    with torch.no_grad():  # a sharper head than random init, so samples and ratios vary
        net.model.transformer["ff_out"].weight.mul_(20.0)
    return net


def _write_network(path: Path, net: LLaDAModelLM, extra: dict, shards: int) -> None:
    cfg = {**net.cfg.to_checkpoint_config(), **extra}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    state = net.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    save_sharded(state, path, max_shard_bytes=total // shards + 1 if shards > 1 else total + 1)


def mmada_dir(path: Path, seed: int = 0, shards: int = 2) -> Path:
    """A tiny MMaDA checkpoint: network (vocab 126349 + 64 codes, padded), tokenizer, magvitv2/."""
    path.mkdir(parents=True, exist_ok=True)
    save_text_tokenizer(path, MMADA_OFFSET)
    net = _network(MMADA_OFFSET + CODES + 51, seed)  # padded beyond the codes, as MMaDA's 134656
    extra = {"architectures": ["MMadaModelLM"], "model_type": "mmada", "mask_token_id": MDM_MASK}
    _write_network(path, net, extra, shards)
    vq = path / "magvitv2"
    vq.mkdir()
    torch.manual_seed(seed + 1)
    model = MAGVITv2(TINY_MAGVIT)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(vq / "model.safetensors"))
    (vq / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", **TINY_MAGVIT.to_dict()}))
    return path


def tiny_vqmodel(seed: int = 0):
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=(16, 16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=8,
        num_vq_embeddings=CODES,
        norm_num_groups=8,
        sample_size=IMAGE_PX,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
        force_upcast=True,
    ).eval()


def dimoo_dir(path: Path, seed: int = 0, shards: int = 2) -> Path:
    """A tiny Lumina-DiMOO checkpoint: network (vocab exactly 126356 + 64 codes), tokenizer, vqvae/."""
    path.mkdir(parents=True, exist_ok=True)
    save_text_tokenizer(path, DIMOO_OFFSET, DIMOO_NAMED)
    net = _network(DIMOO_OFFSET + CODES, seed)
    _write_network(
        path, net, {"architectures": ["LLaDAForMultiModalGeneration"], "model_type": "llada"}, shards
    )
    tiny_vqmodel(seed + 1).save_pretrained(path / "vqvae", safe_serialization=True)
    return path
