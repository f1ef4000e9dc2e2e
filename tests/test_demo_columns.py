"""``steerlab demo`` on the default model: its happy column must read happier than the baseline and
its sad column sadder (mean VADER compound over the demo's prompts, with the packaged setting, as
``steerlab demo`` builds it: :mod:`steerlab.evaluate.demo_run`). Greedy decoding, so the texts are
fixed for a given model and machine; the margins measured are in docs/results/demo_columns.json.
It fails when the packaged setting does not move the demo's own columns the way they are labelled."""

from __future__ import annotations

import pytest

import steerlab
from steerlab.data.demo import DEMO_PROMPTS
from steerlab.data.demo_setting import load_demo_setting
from steerlab.evaluate.demo_run import column_sentiment, demo_columns, demo_rows


@pytest.mark.slow
def test_demo_columns_read_happy_and_sad() -> None:
    lm = steerlab.load_model("default")
    setting = load_demo_setting()
    columns = demo_columns(lm, list(DEMO_PROMPTS), demo_rows(lm, setting.directions))
    mean = column_sentiment(columns)
    assert mean["positive"] > mean["baseline"] > mean["negative"], (mean, columns)
