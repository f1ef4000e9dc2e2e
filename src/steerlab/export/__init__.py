"""steerlab vectors and steering in the forms the vLLM steering plugins take.

* :mod:`.vllm_lens` — `vllm-lens <https://pypi.org/project/vllm-lens/>`_: vectors travel with
  each request (``apply_steering_vectors``); plain vectors at every token (``positions="all"``
  only: vllm-lens 1.3.0 places position-specific steering wrongly under vLLM >= 0.30).
* :mod:`.hotwire` — `hotwire-vllm <https://pypi.org/project/hotwire-vllm/>`_: vectors preloaded
  from ``.pt`` files, requests name them by id, layer and scale (``"all"`` or ``"generated"``);
  CUDA graphs stay on.

Both add to the output of decoder layer ``k`` (0-based), steerlab's layer ``k``. The llama.cpp
control-vector format lives on :class:`~steerlab.core.vector.SteeringVector` (``to_gguf``).
``docs/vllm.md`` cites the plugin sources line by line.

Example:
    >>> from steerlab.export import hotwire, vllm_lens
    >>> hotwire.write(vec, "hotwire_vectors", name="happy")  # doctest: +SKIP
    >>> vllm_lens.write(vec, "happy.vllm-lens.json")  # doctest: +SKIP
"""

from . import hotwire, vllm_lens
from .common import PluginUnsupported, steerings_of

FORMATS = ("gguf", "vllm-lens", "hotwire")
"""The export formats of ``steerlab export``."""

__all__ = ["FORMATS", "PluginUnsupported", "hotwire", "steerings_of", "vllm_lens"]
