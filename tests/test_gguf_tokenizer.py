"""GGUF tokenizers: rebuilt from the file's own vocabulary where transformers' conversion is wrong.

Offline and fast: every tokenizer is trained here (SentencePiece or ``tokenizers``) and every model
is a tiny random-weight transformers model, written to GGUF the way llama.cpp writes real files
(see ``tests/gguf_files.py``). The reference for each encoding is the *source* tokenizer itself:
SentencePiece's own encoder for the Llama/Gemma layouts, the trained ``tokenizers`` object for
the byte-level families. The slow test checks the real default model (SmolLM2-135M GGUF).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers

import steerlab
from steerlab.models.gguf_tokenizer import (
    build_tokenizer,
    load_gguf_tokenizer,
    read_gguf_vocab,
    tokenizer_mismatch,
)

from .gguf_files import (
    BYTE_LEVEL_SPECIALS,
    SAMPLES,
    byte_level_fields,
    tiny_model,
    train_byte_level,
    train_spm,
    varied_strings,
    write_gguf,
)
from .llamacpp_engine import LlamaCpp, xllamacpp_available

TEXTS = SAMPLES + varied_strings(150)
CHAT = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
GEMMA_TURNS = ["<start_of_turn>user\nHi  there<end_of_turn>\n<start_of_turn>model\n", "<mask>x<mask>"]
CHATML_TURNS = ["<|im_start|>user\nHi  there<|im_end|>\n<|im_start|>assistant\n", "a<|endoftext|>b"]
FAMILIES = {  # name: (GGUF architecture, tokenizer family)
    "llama-spm": ("llama", "llama"),
    "gemma3-spm": ("gemma3", "gemma"),
    "gpt2-bpe": ("llama", "gpt-2"),
    "smollm-bpe": ("llama", "smollm"),
    "qwen2-bpe": ("qwen2", "qwen2"),
    "llama3-bpe": ("llama", "llama-bpe"),
    # pre-tokenizers checked against llama.cpp only
    "tekken-bpe": ("llama", "tekken"),
    "gpt4o-bpe": ("llama", "gpt-4o"),
    "qwen35-bpe": ("qwen2", "qwen35"),
    "default-bpe": ("llama", "default"),
    "falcon-bpe": ("llama", "falcon"),
}
needs_llamacpp = pytest.mark.skipif(
    not xllamacpp_available(), reason="xllamacpp is not installed (it is in steerlab[dev]: pip install -e '.[dev]')"
)

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
"""What transformers' own GGUF tokenizer conversion gets right was measured on 5.x."""


def spm_meta(layout: str) -> tuple[dict, object]:
    sp = train_spm(layout)
    meta = {
        "model": "llama",
        "tokens": sp.tokens,
        "scores": sp.scores,
        "types": sp.types,
        "bos": sp.bos_id,
        "eos": sp.eos_id,
        "unk": sp.unk_id,
    }
    if sp.pad_id is not None:
        meta["pad"] = sp.pad_id
    if layout == "gemma":  # what llama.cpp writes for Gemma 3 (older Llama files carry neither key)
        meta |= {"pre": "default", "add_bos": True, "add_eos": False, "add_space_prefix": False, "chat_template": CHAT}
    return meta, sp


def byte_level_meta(pre: str) -> tuple[dict, object]:
    src = train_byte_level(pre)
    tokens, types, merges = byte_level_fields(src)
    meta = {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": 1,
        "eos": 2,
        "pad": 0,
        "add_bos": False,
    }
    return meta, src


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def family_gguf(name: str, directory: Path) -> tuple[Path, object, list[str]]:
    """A tiny model of family ``name`` written to GGUF: (path, source model, texts with its special tokens)."""
    arch, family = FAMILIES[name]
    meta, _ = spm_meta(family) if family in ("llama", "gemma") else byte_level_meta(family)
    source = tiny_model(arch, len(meta["tokens"]))
    turns = GEMMA_TURNS if family == "gemma" else [] if family == "llama" else CHATML_TURNS
    return write_gguf(directory / f"{name}.gguf", source, meta, arch=arch), source, TEXTS + turns


@needs_llamacpp
@pytest.mark.parametrize("name", list(FAMILIES))
def test_rebuilt_tokenizer_encodes_like_llama_cpp(name, tmp_path):
    """llama.cpp's own tokenizer (xllamacpp) on the same file gives the same ids, specials included."""
    path, _, texts = family_gguf(name, tmp_path)
    cpp = LlamaCpp(path)
    try:
        ours = build_tokenizer(read_gguf_vocab(path))
        assert [ids(ours, t) for t in texts] == [cpp.tokenize(t) for t in texts]
    finally:
        cpp.close()


