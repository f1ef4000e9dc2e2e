"""Tiny GGUF models written the way llama.cpp's ``convert_hf_to_gguf.py`` writes real ones.

Tokenizers (trained here in well under a second, no downloads):

* SentencePiece BPE models (the ``sentencepiece`` trainer) in two layouts: Llama's (``<unk> <s>
  </s>``, dummy space prefix, byte fallback) and Gemma's (``<pad> <eos> <bos> <unk>`` first,
  control turn markers, user-defined tokens for runs of spaces and newlines, an HTML tag and a
  tab, no space prefix). The vocabulary goes into the file as llama.cpp's
  ``_create_vocab_sentencepiece`` puts it: SentencePiece's pieces, scores and types, then the
  tokenizer's added tokens with score -1000, the special ones as CONTROL and the others as
  USER_DEFINED *with* ``▁`` *turned back into spaces* (what Gemma files hold: ``"  "`` at id 138).
* Byte-level BPE models (the ``tokenizers`` trainer) with the pre-tokenizer of the original
  Hugging Face tokenizer of each family (GPT-2, SmolLM, Qwen2, Llama 3) and llama.cpp's
  ``tokenizer.ggml.pre`` name for it, written as ``get_vocab_base`` + ``SpecialVocab`` do.

Models are random-weight transformers models from small configs, their tensors renamed with
gguf-py's own tensor-name map (the one transformers inverts when it loads a GGUF) and transformed
as llama.cpp does (Llama's q/k row permutation, Gemma's ``norm + 1``).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a little girl named Lily. She loved to play outside.",
    "I've been told he's there; we'll see if you're right, they'd said.",
    "def add(x, y):\n    return x + y\n\nprint(add(12, 345))\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 -42",
    "<b>bold</b> and <i>italic</i> text in a table",
    "Naïve café résumé — déjà vu, über cool. ¿Qué tal? Ça va!",
    "日本語のテキストと中文文本。Привет, мир! Γειά σου κόσμε.",
    "Tabs\tand  double  spaces   and    four    spaces.\n\n\nNew paragraphs.",
    "Emoji time 😀🚀 and symbols #@$%^&*()[]{}<>|~`",
    "She said: \"Hello!\" He replied: 'Goodbye...' (and left).",
    "https://example.com/path?query=1&x=2 email@example.org",
]

SAMPLES = [
    "Hello world",
    "The dog ran to the park, and the girl followed it.",
    "a  b   c    d",
    " leading space",
    "trailing space ",
    "x\ny\n\nz\n\n\n",
    "\tindented\twith tabs",
    "I'm sure you'll like it, won't you? We'd've",
    "Price: $12,345.67 (about 3.14x more) 2024-01-31",
    "café naïve résumé Ünïcödé",
    "日本語 中文 Привет мир",
    "emoji 😀 🚀🦙 end",
    "def f(x):\n    return x * 2\n",
    "<b>bold</b>",
    "MixedCASE words ALLCAPS camelCase snake_case",
    "!!! ??? ... --- ===",
    "1 12 123 1234 12345 123456",
    "",
    " ",
    "   ",
    "\n",
    "zqxj unseenwordz",
    "Ω≈ç√∫˜µ≤≥÷",
    "a\u200db",
]


def _rope_theta(config: Any, layer_type: str | None = None) -> float:
    """RoPE base of a config: transformers 5 keeps it in ``rope_parameters`` (per layer type for
    Gemma 3), transformers 4 in ``rope_theta``."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return float((params[layer_type] if layer_type and layer_type in params else params)["rope_theta"])
    return float(config.rope_theta)


