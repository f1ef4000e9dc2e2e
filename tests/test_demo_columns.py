"""``steerlab demo`` on the default model: its happy column must read happier than the baseline and
its sad column sadder (mean VADER compound over the 24 demo openings ``steerlab.data.demo.OPENINGS``,
the first three of which the demo prints, with the packaged setting, as ``steerlab demo`` builds it:
:mod:`steerlab.evaluate.demo_run`). Greedy decoding, so the texts are fixed for a given model and
machine; the means measured are in docs/results/demo_columns.json. It can fail: with the setting
packaged before (vectors of another pair set) the happy column read +0.29 against the baseline's
+0.40. Over the three printed prompts alone the happy column still reads below the baseline
(+0.11 against +0.56: their baseline continuations are already cheerful), which this test does not
claim."""

from __future__ import annotations

import pytest

import steerlab
from steerlab.data.demo import OPENINGS
from steerlab.data.demo_setting import load_demo_setting
from steerlab.evaluate.demo_run import column_sentiment, demo_columns, demo_rows


@pytest.mark.slow
def test_demo_columns_read_happy_and_sad() -> None:
    lm = steerlab.load_model("default")
    setting = load_demo_setting()
    columns = demo_columns(lm, list(OPENINGS), demo_rows(lm, setting.directions))
    mean = column_sentiment(columns)
    assert mean["positive"] > mean["baseline"] > mean["negative"], (mean, columns)
