"""The frontier's winners as presets of the server (``GET /v1/presets``): the steering
``steerlab demo`` shows (:mod:`steerlab.data.demo_setting`: per direction the method, layers,
signed coefficient, operator and KL cap a frontier run chose), ready to fill a row of the
playground.

Each direction's vector is built as the demo builds it (:func:`steerlab.evaluate.demo_run.demo_rows`:
extracted on the persona pairs of the demo's openings) and put in the vector store as
``preset-happy`` / ``preset-sad`` (:data:`NAMES`), marked in its metadata (``meta["preset"]``) so a
later start finds it there and builds nothing; a vector of the store of that name that is not a
preset (uploaded by someone) is never replaced: that preset is left out, with the reason.

Built once, lazily, in a thread of its own under the engine's model lock (generation waits for it,
as for a breakdown curve, :mod:`steerlab.serve.cost`): the first ``GET /v1/presets`` waits,
``steerlab serve`` starts it at start-up (:meth:`PresetService.future`). Presets are offered only
where the served model is the one the setting was made for (the model the setting's source names,
its layers within the model's): for another model, or a server without the model's weights (vLLM),
or ``ServeSettings(presets=False)``, the list is empty and ``reason`` says why.

A field the server refuses (``kl_cap``: :data:`~steerlab.serve.settings.KL_CAP_SERVED`) is left out
of the preset's ``steering`` entry, listed in its ``omitted`` and said in its label.

Example:
    >>> service = PresetService(lm, store, engine.model_lock)  # doctest: +SKIP
    >>> service.future().result()["data"][0]["label"]  # doctest: +SKIP
    'happy (frontier winner: pca_diff L8-19 c=+0.25, held-out 0.67 at 1.09x)'
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..core.vector import SteeringVector
from ..data.demo_setting import KEYS, DemoSetting, DirectionSetting, load_demo_setting
from ..errors import SteeringError
from ..models.load import LM
from .settings import KL_CAP_SERVED
from .store import VectorStore

log = logging.getLogger("steerlab.serve")

WORDS = {1: "happy", -1: "sad"}
"""The persona words of each direction (those :func:`~steerlab.evaluate.demo_run.demo_rows` uses)."""
NAMES = {d: f"preset-{w}" for d, w in WORDS.items()}
"""The store names of the presets' vectors."""
_MODEL_IN_SOURCE = re.compile(r"frontier on ([^\s':,;()]+)")


