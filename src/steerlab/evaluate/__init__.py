"""Evaluation: does the vector move the behaviour, what does it cost, where does it break.

Every evaluation returns a :class:`~steerlab.evaluate.report.Report` subclass with
``to_json()``, ``to_markdown()``, ``plot(path)`` and ``write(out_dir)``.
"""

from __future__ import annotations

from .report import IncompleteReportError, Report

__all__ = ["IncompleteReportError", "Report"]
