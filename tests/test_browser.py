"""The drawing pad as users meet it: notebook 05 served by Voilà, drawn on in a real Chromium.

Needs Debian's Chromium (`apt-get install chromium`; .ci/run installs it). Playwright drives it
through `executable_path`, so Playwright's own browser download is never used.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlib.drawing import PEN_WIDTH

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_drawing_pad.ipynb"
CHROMIUM = next(
    (path for path in ("/usr/bin/chromium", shutil.which("chromium")) if path and os.access(path, os.X_OK)), None
)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGE_TIMEOUT_MS = 120_000  # the kernel runs the whole notebook before the page shows the pad
SERVER_TIMEOUT_S = 60

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
def voila_url(trained_checkpoints, tmp_path):
    """Notebook 05 served by Voilà on a free local port, its models the small trained checkpoints.

    Yields (url, stderr log path). Voilà and its kernels run in their own process group, which
    the finalizer ends whatever happened."""
    port = free_port()
    voila = Path(sys.executable).with_name("voila")
    env = {**os.environ, "DIGITLIB_SMOKE": "1", "DIGITLIB_MODELS": str(trained_checkpoints["cnn"].parent),
           "DIGITLIB_FIGURES": str(tmp_path / "figures")}  # the notebook's figures stay out of build/
    log_path = tmp_path / "voila.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(voila), str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
        yield url, log_path
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


def test_drawing_a_one_in_voila_shows_ink_and_reads_it(voila_url, tmp_path):
    url, log_path = voila_url
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("pageerror", lambda error: errors.append(f"pageerror: {error.message}\n{error.stack}"))
            page.on("console", lambda message: message.type == "error" and errors.append(
                f"console error: {message.text} at {message.location.get('url')}"))
            page.goto(url, wait_until="commit", timeout=PAGE_TIMEOUT_MS)  # Voilà streams the page

            canvas = page.locator("canvas").first  # the pad's; the page has no other canvas
            label = page.locator(".digitlib-prediction")
            try:
                canvas.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
                label.get_by_text("draw a digit").wait_for(timeout=PAGE_TIMEOUT_MS)
            except Exception as error:
                page.screenshot(path=tmp_path / "not_ready.png", full_page=True)
                raise AssertionError(f"the pad did not appear: {error}\nVoilà log:\n{stderr_tail(log_path)}") from error
            page.wait_for_timeout(500)  # let on_client_ready paint the paper
            blank = Image.open(io.BytesIO(canvas.screenshot()))
            errors_before = len(errors)

            # A vertical 1 down the middle of the pad, as a hand draws it: press, drag, release.
            box = canvas.bounding_box()
            x = box["x"] + box["width"] / 2
            top, bottom = box["y"] + 0.2 * box["height"], box["y"] + 0.8 * box["height"]
            page.mouse.move(x, top)
            page.mouse.down()
            for y in np.linspace(top, bottom, 13)[1:]:
                page.mouse.move(x, y, steps=3)
            page.mouse.up()

            try:
                label.filter(has_text=re.compile(r"^\s*\d\s*$")).wait_for(timeout=30_000)
            except Exception as error:
                page.screenshot(path=tmp_path / "no_digit.png", full_page=True)
                raise AssertionError(
                    f"no digit after drawing; the label says {label.inner_text()!r}; browser errors: {errors}\n"
                    f"Voilà log:\n{stderr_tail(log_path)}") from error
            page.wait_for_timeout(300)  # the last segments reach the canvas after the prediction
            drawn = Image.open(io.BytesIO(canvas.screenshot()))
            page.screenshot(path=tmp_path / "drawing_pad.png", full_page=False)
            digit = label.inner_text().strip()

            page.get_by_role("button", name="Clear").click()
            label.get_by_text("draw a digit").wait_for(timeout=30_000)
            page.wait_for_timeout(300)
            cleared = Image.open(io.BytesIO(canvas.screenshot()))
        finally:
            browser.close()

    uncaught = [error for error in errors if error.startswith("pageerror")]
    canvas_errors = [error for error in errors[errors_before:] if "canvas" in error.lower()]
    assert not uncaught and not canvas_errors, "\n".join(uncaught + canvas_errors)
    assert not dark_pixels(blank).any(), "the pad showed ink before anything was drawn"

    ink = dark_pixels(drawn)
    scale = drawn.width / box["width"]  # screenshot pixels per CSS pixel
    middle = round(drawn.width / 2)
    half_band = round(PEN_WIDTH * scale)  # the pen stays well inside +-PEN_WIDTH of the stroke
    stroke_rows = slice(round(0.2 * drawn.height), round(0.8 * drawn.height))
    along_stroke = ink[stroke_rows, middle - half_band : middle + half_band]
    # The pen over 60 % of a 280px pad inks about PEN_WIDTH x 168 px; anti-aliasing eats a little.
    assert along_stroke.sum() > 0.7 * PEN_WIDTH * 168 * scale**2, (
        f"only {along_stroke.sum()} dark pixels along the stroke"
    )
    assert along_stroke.any(axis=1).all(), "the stroke has gaps"
    outside = ink.copy()
    outside[:, middle - half_band : middle + half_band] = False
    frame = round(4 * scale)  # the border, and the focus ring Chromium draws once the pad is clicked
    outside = outside[frame:-frame, frame:-frame]
    assert outside.sum() == 0, f"{outside.sum()} dark pixels away from the stroke"
    assert digit == "1", f"the pad read the drawn 1 as {digit}"
    assert not dark_pixels(cleared)[frame:-frame, frame:-frame].any(), "Clear left ink on the pad"
