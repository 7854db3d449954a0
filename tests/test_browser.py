"""The drawing pad app as users meet it: `make app`'s page served by Voilà, drawn on in a real Chromium.

Needs Debian's Chromium (`apt-get install chromium`; .ci/run installs it). Playwright drives it
through `executable_path`, so Playwright's own browser download is never used.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS
from PIL import Image
from traitlets.config import PyFileConfigLoader

from digitlib.pen import CANVAS_SIZE, PEN_WIDTH

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app"  # what `make app` serves, with the same working folder and JUPYTER_PATH
APP_CONFIG = PyFileConfigLoader("voila.py", path=str(APP)).load_config()  # what Voilà reads there
VIEWPORT = {"width": 1280, "height": 800}
PAGE_TIMEOUT_MS = 120_000  # a fresh kernel imports torch and loads both models before the pad shows
SERVER_TIMEOUT_S = 60
# The app's own culling settings (app/voila.py) wait up to a minute; the test shortens the two
# numbers on the command line (which beats the file) to stay quick, and keeps everything else.
CULL_IDLE_TIMEOUT_S, CULL_INTERVAL_S = 10, 2
KERNEL_ID_JS = "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"

if CHROMIUM is None:
    pytest.skip("Chromium is not installed (no /usr/bin/chromium and no `chromium` on PATH)", allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stderr_tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def app_server(trained_checkpoints, tmp_path):
    """The app served by Voilà as `make app` serves it, on a free local port, its models the small
    trained checkpoints and its kernels culled after CULL_IDLE_TIMEOUT_S.

    Yields (url, Voilà's process, log path). Voilà and its kernels run in their own process
    group, which the finalizer ends whatever happened."""
    port = free_port()
    voila = Path(sys.executable).with_name("voila")
    env = {**os.environ, "DIGITLIB_SMOKE": "0", "DIGITLIB_MODELS": str(trained_checkpoints["cnn"].parent),
           "JUPYTER_PATH": str(APP / "jupyter")}
    log_path = tmp_path / "voila.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(voila), "drawing_pad.ipynb", "--no-browser", f"--port={port}",
             f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_TIMEOUT_S}",
             f"--MappingKernelManager.cull_interval={CULL_INTERVAL_S}"],
            cwd=APP, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while True:
            assert server.poll() is None, f"Voilà exited with {server.returncode}:\n{stderr_tail(log_path)}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"Voilà did not answer on {url}:\n{stderr_tail(log_path)}"
                time.sleep(0.25)
        yield url, server, log_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # Voilà and the kernels it started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def dark_pixels(image: Image.Image) -> np.ndarray:
    """True where a screenshot is ink-dark (the pad's 1px grey border is not)."""
    return np.asarray(image.convert("L")) < 100


def host(url: str) -> str | None:
    """The host a request went to; None for data: URLs, which go nowhere. A blob: URL names its origin."""
    if url.startswith("data:"):
        return None
    return urlsplit(url.removeprefix("blob:")).hostname


def kernel_state(base_url: str, kernel_id: str) -> dict | None:
    """Voilà's record of a kernel (/api/kernels/<id>: state, connections), None once it is gone."""
    try:
        with urllib.request.urlopen(f"{base_url}api/kernels/{kernel_id}", timeout=5) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def kernel_processes(server: subprocess.Popen, kernel_id: str) -> list[psutil.Process]:
    """The kernel's process among Voilà's children (its connection file is named after the id)."""
    processes = []
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            if any(kernel_id in argument for argument in child.cmdline()):
                processes.append(child)
        except psutil.NoSuchProcess:
            pass
    return processes


def draw(page, canvas, stroke: list[tuple[float, float]]) -> None:
    """Press, drag through the points (pad coordinates, 0-280), release: as a hand draws."""
    box = canvas.bounding_box()
    scale = box["width"] / (CANVAS_SIZE + 2)  # CSS pixels per pad pixel; the pad has a 1px border

    def on_page(x: float, y: float) -> tuple[float, float]:
        return box["x"] + (1 + x) * scale, box["y"] + (1 + y) * scale

    page.mouse.move(*on_page(*stroke[0]))
    page.mouse.down()
    for point in stroke[1:]:
        page.mouse.move(*on_page(*point), steps=3)
    page.mouse.up()


def shown_digit(page, label, tmp_path: Path, errors: list[str], log_path: Path, name: str) -> str:
    try:
        # A digit, followed by "?" when the pad doubts it is one (still the digit the models read).
        label.filter(has_text=re.compile(r"^\s*\d\s*\??\s*$")).wait_for(timeout=30_000)
    except Exception as error:
        page.screenshot(path=tmp_path / f"no_digit_{name}.png")
        raise AssertionError(
            f"no digit after drawing a {name}; the label says {label.inner_text()!r}; browser errors: {errors}\n"
            f"Voilà log:\n{stderr_tail(log_path)}") from error
    return label.inner_text().strip().rstrip("?").strip()


def inside_viewport(box: dict | None) -> bool:
    return bool(box) and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"] and (
        box["y"] + box["height"] <= VIEWPORT["height"])


def assert_ink_of_the_one(blank: Image.Image, drawn: Image.Image, cleared: Image.Image) -> None:
    """Screenshots of the pad: paper before, the ONE stroke and nothing else after, paper after Clear."""
    assert not dark_pixels(blank).any(), "the pad showed ink before anything was drawn"
    ink = dark_pixels(drawn)
    scale = drawn.width / (CANVAS_SIZE + 2)  # screenshot pixels per pad pixel
    middle = round(drawn.width / 2)
    half_band = round(PEN_WIDTH * scale)  # the pen stays well inside +-PEN_WIDTH of the stroke
    stroke_rows = slice(round(0.2 * drawn.height), round(0.8 * drawn.height))
    along_stroke = ink[stroke_rows, middle - half_band : middle + half_band]
    # The pen over 60 % of a 280px pad inks about PEN_WIDTH x 168 px; anti-aliasing eats a little.
    assert along_stroke.sum() > 0.7 * PEN_WIDTH * 168 * scale**2, f"only {along_stroke.sum()} dark pixels on the stroke"
    assert along_stroke.any(axis=1).all(), "the stroke has gaps"
    away = ink.copy()
    away[:, middle - half_band : middle + half_band] = False
    frame = round(4 * scale)  # the border, and the focus ring Chromium draws once the pad is clicked
    assert away[frame:-frame, frame:-frame].sum() == 0, f"{away.sum()} dark pixels away from the stroke"
    assert not dark_pixels(cleared)[frame:-frame, frame:-frame].any(), "Clear left ink on the pad"


ONE = [(140.0, y) for y in np.linspace(0.2 * CANVAS_SIZE, 0.8 * CANVAS_SIZE, 13)]  # straight down the middle
ZERO = [(140 + 65 * np.sin(a), 140 - 100 * np.cos(a)) for a in np.linspace(0, 2 * np.pi, 40)]  # clockwise loop


def open_app(context, url: str, requested: list[str], errors: list[str]):
    """A new tab on the app; its websockets go to ``requested``, its script errors to ``errors``."""
    page = context.new_page()
    page.on("websocket", lambda websocket: requested.append(websocket.url))
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error.message}\n{error.stack}"))
    page.on("console", lambda message: message.type == "error" and errors.append(
        f"console error: {message.text} at {message.location.get('url')}"))
    page.goto(url, wait_until="commit", timeout=PAGE_TIMEOUT_MS)  # Voilà streams the page
    return page


