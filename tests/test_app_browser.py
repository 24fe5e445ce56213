"""The page in a real browser: Debian's chromium driven by Playwright (no browser is downloaded).

The server runs in this process on a free loopback port, over the tiny offline pipeline, with an
outputs folder. Screenshots go to ``$NEGSCHEDULE_ARTIFACTS`` (default: a pytest temporary folder).
Needs ``apt-get install -y chromium`` (``/usr/bin/chromium``; ``NEGSCHEDULE_CHROMIUM`` overrides
the path) and ``pip install playwright gradio``; without them the tests skip and say why.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("NEGSCHEDULE_CHROMIUM", "/usr/bin/chromium")
# Headless, offline, quiet: nothing the browser starts may reach the network or a GPU.
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

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium); "
    "Playwright's own browser download is not used",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the Playwright driver: pip install playwright")
pytest.importorskip("gradio", reason="needs gradio: pip install gradio")

from negschedule.app import ServeConfig, UI, build_app, launch  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("NEGSCHEDULE_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("ui-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def pipe():
    """The tiny offline pipeline (fast); NEGSCHEDULE_UI_TEST_MODEL=default serves the embedded default (docs screenshots)."""
    if os.environ.get("NEGSCHEDULE_UI_TEST_MODEL") == "default":
        from negschedule import load_pipeline

        return load_pipeline()
    from negschedule.tiny import build_tiny_sd

    return build_tiny_sd(seed=0)


@pytest.fixture(scope="module")
def size(pipe) -> int:
    """The model's own image width: what comes back to the browser, unscaled."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


@pytest.fixture(scope="module")
def server(tmp_path_factory, pipe):
    outputs = tmp_path_factory.mktemp("outputs")
    config = ServeConfig(port=free_port(), outputs_dir=outputs)
    demo = build_app(UI(config, default_pipe=pipe))
    launch(demo, config, block=False)
    yield f"http://127.0.0.1:{config.port}/", outputs
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(server[0], wait_until="domcontentloaded")
    page.wait_for_selector("#ns-generate")
    yield page
    page.close()


def shown(size: int, min_tile: int) -> int:
    """The width of one tile of a labelled row (images.upscale: whole-number nearest-neighbour factor)."""
    from PIL import Image

    from negschedule.images import upscale

    return upscale(Image.new("RGB", (size, size)), min_tile).width


