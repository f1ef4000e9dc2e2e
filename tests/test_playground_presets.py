"""The playground's presets in a real headless Chromium (as tests/test_playground.py drives it).

With a setting made for stories260K the page lists the frontier's winners by their labels; picking
one fills its vector's row (coefficient, operator) and leaves only that row on, and the steered
column is the library's continuation with that steering. With the packaged setting (made for the
default model) the page says why there are no presets and still generates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import steerlab
from steerlab.evaluate.demo_run import demo_rows

from .test_playground import CHROMIUM, CHROMIUM_ARGS, PROMPT
from .test_serve_presets import STORIES_SETTING, served

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_playground_presets_fill_a_row_and_steer(lm: steerlab.LM, vec: steerlab.SteeringVector, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from tests.test_serve import KEY, ServerThread

    store = tmp_path / "store"
    vec.save(store / "happy")
    sad_row = demo_rows(lm, STORIES_SETTING.directions)[2]
    assert sad_row is not None
    want = steerlab.generate(lm, PROMPT, steering=dataclasses.replace(sad_row, kl_cap=None), max_new_tokens=16)[0]
    assert want != steerlab.generate(lm, PROMPT, max_new_tokens=16)[0]

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            # a setting made for this model: its presets, by label
            with ServerThread(served(lm, store, STORIES_SETTING)) as srv:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"{srv.url}/")
                page.fill("#api-key", KEY)
                page.press("#api-key", "Tab")
                page.wait_for_selector("#preset option[value=sad]", state="attached")
                page.wait_for_selector("[data-vector=preset-sad] select.operator")  # listed once built
                labels = page.eval_on_selector_all("#preset option", "els => els.map(e => e.textContent)")
                assert labels[1] == "happy (frontier winner: pca_diff L1-3 c=+2.5, held-out 0.60 at 1.10x)"
                assert labels[2].startswith("sad (frontier winner: mean_diff (add_norm_preserving) L1-3 c=-12")
                assert labels[2].endswith("without its KL cap: this server cannot apply one")
                page.check("#use-happy")  # picked before: the preset turns it off

                page.select_option("#preset", "sad")
                assert page.is_checked("#use-preset-sad") and not page.is_checked("#use-happy")
                assert not page.is_checked("#use-preset-happy")
                assert page.input_value("[data-vector=preset-sad] input[type=range]") == "-12"
                assert page.input_value("[data-vector=preset-sad] select.operator") == "add_norm_preserving"
                info = page.inner_text("#preset-info")
                assert info.startswith(labels[2]) and "source: frontier report" in info
                assert "KL cap" in (page.get_attribute("#preset-info", "title") or "")

                page.fill("#prompt", PROMPT)
                page.fill("#max-tokens", "16")
                page.click("#generate")
                page.wait_for_function(
                    "['status-base', 'status-steer']"
                    ".every(id => document.getElementById(id).textContent.startsWith('done'))",
                    timeout=60_000,
                )
                assert page.inner_text("#out-steer") == PROMPT + want
                assert page.inner_text("#steer-desc") == "preset-sad -12.0 (add_norm_preserving)"
                page.screenshot(path=str(tmp_path / "presets.png"), full_page=True)
                assert not errors, errors

            # the packaged setting on stories260K: no presets, the reason, and the page still works
            with ServerThread(served(lm, tmp_path / "other")) as srv:
                page = browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(f"{srv.url}/")
                page.fill("#api-key", KEY)
                page.press("#api-key", "Tab")
                page.wait_for_function("document.getElementById('preset-info').dataset.reason")
                assert page.is_disabled("#preset")
                assert "outside stories260K's 5 layers" in page.inner_text("#preset-info")
                page.fill("#max-tokens", "8")
                page.click("#generate")
                page.wait_for_function(
                    "document.getElementById('status-base').textContent.startsWith('done')", timeout=60_000
                )
                assert "pick at least one vector" in page.inner_text("#status-steer")
                assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "presets.png").stat().st_size > 10_000