def varied_strings(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded random strings mixing words, digits, whitespace runs, punctuation and unicode."""
    rng = random.Random(seed)
    words = " ".join(CORPUS + SAMPLES).split()
    pieces = [*words, " ", "  ", "   ", "\n", "\n\n", "\t", "123", "4567", "'s", "'LL", "é", "日本", "😀", "...", "--"]
    gaps = ["", " ", ""]
    return ["".join(rng.choice(pieces) + rng.choice(gaps) for _ in range(rng.randint(1, 12))) for _ in range(n)]


# ----------------------------------------------------------------------------- SentencePiece


@dataclass
class SpmTokenizer:
    """A trained SentencePiece model and how it goes into a GGUF file."""

    processor: Any
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int | None
    control: list[str] = field(default_factory=list)

    def encode(self, text: str) -> list[int]:
        """SentencePiece's own encoding, control tokens in the text matched whole, BOS first."""
        ids = [self.bos_id]
        rest = text
        while rest:
            hits = [(rest.find(c), c) for c in self.control if c in rest]
            if not hits:
                ids += self.processor.encode(rest)
                break
            at, token = min(hits)
            ids += self.processor.encode(rest[:at]) if at else []
            ids.append(self.tokens.index(token))
            rest = rest[at + len(token) :]
        return ids


GEMMA_USER_DEFINED = ["\n", "\n\n", "\n\n\n", "▁▁", "▁▁▁", "▁▁▁▁", "<b>", "</b>", "\t"]
GEMMA_CONTROL = ["<mask>", "<start_of_turn>", "<end_of_turn>"]


def train_spm(layout: str, vocab_size: int = 420) -> SpmTokenizer:
    """Train a SentencePiece BPE model with Llama's (``"llama"``) or Gemma's (``"gemma"``) layout."""
    import sentencepiece as spm

    common = {
        "model_type": "bpe",
        "vocab_size": vocab_size,
        "byte_fallback": True,
        "character_coverage": 1.0,
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "split_digits": True,
        "minloglevel": 2,
        "num_threads": 1,
    }
    if layout == "gemma":
        special = {
            "pad_id": 0,
            "eos_id": 1,
            "bos_id": 2,
            "unk_id": 3,
            "pad_piece": "<pad>",
            "eos_piece": "<eos>",
            "bos_piece": "<bos>",
            "unk_piece": "<unk>",
            "control_symbols": GEMMA_CONTROL,
            "user_defined_symbols": GEMMA_USER_DEFINED,
            "add_dummy_prefix": False,
            "allow_whitespace_only_pieces": True,
        }
    else:
        special = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1, "add_dummy_prefix": True}
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 8), model_writer=buf, **common, **special)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    # llama.cpp's _create_vocab_sentencepiece: pieces, scores and types from SentencePiece ...
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(kind)
    if layout == "gemma":
        # ... then tokenizer_config.json's added tokens (Gemma lists its specials and user-defined pieces there):
        # score -1000, special ones CONTROL, the others USER_DEFINED with "▁" written back as " ".
        for i, token in enumerate(tokens):
            if types[i] in (2, 3):
                scores[i], types[i] = -1000.0, 3
            elif token in GEMMA_USER_DEFINED:
                tokens[i], scores[i], types[i] = token.replace("▁", " "), -1000.0, 4
    return SpmTokenizer(
        processor=sp,
        tokens=tokens,
        scores=scores,
        types=types,
        add_space_prefix=layout != "gemma",
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        unk_id=sp.unk_id(),
        pad_id=sp.pad_id() if sp.pad_id() >= 0 else None,
        control=GEMMA_CONTROL if layout == "gemma" else [],
    )