def wait_for_pad(page, tmp_path: Path, log_path: Path) -> str:
    """Wait until the page shows an empty pad, ready to draw on; returns the page's kernel id."""
    try:
        page.locator(".digitlib-app canvas").wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
        page.locator(".digitlib-prediction").get_by_text("draw a digit").wait_for(timeout=PAGE_TIMEOUT_MS)
    except Exception as error:
        page.screenshot(path=tmp_path / "not_ready.png", full_page=True)
        raise AssertionError(f"the pad did not appear: {error}\nVoilà log:\n{stderr_tail(log_path)}") from error
    page.wait_for_timeout(500)  # let on_client_ready paint the paper
    return page.evaluate(KERNEL_ID_JS)


def seconds_until_gone(url: str, server: subprocess.Popen, kernel_ids: list[str], limit: float) -> dict[str, float]:
    """How long each kernel took to disappear from Voilà's records and from the processes."""
    start, gone = time.monotonic(), {}
    while len(gone) < len(kernel_ids):
        waited = time.monotonic() - start
        assert waited < limit, f"kernels still running after {waited:.0f} s: {set(kernel_ids) - set(gone)}"
        for kernel_id in set(kernel_ids) - set(gone):
            if kernel_state(url, kernel_id) is None and not kernel_processes(server, kernel_id):
                gone[kernel_id] = waited
        time.sleep(0.5)
    return gone