def setting_model(setting: DemoSetting) -> str | None:
    """The model the setting was chosen on, as its source names it (``None``: it names none).

    Example:
        >>> setting_model(load_demo_setting())
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    m = _MODEL_IN_SOURCE.search(setting.source)
    return m.group(1) if m else None


def unfit_reason(setting: DemoSetting, model_id: str, n_layers: int) -> str | None:
    """Why ``setting`` cannot steer the model ``model_id`` of ``n_layers`` layers (``None``: it can).

    Example:
        >>> for why in unfit_reason(load_demo_setting(), "stories260K", 5).split("; "):
        ...     print(why)
        the frontier's winners were chosen on HuggingFaceTB/SmolLM2-135M-Instruct, not stories260K
        they steer layers 8-19, outside stories260K's 5 layers
    """
    why = []
    made_for = setting_model(setting)
    if made_for is not None and made_for != model_id:
        why.append(f"the frontier's winners were chosen on {made_for}, not {model_id}")
    layers = sorted({k for s in setting.directions.values() for k in s.layers})
    if layers[0] < 0 or layers[-1] >= n_layers:
        span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        why.append(f"they steer layers {span}, outside {model_id}'s {n_layers} layers")
    return "; ".join(why) or None


def preset_mark(setting: DemoSetting, d: int, model_id: str) -> dict[str, Any]:
    """What a preset vector's ``meta["preset"]`` holds: the setting it was built for (a stored
    vector with this mark is reused; another mark is an older preset, rebuilt)."""
    return {"direction": KEYS[d], "model": model_id, "source": setting.source, **setting.directions[d].to_dict()}


def describe(setting: DemoSetting, d: int, vector: str | None, why: str | None = None) -> dict[str, Any]:
    """One preset as ``GET /v1/presets`` lists it (``vector=None``: not available, ``why`` says why).

    Example:
        >>> p = describe(load_demo_setting(), 1, "preset-happy")
        >>> p["label"]
        'happy (frontier winner: pca_diff L8-19 c=+0.25, held-out 0.67 at 1.09x)'
        >>> p["steering"]
        {'vector': 'preset-happy', 'coefficient': 0.25, 'operator': 'add'}
    """
    s: DirectionSetting = setting.directions[d]
    omitted: list[dict[str, str]] = []
    if s.kl_cap is not None and not KL_CAP_SERVED:
        omitted.append(
            {"field": "kl_cap", "reason": f"this server cannot apply a KL cap (the frontier's row used {s.kl_cap:g})"}
        )
    measured = []
    if s.held_out_effect is not None:
        measured.append(f"held-out {s.held_out_effect:.2f}")
    if s.held_out_cost is not None:
        measured.append(f"at {s.held_out_cost:.2f}x")
    label = f"{WORDS[d]} (frontier winner: {s.label}" + (f", {' '.join(measured)}" if measured else "") + ")"
    if omitted:
        label += " without its KL cap: this server cannot apply one"
    steering: dict[str, Any] | None = None
    if vector is not None:
        steering = {"vector": vector, "coefficient": s.coefficient, "operator": s.operator}
    return {
        "object": "steering_preset",
        "id": WORDS[d],
        "direction": KEYS[d],
        "label": label,
        "available": vector is not None,
        "reason": why,
        "vector": vector,
        "method": s.method,
        "layers": list(s.layers),
        "coefficient": s.coefficient,
        "operator": s.operator,
        "kl_cap": s.kl_cap,
        "held_out_effect": s.held_out_effect,
        "held_out_cost": s.held_out_cost,
        "source": setting.source,
        "omitted": omitted,
        "steering": steering,
    }


class PresetService:
    """The presets of one server: built once (lazily, in a thread of its own), then cached.

    Args:
        lm: the served model.
        store: the vector store the presets' vectors go in.
        lock: held while the model runs here (the engine's ``model_lock``); ``None``: no lock.
        tok_lock: held around every tokenizer call (``None``: no lock).
        setting: the setting to offer (default: the packaged demo setting).
        enabled: ``False``: offer none (``ServeSettings.presets``).
    """

    def __init__(
        self,
        lm: LM,
        store: VectorStore,
        lock: threading.Lock | None = None,
        tok_lock: threading.Lock | None = None,
        setting: DemoSetting | None = None,
        enabled: bool = True,
    ) -> None:
        self.lm = lm
        self.store = store
        self.lock: AbstractContextManager[object] = lock if lock is not None else nullcontext()
        self.tok_lock: AbstractContextManager[object] = tok_lock if tok_lock is not None else nullcontext()
        self.setting = setting
        self.enabled = enabled
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="steerlab-presets")
        self._future: concurrent.futures.Future[dict[str, Any]] | None = None
        self._guard = threading.Lock()

    def future(self) -> concurrent.futures.Future[dict[str, Any]]:
        """The presets: cached, or (re)built now in the presets thread; rebuilt when one of their
        vectors left the store (deleted or replaced) or the last build failed."""
        with self._guard:
            f = self._future
            if f is None or (f.done() and (f.exception() is not None or not self._intact(f.result()))):
                f = self._future = self._pool.submit(self._build)
            return f

    def _intact(self, listing: dict[str, Any]) -> bool:
        """Whether every available preset's vector is still the preset in the store."""
        for p in listing["data"]:
            if p["available"] and self._stored_mark(p["vector"]) is None:
                return False
        return True

    def _stored_mark(self, name: str) -> dict[str, Any] | None:
        """The ``meta["preset"]`` of the store's vector ``name`` (``None``: absent or not a preset)."""
        try:
            mark = self.store.get(name).vector.meta.get("preset")
        except SteeringError:
            return None
        return mark if isinstance(mark, dict) else None

    def _listing(self, setting: DemoSetting | None, data: list[dict[str, Any]], reason: str | None) -> dict[str, Any]:
        return {
            "object": "list",
            "model": self.lm.model_id,
            "source": None if setting is None else setting.source,
            "made_for": None if setting is None else setting_model(setting),
            "reason": reason,
            "data": data,
        }

    def _build(self) -> dict[str, Any]:
        if not self.enabled:
            return self._listing(None, [], "presets are turned off on this server (steerlab serve --no-presets)")
        setting = self.setting if self.setting is not None else load_demo_setting()
        reason = unfit_reason(setting, self.lm.model_id, self.lm.n_layers)
        if reason is None and self.lm.device.type == "meta":
            reason = "building the presets needs the model's weights in this process; this server generates with vLLM"
        if reason is not None:
            return self._listing(setting, [], reason)
        data = [self._preset(setting, d) for d in (1, -1)]
        missing = [p["reason"] for p in data if not p["available"]]
        return self._listing(setting, data, "; ".join(missing) or None)

    def _preset(self, setting: DemoSetting, d: int) -> dict[str, Any]:
        """Direction ``d``'s preset: its stored vector, built and stored first where needed."""
        name, want = NAMES[d], preset_mark(setting, d, self.lm.model_id)
        mark = self._stored_mark(name)
        if mark == want:
            return describe(setting, d, name)
        if mark is None and name in self.store.names():
            return describe(setting, d, None, f"the store holds a vector named {name!r} that is not this preset")
        try:
            vector = self._vector(setting, d, want)
            self.store.put(name, vector, overwrite=True)  # only an older preset (or nothing) is replaced here
        except SteeringError as exc:
            log.warning("presets: %s not built: %s", name, exc)
            return describe(setting, d, None, f"{name} could not be built: {exc}")
        log.info("presets: built %s (%s)", name, setting.directions[d].label)
        return describe(setting, d, name)

    def _vector(self, setting: DemoSetting, d: int, mark: dict[str, Any]) -> SteeringVector:
        """Direction ``d``'s vector, built as ``steerlab demo`` builds it, marked as the preset."""
        import dataclasses

        from ..data.demo import OPENINGS
        from ..data.pairs import persona_pairs
        from ..evaluate.demo_run import demo_vector

        s = setting.directions[d]
        pairs = persona_pairs(WORDS[1], WORDS[-1], list(OPENINGS))
        with self.lock, self.tok_lock:  # the model lock, then the tokenizer's (the worker's order)
            vec = demo_vector(self.lm, pairs, s.method, list(s.layers))
        return dataclasses.replace(vec, meta={**vec.meta, "preset": mark})

    def close(self) -> None:
        """Stop the presets thread (a running build finishes first)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