# ----------------------------------------------------------------------------- byte-level BPE

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def hf_pre_tokenizer(pre: str) -> Any:
    """The pre-tokenizer of the original Hugging Face tokenizer.json of the family llama.cpp calls ``pre``."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in ("qwen2", "llama-bpe"):
        split = {"qwen2": QWEN2_SPLIT, "llama-bpe": LLAMA3_SPLIT}[pre]
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])
    # Others: steerlab's own reading of llama.cpp's regexes, only to train a vocabulary for files
    # that are checked against llama.cpp itself (not against this tokenizer).
    from steerlab.models.gguf_tokenizer import PRE_TOKENIZERS

    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre].regexes]
    return pre_tokenizers.Sequence([*splits, byte_level])


def train_byte_level(pre: str, vocab_size: int = 600) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` trained with the pre-tokenizer of family ``pre``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=pre in ("llama-bpe", "tekken")))
    tok.pre_tokenizer = hf_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BYTE_LEVEL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 8, trainer=trainer)
    return tok


def byte_level_fields(tok: Any) -> tuple[list[str], list[int], list[str]]:
    """Tokens, types and merges as llama.cpp's ``get_vocab_base`` and ``SpecialVocab`` write them."""
    import json

    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [3 if t in specials else 1 for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    return tokens, types, merges


# ----------------------------------------------------------------------------- writing GGUF


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's LlamaModel.permute: q/k rows from HF's rotate-half order to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model: Any | None, tokenizer: dict[str, Any], arch: str = "llama") -> Path:
    """Write ``model`` (or only a vocabulary, when ``None``) and ``tokenizer`` metadata to a GGUF file.

    ``tokenizer`` holds ``model`` ("llama"/"gpt2"), ``tokens`` and optionally ``pre``, ``scores``,
    ``types``, ``merges``, ``bos``/``eos``/``unk``/``pad`` ids, ``add_bos``, ``add_eos``,
    ``add_space_prefix`` and ``chat_template``.
    """
    from gguf import MODEL_ARCH_NAMES, GGUFWriter, get_tensor_name_map

    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    t = tokenizer
    writer.add_tokenizer_model(t["model"])
    if "pre" in t:
        writer.add_tokenizer_pre(t["pre"])
    writer.add_token_list(t["tokens"])
    if "scores" in t:
        writer.add_token_scores(t["scores"])
    if "types" in t:
        writer.add_token_types(t["types"])
    if "merges" in t:
        writer.add_token_merges(t["merges"])
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if t.get(key) is not None:
            add(t[key])
    for key, add in (
        ("add_bos", writer.add_add_bos_token),
        ("add_eos", writer.add_add_eos_token),
        ("add_space_prefix", writer.add_add_space_prefix),
    ):
        if key in t:
            add(t[key])
    if "chat_template" in t:
        writer.add_chat_template(t["chat_template"])
    if model is not None:
        c = model.config
        writer.add_vocab_size(c.vocab_size)
        writer.add_context_length(c.max_position_embeddings)
        writer.add_embedding_length(c.hidden_size)
        writer.add_block_count(c.num_hidden_layers)
        writer.add_feed_forward_length(c.intermediate_size)
        writer.add_head_count(c.num_attention_heads)
        writer.add_head_count_kv(c.num_key_value_heads)
        writer.add_layer_norm_rms_eps(c.rms_norm_eps)
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        if arch == "gemma3":
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
            writer.add_sliding_window(c.sliding_window)
            writer.add_rope_freq_base(_rope_theta(c, "full_attention"))
        else:
            writer.add_rope_dimension_count(head_dim)
            writer.add_rope_freq_base(_rope_theta(c))
        arch_id = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
        names = get_tensor_name_map(arch_id, c.num_hidden_layers)
        tied = c.tie_word_embeddings
        for hf_name, w in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue
            base, suffix = hf_name.rsplit(".", 1)
            name = names.get_name(base)
            assert name is not None, hf_name
            w = w.detach().float()
            if arch == "llama" and base.endswith("q_proj"):
                w = _permute(w, c.num_attention_heads)
            if arch == "llama" and base.endswith("k_proj"):
                w = _permute(w, c.num_key_value_heads)
            if arch == "gemma3" and hf_name.endswith("norm.weight"):
                w = w + 1
            writer.add_tensor(f"{name}.{suffix}", np.ascontiguousarray(w.numpy().astype(np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_model(arch: str, vocab_size: int, seed: int = 0) -> Any:
    """A random-weight 2-layer causal LM of ``arch`` ("llama", "qwen2" or "gemma3")."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    shape = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
    }
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True))
    elif arch == "gemma3":
        # head_dim 256 = Gemma's default query_pre_attn_scalar, which neither the GGUF file nor
        # transformers' GGUF loader carries (llama.cpp scales attention by head_dim ** -0.5).
        model = Gemma3ForCausalLM(Gemma3TextConfig(**shape, head_dim=256, sliding_window=128))
    else:
        raise ValueError(arch)
    with torch.no_grad():  # random norms too, so that a wrong "+1" or permutation shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
    return model.eval()
