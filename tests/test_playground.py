"""The playground page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Loads the page from a real uvicorn server, enters the API key, sends a prompt with a vector,
checks that the unsteered and steered columns both fill (and differ, and match the library), that
the steered column shows its perplexity ratio to the unsteered one and the slider marks where the
model breaks (both equal to the library's), uploads a vector through the form, and saves a
screenshot under pytest's tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import steerlab
from steerlab.analysis import breakdown_curve
from steerlab.data.demo import NEUTRAL
from steerlab.evaluate.likelihood import continuation_nll, perplexities

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "Once upon a time"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_playground_streams_unsteered_and_steered_side_by_side(
    lm: steerlab.LM, vec: steerlab.SteeringVector, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from steerlab.serve import ServeSettings, create_app, pack_folder
    from tests.test_serve import KEY, ServerThread

    store = tmp_path / "store"
    vec.save(store / "happy")
    (-vec).save(tmp_path / "upload" / "sad")
    archive = tmp_path / "sad.tar.gz"
    archive.write_bytes(pack_folder(tmp_path / "upload" / "sad"))
    want_base = steerlab.generate(lm, PROMPT, max_new_tokens=24)[0]
    want_steer = steerlab.generate(lm, PROMPT, steering=steerlab.Steering(vec, 4.0), max_new_tokens=24)[0]
    assert want_base != want_steer

    app = create_app(lm, store, ServeSettings(api_key=KEY))
    shot = tmp_path / "playground.png"
    with ServerThread(app) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.url}/")
            # without the key the page says so; with it, it shows the model and the vectors
            page.wait_for_function("document.getElementById('msg').textContent.includes('API key')")
            page.fill("#api-key", KEY)
            page.press("#api-key", "Tab")  # leaving the field fires its change event
            page.wait_for_function("document.getElementById('model-id').textContent === 'stories260K'")
            page.wait_for_selector("[data-vector=happy] input[type=range]")

            page.fill("#prompt", PROMPT)
            page.fill("#max-tokens", "24")
            page.eval_on_selector(
                "[data-vector=happy] input[type=range]",
                "el => { el.value = '4'; el.dispatchEvent(new Event('input')); }",
            )
            assert page.is_checked("#use-happy")
            page.click("#generate")
            page.wait_for_function(
                "['status-base', 'status-steer']"
                ".every(id => document.getElementById(id).textContent.startsWith('done'))",
                timeout=60_000,
            )
            base = page.inner_text("#out-base")
            steered = page.inner_text("#out-steer")
            assert base.startswith(PROMPT) and steered.startswith(PROMPT)
            assert base[len(PROMPT) :].strip() and steered[len(PROMPT) :].strip()
            assert base != steered
            assert base == PROMPT + want_base
            assert steered == PROMPT + want_steer
            assert "happy 4.0" in page.inner_text("#steer-desc")

            # beside the steered output: its perplexity ratio to the unsteered one (the library's)
            page.wait_for_function("document.getElementById('cost-steer').dataset.ratio")
            ratio = float(page.get_attribute("#cost-steer", "data-ratio") or "nan")
            ppl_s, ppl_u = perplexities(continuation_nll(lm, [PROMPT, PROMPT], [want_steer, want_base]))
            assert ratio == pytest.approx(ppl_s / ppl_u, rel=1e-5)
            assert "perplexity ratio ×" in page.inner_text("#cost-steer")
            # on the slider: where the model breaks, per sign (the library's breakdown curve)
            curve = breakdown_curve(lm, vec, NEUTRAL)
            want_marks = sorted(
                c
                for c in (
                    curve.breaking_point_positive,
                    None if curve.breaking_point_negative is None else -curve.breaking_point_negative,
                )
                if c is not None
            )
            assert want_marks  # this vector breaks stories260K within ±16
            page.wait_for_selector("[data-vector=happy] .break-mark")
            marks = page.eval_on_selector_all("[data-vector=happy] .break-mark", "els => els.map(e => e.dataset.coef)")
            assert sorted(float(m) for m in marks) == want_marks
            assert "breaks at" in page.inner_text("[data-vector=happy] .breaks")

            # upload a vector through the form: it appears in the list
            page.set_input_files("#upload-file", str(archive))
            page.fill("#upload-name", "sad")
            page.click("#upload-form button[type=submit]")
            page.wait_for_function("document.getElementById('upload-status').textContent.startsWith('added sad')")
            page.wait_for_selector("[data-vector=sad]")
            assert (store / "sad" / "vector.safetensors").is_file()

            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"playground screenshot: {shot}")
