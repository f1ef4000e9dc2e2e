"""From a queued :class:`~steerlab.serve.jobs.Job` to the ``vllm_xargs`` of its vLLM request.

The steering was already validated exactly as for the transformers engine (store lookup,
``max_coefficient``, layers, :class:`~steerlab.core.steering.Steering`); here it is translated to the
plugin's fields, and what the plugin cannot do is refused (:class:`PluginUnsupported`):

============================  ===========================  ===========================
steerlab                      vllm-lens                    hotwire
============================  ===========================  ===========================
constant additions (*add*)     yes                          yes
other operators               refused                      refused
``positions="all"``           yes (2-D vector)             yes
``positions="generated"``     refused (*)                  yes (``decode_only``)
``"prompt"``, windows         refused (*)                  refused
token-wise (ActAdd) vectors   refused (*)                  refused
several vectors               summed                       one per layer, else refused
============================  ===========================  ===========================

An operator is a constant addition when its ``fixed_form`` says so (``"add"``, or a registered
operator that adds ``s·v``); the others are refused with the operator's own reason.

(*) vllm-lens 1.3.0 counts every decode step from position 0 under vLLM >= 0.30
(:data:`steerlab.export.vllm_lens.POSITIONS_WHY`), so its position-specific steering lands on the
wrong tokens.

For hotwire the server also checks what it can see of the vLLM side: with ``hotwire_dir`` (the
``$HOTWIRE_VECTORS`` directory) each vector must be exported there and current, since hotwire
quietly serves an unknown id unsteered; with ``hotwire_slots`` (``$HOTWIRE_SLOTS``) requests that
would need more distinct ``(id, layer, scale)`` slots than hotwire's fixed bank holds are refused,
since past that hotwire also runs them unsteered.

Example:
    >>> t = Translator("vllm-lens", store)  # doctest: +SKIP
    >>> t.xargs(job)  # doctest: +SKIP
    {'apply_steering_vectors': '[{"activations": ...}]'}
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

from ...core.steering import SteeringLike
from ...core.vector import SteeringVector
from ...export import PluginUnsupported, hotwire, vllm_lens

PLUGINS = ("vllm-lens", "hotwire")


class _Stored(Protocol):
    @property
    def vector(self) -> SteeringVector: ...


class VectorLookup(Protocol):
    """What the translator needs of the server's store (:class:`~steerlab.serve.store.VectorStore`):
    the names, and the vector stored under a name."""

    def names(self) -> list[str]:
        """The stored names."""
        ...

    def get(self, name: str) -> _Stored:
        """The entry stored under ``name`` (raises when there is none)."""
        ...


class Translator:
    """Translates each job's steering for one plugin.

    Args:
        plugin: ``"vllm-lens"`` or ``"hotwire"``.
        store: the server's vector store (hotwire ids are store names).
        hotwire_dir: the ``$HOTWIRE_VECTORS`` directory vLLM loaded, when this machine sees it.
        hotwire_slots: ``$HOTWIRE_SLOTS`` of the vLLM server (its default is 16), or ``None``.
    """

    def __init__(
        self,
        plugin: str,
        store: VectorLookup,
        hotwire_dir: str | os.PathLike[str] | None = None,
        hotwire_slots: int | None = None,
    ) -> None:
        if plugin not in PLUGINS:
            raise ValueError(f"plugin must be one of {PLUGINS}, not {plugin!r}")
        self.plugin = plugin
        self.store = store
        self.hotwire_dir = Path(hotwire_dir) if hotwire_dir is not None else None
        self.hotwire_slots = hotwire_slots
        self._slots: set[tuple[str, int, float]] = set()
        self._lock = threading.Lock()
        self._exported: dict[Path, tuple[float, str | None]] = {}

    def xargs(self, steering: SteeringLike | None, prompt_len: int, max_tokens: int) -> dict[str, str]:
        """The request's ``vllm_xargs`` (``{}``: unsteered). ``prompt_len`` and ``max_tokens`` place
        position-specific steering; neither plugin as supported today needs them (both steer by
        span: every token, or hotwire's decode steps).

        Raises:
            PluginUnsupported: the plugin cannot express this steering (or, for hotwire, the
                vector is not exported to ``hotwire_dir`` / the slot bank would overflow).
        """
        if self.plugin == "vllm-lens":
            return vllm_lens.xargs(vllm_lens.steering_payload(steering))
        spec = hotwire.request_spec(steering, self._name_of)
        self._reserve_slots(spec)
        return hotwire.xargs(spec)

    # ------------------------------------------------------------------ hotwire
    def _name_of(self, vec: SteeringVector) -> str:
        """The store name of ``vec`` (= its hotwire id), checked against the export when possible."""
        name = next((n for n in self.store.names() if self._stored(n) is vec), None)
        if name is None:
            raise PluginUnsupported(
                "the vector changed while the request was read; retry", hotwire.PLUGIN, code="vector_changed"
            )
        if self.hotwire_dir is not None:
            self._check_export(name, vec)
        return name

    def _stored(self, name: str) -> SteeringVector | None:
        try:
            vec: SteeringVector = self.store.get(name).vector
            return vec
        except Exception:  # deleted meanwhile
            return None

    def _check_export(self, name: str, vec: SteeringVector) -> None:
        assert self.hotwire_dir is not None
        path = self.hotwire_dir / f"{name}.pt"
        found = self._exported_digest(path)
        want = hotwire.digest(vec)
        if found != want:
            why = "is not exported" if found is None else "changed since it was exported"
            raise PluginUnsupported(
                f"vector {name!r} {why} for hotwire: run `steerlab export hotwire VECTOR {self.hotwire_dir} --name "
                f"{name}` and restart vLLM (hotwire loads $HOTWIRE_VECTORS at start and serves unknown ids "
                "unsteered)",
                hotwire.PLUGIN,
                code="vector_not_exported",
            )

    def _exported_digest(self, path: Path) -> str | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            cached = self._exported.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        value = hotwire.exported_digest(path)
        with self._lock:
            self._exported[path] = (mtime, value)
        return value

    def _reserve_slots(self, spec: list[dict[str, Any]]) -> None:
        if self.hotwire_slots is None:
            return
        combos = {(str(e["id"]), int(e["layer"]), float(e["scale"])) for e in spec}
        with self._lock:
            new = combos - self._slots
            if len(self._slots) + len(new) > self.hotwire_slots:
                raise PluginUnsupported(
                    f"this request needs {len(new)} new hotwire slot(s) (one per vector, layer and coefficient) but "
                    f"{len(self._slots)} of the {self.hotwire_slots} are taken for good; hotwire would run it "
                    "unsteered. Reuse coefficients already served, or restart vLLM with a larger HOTWIRE_SLOTS",
                    hotwire.PLUGIN,
                    code="hotwire_slots_exhausted",
                )
            self._slots |= new

    def slots_used(self) -> int:
        """hotwire slots this server has used so far (``(id, layer, scale)`` combinations)."""
        with self._lock:
            return len(self._slots)
