"""Tokenizers for GGUF models: transformers' conversion, checked, else rebuilt from the file itself.

A GGUF file carries its tokenizer as metadata under llama.cpp's key names (``tokenizer.ggml.*``):
the token strings, their scores and types, the merges, the special token ids, the add-bos/eos
flags, the pre-tokenizer name and the chat template. transformers turns that into a Hugging Face
tokenizer, but not always faithfully. Measured against the source tokenizers (transformers 5.24):

* Gemma (1/2/3): the user-defined whitespace tokens, which the file spells ``"  "``, come out as
  ``"▁▁"``, so 30 token ids of a real Gemma 3 file no longer match its vocabulary;
* SentencePiece Llama-style files: text that starts with a space loses SentencePiece's (and
  llama.cpp's) dummy prefix (``" hi"`` → ``▁hi`` instead of ``▁ ▁hi``);
* SmolLM (``pre="smollm"``): digits are not split out before the GPT-2 regex, so a whitespace run
  before a digit splits differently (``"a  12"`` → ``Ġ Ġ 1 2`` instead of ``ĠĠ 1 2``).

:func:`load_gguf_tokenizer` therefore

1. loads transformers' tokenizer and checks it against the file (:func:`tokenizer_mismatch`);
2. builds the tokenizer from the file's own vocabulary with the ``tokenizers`` library
   (:func:`build_tokenizer`), the way llama.cpp reads it, and checks that too;
3. keeps transformers' tokenizer only if it matches the file *and* encodes a set of probe texts
   exactly like the rebuilt one; otherwise uses the rebuilt one;
4. raises :class:`~steerlab.errors.ModelLoadError` naming what differs if neither matches the file.

Two tokenizer models cover every architecture in :data:`steerlab.models.layers.ARCHITECTURES`:

* ``"llama"`` — SentencePiece-style BPE (Llama 1/2, Mistral 7B, Gemma 1/2/3, Phi-3): merges by
  token score, ``▁`` for spaces, ``<0xXX>`` byte fallback, user-defined tokens matched whole.
* ``"gpt2"`` — byte-level BPE with explicit merges (GPT-2, GPT-Neo(X), Llama 3, Qwen 2/3,
  SmolLM, Mistral Nemo): text first split by the regexes that ``tokenizer.ggml.pre`` names.

Example:
    >>> from steerlab.models.gguf_tokenizer import load_gguf_tokenizer
    >>> tok = load_gguf_tokenizer(Path("gemma-3-270m-q4_k_m.gguf"))  # doctest: +SKIP
    >>> tok("a  b").input_ids  # doctest: +SKIP
    [2, 236746, 138, 236763]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

logger = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizer:
    """How a byte-level BPE vocabulary splits text before merging (one ``tokenizer.ggml.pre``)."""

    regexes: tuple[str, ...]
    """Applied in turn, each splitting every piece further; text between matches stays a piece."""
    ignore_merges: bool = False
    """A piece that is itself a token is taken whole, without merging (Llama 3, Tekken)."""
    add_bos: bool = False
    """llama.cpp adds BOS by default for this vocabulary (when the file does not say)."""


_PRE_GPT2 = PreTokenizer((_GPT2,))
_PRE_DIGITS = PreTokenizer((r"\p{N}", _GPT2))
_PRE_LLAMA3 = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_PRE_QWEN2 = PreTokenizer((_QWEN2,))

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "gigachat", "exaone4", "trillion"), _PRE_GPT2),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"), _PRE_DIGITS),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), _PRE_LLAMA3
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "kormo"), _PRE_QWEN2),
    "qwen35": PreTokenizer((_QWEN35,)),
    "tekken": PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True),
    **dict.fromkeys(("gpt-4o", "llama4", "minimax-m2", "kanana2"), PreTokenizer((_GPT4O,))),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), PreTokenizer((r" ?[^(\s|.,!?…。，、।۔،)]+",))),
}
"""``tokenizer.ggml.pre`` → how llama.cpp splits text for that byte-level vocabulary."""


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer metadata of one GGUF file (llama.cpp's ``tokenizer.*`` keys)."""

    name: str
    """The file name, for messages."""
    architecture: str
    model: str
    """``tokenizer.ggml.model``: ``"llama"`` (SentencePiece-style) or ``"gpt2"`` (byte-level BPE)."""
    pre: str | None
    tokens: list[str]
    scores: list[float] | None
    types: list[int] | None
    merges: list[str] | None
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool | None
    add_eos: bool | None
    add_space_prefix: bool | None
    chat_template: str | None
    hf_json: str | None
    """``tokenizer.huggingface.json``: the whole ``tokenizer.json``, when the file embeds it."""

    def token_type(self, index: int) -> int:
        """The llama.cpp type of token ``index`` (``NORMAL`` when the file lists none)."""
        return self.types[index] if self.types is not None else NORMAL


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """Read the tokenizer metadata of a GGUF file.

    Raises:
        ModelLoadError: the file has no token list.

    Example:
        >>> read_gguf_vocab(Path("model.gguf")).model  # doctest: +SKIP
        'gpt2'
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    def optional_int(key: str) -> int | None:
        got = value(key)
        return None if got is None else int(got)

    def optional_bool(key: str) -> bool | None:
        got = value(key)
        return None if got is None else bool(got)

    tokens = value("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError(f"{path.name} holds no tokenizer (no tokenizer.ggml.tokens): use a complete GGUF file")
    scores = value("tokenizer.ggml.scores")
    types = value("tokenizer.ggml.token_type")
    merges = value("tokenizer.ggml.merges")
    return GGUFVocab(
        name=path.name,
        architecture=str(value("general.architecture") or ""),
        model=str(value("tokenizer.ggml.model") or ""),
        pre=value("tokenizer.ggml.pre"),
        tokens=list(tokens),
        scores=None if scores is None else [float(s) for s in scores],
        types=None if types is None else [int(t) for t in types],
        merges=None if merges is None else list(merges),
        bos_id=optional_int("tokenizer.ggml.bos_token_id"),
        eos_id=optional_int("tokenizer.ggml.eos_token_id"),
        unk_id=optional_int("tokenizer.ggml.unknown_token_id"),
        pad_id=optional_int("tokenizer.ggml.padding_token_id"),
        add_bos=optional_bool("tokenizer.ggml.add_bos_token"),
        add_eos=optional_bool("tokenizer.ggml.add_eos_token"),
        add_space_prefix=optional_bool("tokenizer.ggml.add_space_prefix"),
        chat_template=value("tokenizer.chat_template"),
        hf_json=value("tokenizer.huggingface.json"),
    )


# ------------------------------------------------------------------------------------------ checking


def tokenizer_mismatch(tokenizer: Any, vocab: GGUFVocab) -> str | None:
    """What differs between a tokenizer and the GGUF's own metadata, or ``None`` if nothing does.

    Compares the chat template, the bos/eos token ids and every token string of the vocabulary.

    Example:
        >>> tokenizer_mismatch(tok, read_gguf_vocab(Path("model.gguf")))  # doctest: +SKIP
        "30 token ids differ from the GGUF vocabulary (first: id 138 is '  ' in the GGUF, '▁▁' here)"
    """
    if vocab.chat_template is not None and vocab.chat_template != getattr(tokenizer, "chat_template", None):
        return "the tokenizer's chat template differs from the GGUF's"
    for want, attr in ((vocab.bos_id, "bos_token_id"), (vocab.eos_id, "eos_token_id")):
        if want is not None and want != getattr(tokenizer, attr):
            return f"tokenizer {attr}={getattr(tokenizer, attr)} but the GGUF says {want}"
    have = tokenizer.get_vocab()
    bad = [i for i, tok in enumerate(vocab.tokens) if have.get(tok) != i]
    if bad:
        first = bad[0]
        spelled = tokenizer.convert_ids_to_tokens(first) if first < len(tokenizer) else None
        return (
            f"{len(bad)} token ids differ from the GGUF vocabulary "
            f"(first: id {first} is {vocab.tokens[first]!r} in the GGUF, {spelled!r} here)"
        )
    return None


def check_gguf_tokenizer(tokenizer: Any, gguf_path: Path) -> None:
    """Check that a tokenizer matches the GGUF file's own metadata (see :func:`tokenizer_mismatch`).

    Raises:
        ModelLoadError: on any mismatch, naming it.
    """
    problem = tokenizer_mismatch(tokenizer, read_gguf_vocab(gguf_path))
    if problem is not None:
        raise ModelLoadError(f"{gguf_path.name}: {problem}")


PROBES = (
    "Hello world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "  leading and trailing spaces  ",
    "x = 12345 + 3.14  # two  spaces\n\tand a tab\n\n",
    "a  12\n\n3   456 7",
    "I'm sure you'll like it, won't you? We'd've",
    "café naïve résumé — 日本語 Привет 😀🚀",
    "def f(x):\n    return x * 2\n",
    "<b>bold</b> <table> \r\n end",
)
"""Texts on which transformers' tokenizer must encode like the rebuilt one to be kept: leading
spaces, whitespace runs before digits, newlines, code, contractions and non-Latin text."""


def _never_unknown(vocab: GGUFVocab) -> bool:
    """Whether every text has an encoding without ``<unk>`` (byte-level, or byte fallback tokens)."""
    return vocab.model == "gpt2" or any(vocab.token_type(i) == BYTE for i in range(len(vocab.tokens)))


def _round_trip_failure(tokenizer: Any) -> str | None:
    """A probe text the tokenizer does not decode back to itself (a broken rebuild), if any."""
    for text in PROBES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids)
        if back != text:
            return f"the rebuilt tokenizer decodes {text!r} as {back!r}"
    return None


# ------------------------------------------------------------------------------------------ building


def _special_tokens(vocab: GGUFVocab) -> tuple[list[Any], list[Any]]:
    """The control/unknown tokens (special) and the user-defined ones (plain added tokens).

    llama.cpp matches both whole in the raw text before any normalisation or merging.
    """
    from tokenizers import AddedToken

    special, plain = [], []
    for index, token in enumerate(vocab.tokens):
        kind = vocab.token_type(index)
        if kind in (CONTROL, UNKNOWN):
            special.append(AddedToken(token, special=True, normalized=False))
        elif kind == USER_DEFINED:
            plain.append(AddedToken(token, special=False, normalized=False))
    return special, plain


def _first_ids(tokens: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for index, token in enumerate(tokens):
        ids.setdefault(token, index)
    return ids


def _merges_by_score(vocab: GGUFVocab, ids: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE as llama.cpp runs it: merge the adjacent pair whose join scores best.

    Every split of every normal token into two vocabulary tokens is a merge, ranked by the joined
    token's score (then its id), so ``tokenizers``' BPE picks the same pair llama.cpp does.
    """
    scores = vocab.scores or [-float(i) for i in range(len(vocab.tokens))]
    ranked: list[tuple[float, int, str, str]] = []
    for index, token in enumerate(vocab.tokens):
        if vocab.token_type(index) != NORMAL or len(token) < 2 or ids.get(token) != index:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[index], index, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _split_merges(merges: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise ModelLoadError(f"malformed GGUF merge {merge!r}: expected two tokens separated by a space")
        pairs.append((left, right))
    return pairs


def _sentencepiece_backend(vocab: GGUFVocab) -> Any:
    """SentencePiece-style BPE (``tokenizer.ggml.model == "llama"``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    ids = _first_ids(vocab.tokens)
    merges = _split_merges(vocab.merges) if vocab.merges else _merges_by_score(vocab, ids)
    byte_fallback = any(vocab.token_type(i) == BYTE for i in range(len(vocab.tokens)))
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    backend = Tokenizer(models.BPE(vocab=ids, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback))
    # Spaces are "▁". Like SentencePiece and llama.cpp (and unlike transformers' Metaspace, which skips
    # it when the text already starts with a space), prefix one to every stretch of text between
    # special tokens, unless the file says not to (Gemma).
    prefix = vocab.add_space_prefix if vocab.add_space_prefix is not None else True
    replace = normalizers.Replace(" ", "▁")
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if prefix else replace
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _byte_level_backend(vocab: GGUFVocab) -> Any:
    """Byte-level BPE with explicit merges (``tokenizer.ggml.model == "gpt2"``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre_name = vocab.pre or "default"
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise ModelLoadError(
            f"{vocab.name}: steerlab cannot rebuild a byte-level tokenizer with pre-tokenizer {pre_name!r} "
            f"(known: {', '.join(sorted(PRE_TOKENIZERS))}). Convert the original Hugging Face checkpoint instead."
        )
    if not vocab.merges:
        raise ModelLoadError(f"{vocab.name}: a byte-level BPE vocabulary needs tokenizer.ggml.merges, and it has none")
    backend = Tokenizer(
        models.BPE(vocab=_first_ids(vocab.tokens), merges=_split_merges(vocab.merges), ignore_merges=pre.ignore_merges)
    )
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def build_tokenizer(vocab: GGUFVocab) -> Any:
    """Build a Hugging Face fast tokenizer from a GGUF file's own vocabulary.

    Raises:
        ModelLoadError: the file's tokenizer model or pre-tokenizer is one steerlab cannot rebuild.

    Example:
        >>> tok = build_tokenizer(read_gguf_vocab(Path("model.gguf")))  # doctest: +SKIP
        >>> tok.decode(tok("Hello world").input_ids, skip_special_tokens=True)  # doctest: +SKIP
        'Hello world'
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if vocab.hf_json:
        backend = Tokenizer.from_str(vocab.hf_json)
    elif vocab.model == "llama":
        backend = _sentencepiece_backend(vocab)
    elif vocab.model == "gpt2":
        backend = _byte_level_backend(vocab)
    else:
        raise ModelLoadError(
            f"{vocab.name}: steerlab cannot rebuild a tokenizer of type {vocab.model!r} from a GGUF file "
            "(it knows 'llama' and 'gpt2'). Convert the original Hugging Face checkpoint instead."
        )
    special, plain = _special_tokens(vocab)
    backend.add_special_tokens(special)
    backend.add_tokens(plain)

    def token(index: int | None) -> str | None:
        return vocab.tokens[index] if index is not None and 0 <= index < len(vocab.tokens) else None

    if vocab.add_bos is not None:
        add_bos = vocab.add_bos
    elif vocab.model == "llama":
        add_bos = True
    else:
        add_bos = PRE_TOKENIZERS.get(vocab.pre or "default", _PRE_GPT2).add_bos
    bos = add_bos and vocab.bos_id is not None
    eos = bool(vocab.add_eos) and vocab.eos_id is not None
    if bos or eos:
        # on the backend itself, so every transformers release adds them (4.x ignores add_bos_token
        # on a plain PreTrainedTokenizerFast; 5.x rebuilds the same template from the flags below)
        from tokenizers.processors import TemplateProcessing

        marks = [
            (t, i)
            for t, i, on in ((token(vocab.bos_id), vocab.bos_id, bos), (token(vocab.eos_id), vocab.eos_id, eos))
            if on
        ]
        head = f"{token(vocab.bos_id)} " if bos else ""
        tail = f" {token(vocab.eos_id)}" if eos else ""
        backend.post_processor = TemplateProcessing(
            single=f"{head}$A{tail}",
            pair=f"{head}$A{tail} {head}$B{tail}".replace("  ", " ").strip(),
            special_tokens=[(str(t), int(i)) for t, i in marks if t is not None and i is not None],
        )
    kwargs: dict[str, Any] = {
        "tokenizer_object": backend,
        "bos_token": token(vocab.bos_id),
        "eos_token": token(vocab.eos_id),
        "unk_token": token(vocab.unk_id),
        "pad_token": token(vocab.pad_id),
        "add_bos_token": bos,
        "add_eos_token": eos,
        "clean_up_tokenization_spaces": False,
    }
    if vocab.chat_template is not None:
        kwargs["chat_template"] = vocab.chat_template
    return PreTrainedTokenizerFast(**{k: v for k, v in kwargs.items() if v is not None})


# ------------------------------------------------------------------------------------------ loading


def encoding_difference(first: Any, second: Any, texts: tuple[str, ...] = PROBES) -> str | None:
    """The first text two tokenizers encode differently (token ids, special tokens included), if any.

    Example:
        >>> encoding_difference(transformers_tok, rebuilt_tok)  # doctest: +SKIP
        "'a  12' encodes as [64, 216, 216, 33, 34] and as [64, 253, 33, 34]"
    """
    for text in texts:
        a, b = first(text)["input_ids"], second(text)["input_ids"]
        if a != b:
            return f"{text!r} encodes as {a} and as {b}"
    return None


def load_gguf_tokenizer(gguf_path: Path) -> Any:
    """The tokenizer of a GGUF model: transformers' if it is right for the file, else rebuilt from it.

    transformers' tokenizer is kept only when it matches the file's vocabulary, chat template and
    bos/eos ids *and* encodes :data:`PROBES` exactly like the tokenizer rebuilt from the file
    (when steerlab can rebuild that kind of tokenizer). Otherwise the rebuilt tokenizer is used.

    Raises:
        ModelLoadError: no tokenizer matches the file's vocabulary; the message names the problems.

    Example:
        >>> tok = load_gguf_tokenizer(Path("gemma-3-270m-q4_k_m.gguf"))  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    vocab = read_gguf_vocab(gguf_path)
    theirs: Any = None
    try:
        theirs = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        problem = tokenizer_mismatch(theirs, vocab)
    except Exception as exc:  # any failure of transformers' conversion means: rebuild it
        problem = f"transformers could not convert it ({type(exc).__name__}: {exc})"
    try:
        ours = build_tokenizer(vocab)
    except ModelLoadError as exc:
        if problem is None:  # a kind of tokenizer steerlab cannot rebuild: trust the checked one
            return theirs
        raise ModelLoadError(f"{exc} (transformers' own conversion: {problem})") from exc
    our_problem = tokenizer_mismatch(ours, vocab)
    if our_problem is None and _never_unknown(vocab):
        our_problem = _round_trip_failure(ours)
    if our_problem is not None:
        if problem is None:
            return theirs
        raise ModelLoadError(
            f"{gguf_path.name}: transformers' tokenizer does not match the file ({problem}), and neither does "
            f"the one rebuilt from the GGUF vocabulary ({our_problem}). Load the original Hugging Face "
            "checkpoint instead."
        )
    if problem is None:
        problem = encoding_difference(theirs, ours)
        if problem is None:
            return theirs
        problem = f"transformers' and the file's tokenizer disagree: {problem}"
    logger.info("%s: using the tokenizer rebuilt from the GGUF vocabulary (%s)", gguf_path.name, problem)
    return ours