def test_app_fits_one_window_reads_two_digits_and_ends_the_kernels_of_closed_pages(app_server, tmp_path):
    url, server, log_path = app_server
    cull = APP_CONFIG.MappingKernelManager
    # What `make app` runs with: a vanished page's kernel is gone within a minute, an open one never culled.
    assert cull.cull_connected is False and cull.cull_idle_timeout + cull.cull_interval <= 60, cull

    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.on("request", lambda request: requested.append(request.url))
            page = open_app(context, url, requested, errors)
            idle_visitor = open_app(context, url, requested, errors)  # a second visitor, who only looks
            kernel_id = wait_for_pad(page, tmp_path, log_path)
            app = page.locator(".digitlib-app")
            canvas = app.locator("canvas")
            label = app.locator(".digitlib-prediction")
            model_view = app.locator("img.widget-image")  # the 28x28 picture the model saw

            # The whole app in the first 1280x800 window, and nothing else on the page.
            parts = {"pad": canvas, "Clear": page.get_by_role("button", name="Clear"),
                     "model choice": app.locator(".widget-toggle-buttons"), "digit": label,
                     "28x28 view": model_view, **{f"bar {i}": bar for i, bar in enumerate(
                         app.locator(".widget-hprogress").all())}}
            assert len(parts) == 15, f"expected ten bars, found {len(parts) - 5}"
            outside = {name: box for name, part in parts.items() if not inside_viewport(box := part.bounding_box())}
            assert not outside and page.evaluate("() => window.scrollY") == 0, f"outside the first window: {outside}"
            assert page.locator(".jp-InputArea, .jp-InputPrompt, .jp-CodeMirrorEditor, pre").count() == 0
            text = page.locator("body").inner_text()
            assert not re.search(r"\bimport\b|digitlib|PosixPath|\.ipynb|\.pt\b|/\w+/", text), text

            blank = Image.open(io.BytesIO(canvas.screenshot()))
            blank_view = np.asarray(Image.open(io.BytesIO(model_view.screenshot())).convert("L"))
            draw(page, canvas, ONE)
            first = shown_digit(page, label, tmp_path, errors, log_path, "one")
            page.wait_for_timeout(300)  # the last segments reach the canvas after the prediction
            drawn = Image.open(io.BytesIO(canvas.screenshot()))
            drawn_view = np.asarray(Image.open(io.BytesIO(model_view.screenshot())).convert("L"))
            page.screenshot(path=tmp_path / "app.png")
            page.get_by_role("button", name="Clear").click()
            label.get_by_text("draw a digit").wait_for(timeout=30_000)
            page.wait_for_timeout(300)
            cleared = Image.open(io.BytesIO(canvas.screenshot()))

            # Both pages stay open and idle for longer than the culling time: their kernels must stay.
            idle_kernel_id = wait_for_pad(idle_visitor, tmp_path, log_path)
            page.wait_for_timeout((CULL_IDLE_TIMEOUT_S + 2 * CULL_INTERVAL_S) * 1000)
            alive = {kernel: kernel_state(url, kernel) for kernel in (kernel_id, idle_kernel_id)}
            draw(page, canvas, ZERO)
            second = shown_digit(page, label, tmp_path, errors, log_path, "zero")

            # Leaving a page makes it ask the server to shut its kernel down (beforeunload). Closing one
            # without beforeunload is what a crashed browser or a lost network does: only culling helps.
            idle_visitor.close()
            page.goto("about:blank")
            gone_after = seconds_until_gone(url, server, [kernel_id, idle_kernel_id],
                                            limit=CULL_IDLE_TIMEOUT_S + CULL_INTERVAL_S + 15)
        finally:
            browser.close()

    assert not errors, "\n".join(errors)
    elsewhere = sorted({address for address in requested if host(address) not in (None, "127.0.0.1")})
    assert not elsewhere, f"requests to other hosts: {elsewhere}"
    assert all(state and state["connections"] >= 1 for state in alive.values()), f"open pages' kernels: {alive}"
    assert (first, second) == ("1", "0"), f"the pad read the drawn 1 and 0 as {first} and {second}"
    culled = set(re.findall(r"Culling .* \(([0-9a-f-]{36})\)", log_path.read_text()))
    # Shut down on leaving, long before the culler could have: the page's request was accepted.
    assert kernel_id not in culled and gone_after[kernel_id] < CULL_IDLE_TIMEOUT_S, (
        f"the left page's kernel went after {gone_after[kernel_id]:.1f} s, culled: {kernel_id in culled}")
    assert idle_kernel_id in culled, f"the closed page's kernel went after {gone_after[idle_kernel_id]:.1f} s unculled"

    assert_ink_of_the_one(blank, drawn, cleared)
    # The 28x28 view is black until a digit is drawn, then shows it in white (its element screenshot can
    # take in a column of the white page at a fractional position: compare the inside).
    blank_view, drawn_view = blank_view[2:-2, 2:-2], drawn_view[2:-2, 2:-2]
    assert blank_view.max() < 50 and (drawn_view > 200).sum() > 0.01 * drawn_view.size, "the 28x28 view"