@needs_llamacpp
@pytest.mark.parametrize("name", ["llama-spm", "qwen2-bpe", "gemma3-spm"])
def test_tiny_gguf_files_are_models_llama_cpp_runs(name, tmp_path):
    """The test files are real GGUF models: llama.cpp's logits equal the source model's."""
    path, source, _ = family_gguf(name, tmp_path)
    cpp = LlamaCpp(path)
    try:
        batch = cpp.tokenize("The quick brown fox jumps over the lazy dog.")
        with torch.inference_mode():
            want = source(input_ids=torch.tensor([batch])).logits[0, -1]
        # float noise between two implementations (llama.cpp's kernels, torch's): measured max |difference|
        # 5.4e-4 on logits up to 0.5, the same under torch's AVX512, AVX2 and default kernels; atol 2e-3 leaves 3.7x
        torch.testing.assert_close(torch.from_numpy(cpp.last_logits(batch)), want, atol=2e-3, rtol=0)
    finally:
        cpp.close()


@pytest.mark.parametrize("layout", ["llama", "gemma"])
def test_sentencepiece_vocab_encodes_like_sentencepiece(layout, tmp_path):
    meta, sp = spm_meta(layout)
    vocab = read_gguf_vocab(write_gguf(tmp_path / "v.gguf", None, meta))
    tok = build_tokenizer(vocab)
    assert tokenizer_mismatch(tok, vocab) is None
    texts = TEXTS + (GEMMA_TURNS if layout == "gemma" else [])
    assert [ids(tok, t) for t in texts] == [sp.encode(t) for t in texts]
    assert [tok.decode(ids(tok, t), skip_special_tokens=True) for t in TEXTS] == TEXTS
    if layout == "gemma":  # user-defined whitespace tokens keep the GGUF's spelling and match whole
        assert tok.convert_ids_to_tokens(ids(tok, "a  b"))[1:] == ["a", "  ", "b"]


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "qwen2", "llama-bpe"])
def test_byte_level_vocab_encodes_like_source(pre, tmp_path):
    meta, src = byte_level_meta(pre)
    vocab = read_gguf_vocab(write_gguf(tmp_path / "v.gguf", None, meta, arch="qwen2"))
    tok = build_tokenizer(vocab)
    assert tokenizer_mismatch(tok, vocab) is None
    texts = TEXTS + CHATML_TURNS
    assert [ids(tok, t) for t in texts] == [src.encode(t).ids for t in texts]
    assert [tok.decode(ids(tok, t)) for t in texts] == texts
    assert ids(tok, "<|im_start|>")[0] == BYTE_LEVEL_SPECIALS.index("<|im_start|>")


def test_transformers_respells_gemma_whitespace_tokens(tmp_path):
    """The Gemma 3 failure: transformers turns the file's "  " (user-defined) into "▁▁", so ids differ."""
    from transformers import AutoTokenizer

    meta, _ = spm_meta("gemma")
    path = write_gguf(tmp_path / "gemma.gguf", None, meta, arch="gemma3")
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    problem = tokenizer_mismatch(theirs, read_gguf_vocab(path))
    assert problem is not None and "token ids differ" in problem and "'  ' in the GGUF, '▁▁' here" in problem
    ours = load_gguf_tokenizer(path)  # falls back to the file's own vocabulary
    assert tokenizer_mismatch(ours, read_gguf_vocab(path)) is None


@pytest.mark.skipif(not TRANSFORMERS_5, reason="which families transformers 4's GGUF conversion gets right differs")
@pytest.mark.parametrize(
    ("family", "kept"),
    [("qwen2", True), ("gpt-2", True), ("smollm", False), ("llama", False), ("gemma", False)],
)
def test_transformers_tokenizer_kept_only_when_it_encodes_like_the_file(family, kept, tmp_path, monkeypatch):
    """transformers' tokenizer survives only where it matches the file and encodes the probes alike.

    It splits "a  12" wrongly for SmolLM's pre-tokenizer, drops SentencePiece's dummy prefix on
    " leading space" (Llama layout) and respells Gemma's whitespace tokens; the rest it gets right.
    """
    from steerlab.models import gguf_tokenizer

    built = []

    def recording_build(vocab):
        built.append(build_tokenizer(vocab))
        return built[-1]

    monkeypatch.setattr(gguf_tokenizer, "build_tokenizer", recording_build)
    if family in ("llama", "gemma"):
        meta, sp = spm_meta(family)
        encode = sp.encode
    else:
        meta, src = byte_level_meta(family)
        encode = src.encode
    path = write_gguf(tmp_path / f"{family}.gguf", None, meta, arch="gemma3" if family == "gemma" else "llama")
    tok = load_gguf_tokenizer(path)
    assert len(built) == 1 and (tok is not built[0]) == kept
    expected = [encode(t) if family in ("llama", "gemma") else encode(t).ids for t in TEXTS]
    assert [ids(tok, t) for t in TEXTS] == expected


