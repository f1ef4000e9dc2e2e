"""Data loading: what steerlab reads, one module per kind.

* :mod:`~steerlab.data.pairs` — :class:`~steerlab.data.pairs.ContrastPair` and its builders;
* :mod:`~steerlab.data.sources` — files and datasets of pairs, read whole or streamed;
* :mod:`~steerlab.data.texts` — plain texts (prompts, neutral statements, sentence openings);
* :mod:`~steerlab.data.ab` — CAA / MMLU / TruthfulQA multiple-choice (A/B) items;
* :mod:`~steerlab.data.preference` — preference pairs for trained methods;
* :mod:`~steerlab.data.demo` and :mod:`~steerlab.data.demo_setting` — what the demo ships;
* :mod:`~steerlab.data.readers` — the one reader layer under all of them (UTF-8, limits, row names).
"""
