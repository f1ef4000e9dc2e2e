"""Generation engines other than the built-in transformers batcher (:mod:`steerlab.serve.batcher`).

* :mod:`.vllm` — ``steerlab serve --engine vllm``: vLLM generates, a vLLM steering plugin
  (vllm-lens or hotwire-vllm) steers; same API, same ``steering`` field.

An engine is built by a factory ``(lm, settings, tok_lock, store) -> engine`` passed to
:func:`steerlab.serve.create_app` as ``engine=``; it offers the batcher's interface: ``submit``,
``cancel``, ``close``, ``alive``, ``snapshot`` and ``metrics``.

Example:
    >>> from steerlab.serve.engines.vllm import VLLMOptions, engine_factory  # doctest: +SKIP
    >>> create_app(lm, "vectors", engine=engine_factory(VLLMOptions(url="http://127.0.0.1:8001")))  # doctest: +SKIP
"""