def set_number(page, elem_id: str, value) -> None:
    """Type into a slider's number box and leave it, as a user does."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def fill_text(page, elem_id: str, value: str) -> None:
    """Type into a text box and leave it, then wait until the box holds ``value``.

    A freshly shown tab's boxes can still be settling when the first keystrokes arrive; a click
    right after a fill that did not take runs with the default (a sweep of the default starts
    once gave a 6-column grid here), so the value is read back before going on.
    """
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.wait_for(state="visible")
    for _ in range(3):
        box.fill(value)
        box.press("Tab")
        page.wait_for_timeout(100)  # long enough for a box that was still mounting to reset itself
        if box.input_value() == value:
            return
    raise AssertionError(f"#{elem_id} did not keep {value!r}: it holds {box.input_value()!r}")


def loaded_images(page, selector: str, count: int) -> list[int]:
    """Wait until ``count`` images under ``selector`` have loaded; their natural widths."""
    page.wait_for_function(
        "([sel, n]) => { const imgs = [...document.querySelectorAll(sel)];"
        " return imgs.length >= n && imgs.slice(0, n).every(i => i.complete && i.naturalWidth > 0); }",
        arg=[selector, count],
    )
    return page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")


def test_generate_shows_the_image_its_steps_and_saves_it(page, server, artifacts, size):
    from PIL import Image

    set_number(page, "ns-steps", 8)
    # The step sliders follow N: their range is now 0..8 and the window ends at the last step.
    page.wait_for_function("document.querySelector('#ns-end input[type=number]').value === '8'")
    assert page.locator("#ns-start input[type=range]").get_attribute("max") == "8"
    set_number(page, "ns-start", 2)
    page.locator("#ns-show-steps input").check()
    page.click("#ns-generate")
    page.wait_for_function("document.querySelector('#ns-status').innerText.includes(\"steps 2-7: 'blue square'\")")
    assert loaded_images(page, "#ns-image img", 1) == [size]  # the model's own pixels, shown large
    assert len(loaded_images(page, "#ns-steps-gallery img", 8)) >= 8
    page.screenshot(path=str(artifacts / "ui-generate.png"), full_page=True)

    fill_text(page, "ns-file-name", "from-browser")
    page.click("#ns-save")
    page.wait_for_function("document.querySelector('#ns-status').innerText.includes('saved from-browser.png')")
    saved = server[1] / "from-browser.png"
    assert "Negative start: 2" in Image.open(saved).text["parameters"]

    fill_text(page, "ns-file-name", "../escaped.png")
    page.click("#ns-save")
    page.get_by_text(re.compile(r"file_name='\.\./escaped\.png'")).first.wait_for()
    assert not (server[1].parent / "escaped.png").exists()
    assert sorted(p.name for p in server[1].iterdir()) == ["from-browser.png"]


def test_compare_brings_back_three_images(page, artifacts, size):
    page.get_by_role("tab", name="compare").click()
    page.locator("#ns-compare-show-steps input").check()
    page.click("#ns-compare")
    assert loaded_images(page, "#ns-compare-row img", 1) == [3 * shown(size, 256)]
    assert len(loaded_images(page, "#ns-compare-gallery img", 3)) >= 3
    assert loaded_images(page, "#ns-compare-steps img", 1) == [20 * shown(size, 64)]  # a column per step
    page.wait_for_function("document.querySelector('#ns-compare-status').innerText.includes('3 runs')")
    page.screenshot(path=str(artifacts / "ui-compare.png"), full_page=True)


def test_auto_start_greys_the_slider_and_compares_at_the_step_it_chose(page, artifacts, size):
    page.locator("#ns-start-rule input").click()
    page.get_by_role("option", name="auto: guidance alignment").click()
    page.wait_for_function("document.querySelector('#ns-start input[type=range]').disabled")
    page.get_by_role("tab", name="compare").click()
    page.click("#ns-compare")
    assert loaded_images(page, "#ns-compare-row img", 1) == [3 * shown(size, 256)]
    page.wait_for_function("document.querySelector('#ns-compare-status').innerText.includes('auto (alignment) chose step')")
    page.screenshot(path=str(artifacts / "ui-compare-auto.png"), full_page=True)


def test_sweep_brings_back_a_grid(page, artifacts, size):
    page.get_by_role("tab", name="sweep").click()
    fill_text(page, "ns-starts", "0:20:5")
    fill_text(page, "ns-seeds", "0,1")
    page.click("#ns-sweep")
    assert loaded_images(page, "#ns-grid img", 1) == [5 * shown(size, 128)]  # no negative + 4 starts
    page.wait_for_function("document.querySelector('#ns-sweep-status').innerText.includes('10 images')")
    page.screenshot(path=str(artifacts / "ui-sweep.png"), full_page=True)


def test_heatmaps_and_removal_curve_bring_back_images(page, artifacts):
    from negschedule.app import experiment

    if experiment("attention_maps") is None or experiment("removal_curve") is None:
        pytest.skip("the experiments library is not installed")
    page.get_by_role("tab", name="attention heatmaps").click()
    page.click("#ns-heatmaps")
    assert len(loaded_images(page, "#ns-heat img", 1)) == 1
    page.wait_for_function("document.querySelector('#ns-heat-status').innerText.includes('+circle, +square, -square')")
    page.screenshot(path=str(artifacts / "ui-heatmaps.png"), full_page=True)

    page.get_by_role("tab", name="removal curve").click()
    fill_text(page, "ns-curve-seeds", "0")
    page.click("#ns-curve")
    assert len(loaded_images(page, "#ns-curve-plot img", 1)) == 1
    page.wait_for_function("document.querySelector('#ns-curve-status').innerText.includes('Critical step')")
    page.screenshot(path=str(artifacts / "ui-curve.png"), full_page=True)


def test_errors_are_messages_in_a_page_that_keeps_working(page, artifacts, size):
    fill_text(page, "ns-negative", "[blue square")
    page.click("#ns-generate")
    page.get_by_text(re.compile(r"negative_prompt='\[blue square': unbalanced")).first.wait_for()
    page.wait_for_timeout(400)  # the message slides in
    page.screenshot(path=str(artifacts / "ui-error.png"))
    fill_text(page, "ns-negative", "blue square")
    page.click("#ns-generate")
    assert loaded_images(page, "#ns-image img", 1) == [size]


def test_the_server_serves_no_file_it_did_not_make(page, server):
    for path in ("gradio_api/file=/etc/passwd", "gradio_api/file=../../../../etc/passwd", "file=/etc/passwd"):
        response = page.request.get(server[0] + path)
        assert response.status != 200 or "root:" not in response.text(), path


def call_api(page, base: str, endpoint: str, data: list) -> str:
    """Call an event handler through Gradio's HTTP API, as a script would, bypassing the page; the event stream."""
    posted = page.request.post(f"{base}gradio_api/call/{endpoint}", data={"data": data})
    assert posted.status == 200, posted.text()
    return page.request.get(f"{base}gradio_api/call/{endpoint}/{posted.json()['event_id']}").text()


def test_the_api_behind_the_page_refuses_paths_too(page, server):
    core = ["a red circle", "blue square", 2, 4, False, 4, 7.5, 1, "slider", None]  # ..., seed, the start menu, the scale with the negative
    for model in ("../../etc", "/etc", "/tmp"):
        events = call_api(page, server[0], "generate_and_keep", [model, "model's own", *core, False])
        assert "event: error" in events and "event: complete" not in events, model
    events = call_api(page, server[0], "generate_and_keep", ["embedded default", "model's own", *core, False])
    assert "event: complete" in events
    for name in ("../escaped.png", "/tmp/escaped.png"):
        events = call_api(page, server[0], "save", [name])
        assert "event: error" in events and "file_name=" in events, name
    assert not any(p.name == "escaped.png" for p in server[1].parent.rglob("escaped.png"))
    assert not Path("/tmp/escaped.png").exists()
