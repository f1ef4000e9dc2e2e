"""The server's generation engines, all behind one protocol (:class:`.base.Engine`).

* :mod:`.local` — the default: the model runs in this process, one worker thread serves the
  queue (:mod:`.queue`) with one of two sibling schedulers built on a shared :mod:`.worker`:
  batch at a time (:mod:`.batch`) or continuous batching (:mod:`.continuous`); each row streams
  and samples through :mod:`.rows`.
* :mod:`.vllm` — ``steerlab serve --engine vllm``: vLLM generates, a vLLM steering plugin
  (vllm-lens or hotwire-vllm) steers; same API, same ``steering`` field.

An engine is built by an :class:`.base.EngineFactory` ``(lm, settings, tok_lock, store) -> engine``
passed to :func:`steerlab.serve.create_app` as ``engine=`` (default: :func:`.local.local_engine`).

Example:
    >>> from steerlab.serve.engines.vllm import VLLMOptions, engine_factory  # doctest: +SKIP
    >>> create_app(lm, "vectors", engine=engine_factory(VLLMOptions(url="http://127.0.0.1:8001")))  # doctest: +SKIP
"""