def test_unbuildable_tokenizer_names_both_problems(tmp_path):
    meta, _ = byte_level_meta("qwen2")
    path = write_gguf(tmp_path / "odd.gguf", None, {**meta, "model": "rwkv"}, arch="qwen2")
    with pytest.raises(steerlab.ModelLoadError, match=r"type 'rwkv'.*transformers' own conversion"):
        load_gguf_tokenizer(path)
    path = write_gguf(tmp_path / "pre.gguf", None, {**meta, "pre": "no-such-pre"}, arch="qwen2")
    with pytest.raises(steerlab.ModelLoadError, match="pre-tokenizer 'no-such-pre'"):
        build_tokenizer(read_gguf_vocab(path))


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("arch", "family"),
    [("llama", "llama"), ("qwen2", "qwen2"), ("gemma3", "gemma")],
    ids=["llama-spm", "qwen2-bpe", "gemma3-spm"],
)
def test_load_model_from_gguf(arch, family, tmp_path, cache):
    """The whole path: GGUF file → steerlab.load_model → same encodings and logits as the source."""
    if family == "qwen2":
        meta, src = byte_level_meta("qwen2")

        def encode(text: str) -> list[int]:
            return src.encode(text).ids

        turns = CHATML_TURNS
    else:
        meta, sp = spm_meta(family)
        encode = sp.encode
        turns = GEMMA_TURNS if family == "gemma" else []
    source = tiny_model(arch, len(meta["tokens"]))
    path = write_gguf(tmp_path / f"tiny-{arch}.gguf", source, meta, arch=arch)

    lm = steerlab.load_model(path, device="cpu")
    assert lm.model_type == source.config.model_type and lm.n_layers == 2
    texts = TEXTS + turns
    assert [ids(lm.tokenizer, t) for t in texts] == [encode(t) for t in texts]
    if "chat_template" in meta:
        assert lm.tokenizer.chat_template == meta["chat_template"]
    batch = torch.tensor([encode("The quick brown fox jumps over the lazy dog. 12 café")])
    with torch.inference_mode():
        got, want = lm.model(input_ids=batch).logits, source(input_ids=batch).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_unsupported_gguf_architecture_is_a_model_load_error(tmp_path, cache):
    meta, _ = byte_level_meta("gpt-2")
    path = write_gguf(tmp_path / "neox.gguf", None, meta, arch="gptneox")
    with pytest.raises(steerlab.ModelLoadError, match=r"transformers cannot load the model in neox\.gguf"):
        steerlab.load_model(path)


# ------------------------------------------------------------------------------ the real default model


@pytest.mark.slow
def test_default_smollm2_rebuilt_tokenizer_matches(tmp_path):
    """SmolLM2's GGUF (pre "smollm"): the rebuilt tokenizer encodes like the original SmolLM2 tokenizer.

    The original tokenizer.json splits digits out first (``Digits(individual_digits=True)``, then
    GPT-2's ByteLevel regex); we rebuild that pipeline over the file's vocabulary and merges as the
    reference. transformers' GGUF conversion skips the digit split, so it differs exactly where a
    whitespace run meets a digit ("a  12": "Ġ","Ġ" instead of "ĠĠ"); everywhere else it is identical.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer

    from steerlab.models.load import default_gguf_path

    path = default_gguf_path()
    vocab = read_gguf_vocab(path)
    ours = build_tokenizer(vocab)
    assert tokenizer_mismatch(ours, vocab) is None
    original = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(vocab.tokens)}, merges=[tuple(m.split(" ")) for m in vocab.merges or []]
        )
    )
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    original.decoder = decoders.ByteLevel()
    controls = [t for t, kind in zip(vocab.tokens, vocab.types or []) if kind == 3]
    original.add_special_tokens([AddedToken(t, special=True) for t in controls])
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    texts = (
        SAMPLES
        + varied_strings(400, seed=1)
        + CHATML_TURNS
        + [steerlab.load_model.__doc__ or "", Path(steerlab.__file__).read_text()[:3000]]
    )
    assert len(texts) >= 400
    assert [ids(ours, t) for t in texts] == [original.encode(t).ids for t in texts]
    assert [ours.decode(ids(ours, t)) for t in texts] == texts
    space_digit = re.compile(r"\s\s\d")
    plain = [t for t in texts if not space_digit.search(t)]
    assert len(plain) >= 300
    if TRANSFORMERS_5:  # transformers 4's own GGUF conversion adds a BOS the original never had
        assert [ids(ours, t) for t in plain] == [ids(theirs, t) for t in plain]
        assert ours.chat_template == theirs.chat_template and ours.bos_token_id == theirs.bos_token_id
