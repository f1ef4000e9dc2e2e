"""steerlab vectors and steering in the forms the vLLM steering plugins take.

* :mod:`.vllm_lens` — `vllm-lens <https://pypi.org/project/vllm-lens/>`_: vectors travel with
  each request (``apply_steering_vectors``); plain vectors at every token (``positions="all"``
  only: vllm-lens 1.3.0 places position-specific steering wrongly under vLLM >= 0.30).
* :mod:`.hotwire` — `hotwire-vllm <https://pypi.org/project/hotwire-vllm/>`_: vectors preloaded
  from ``.pt`` files, requests name them by id, layer and scale (``"all"`` or ``"generated"``);
  CUDA graphs stay on.

* :mod:`.gguf` — a steering as a llama.cpp control vector (the file format itself lives on
  :class:`~steerlab.core.vector.SteeringVector`: ``to_gguf``).

Both plugins add to the output of decoder layer ``k`` (0-based), steerlab's layer ``k``.
``docs/vllm.md`` cites the plugin sources line by line. Every export asks the steering's operator
what it is (:meth:`~steerlab.core.operators.Operator.fixed_form`): all but bake carry constant
additions only, and refuse other operators with the operator's own reason.

Example:
    >>> from steerlab.export import hotwire, vllm_lens
    >>> hotwire.write(vec, "hotwire_vectors", name="happy")  # doctest: +SKIP
    >>> vllm_lens.write(vec, "happy.vllm-lens.json")  # doctest: +SKIP
"""

from . import gguf, hotwire, vllm_lens
from .common import PluginUnsupported, constant_addition, steerings_of

FORMATS = ("gguf", "vllm-lens", "hotwire")
"""The export formats of ``steerlab export``."""

__all__ = ["FORMATS", "PluginUnsupported", "constant_addition", "gguf", "hotwire", "steerings_of", "vllm_lens"]
