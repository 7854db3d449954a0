"""The course as a website (`make book`), built in quick mode as CI builds it and read in a real Chromium.

The build executes every notebook through the book's execution cache (build/book-cache/quick), so
after the first build a rerun executes only the notebooks whose code changed. The browser part
needs Debian's Chromium (`apt-get install chromium`; .ci/run installs it) and is skipped, with the
reason, without it; the build and the checks of its files run everywhere.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS

from digitlib.config import repo_root

pytestmark = [pytest.mark.slow]

ROOT = repo_root()
BOOK = ROOT / "build" / "book-quick"  # what `make book QUICK=1` writes
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
PAGE_TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def book() -> Path:
    """The book in quick mode, built (or brought up to date) as `make book QUICK=1` builds it."""
    pytest.importorskip("myst_nb", reason="the book extra is not installed (pip install -e '.[book]')")
    env = {**os.environ, "DIGITLIB_SMOKE": "1"}
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", "book", "-d", "build/book-doctrees/quick",
               ".", str(BOOK)]
    built = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert built.returncode == 0, f"the book did not build:\n{built.stdout[-6000:]}\n{built.stderr[-6000:]}"
    warnings = [line for line in built.stderr.splitlines() if re.search(r": (WARNING|ERROR):", line)]
    assert not warnings, "the book built with warnings:\n" + "\n".join(warnings)
    return BOOK


def book_module(name: str):
    """A module of book/ (the book's configuration is not a package)."""
    spec = importlib.util.spec_from_file_location(f"book_{name}", ROOT / "book" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_contents_come_from_the_files_and_the_front_page_names_stand_ins(tmp_path):
    pytest.importorskip("docutils", reason="the book extra is not installed (pip install -e '.[book]')")
    digits_book = book_module("digits_book")
    for name in ("notebooks/10_later.ipynb", "notebooks/02_new.ipynb", "notebooks/solutions/02_new.ipynb",
                 "docs/results.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert digits_book.pages(tmp_path) == {
        "The course": ["notebooks/02_new", "notebooks/10_later"], "Solutions": ["notebooks/solutions/02_new"],
        "Results and reference": ["docs/results"]}

    line = "no fully trained cnn at models/cnn.pt: using a small stand-in (6,000 images, 2 epochs)"
    full = {"mode": "full", "date": "2026-12-03", "standins": {"notebooks/04_evaluation": [line]}}
    text = digits_book.status_text(full)
    assert "full mode" in text and "small stand-ins" in text and "make models" in text
    assert "[04_evaluation](/notebooks/04_evaluation.ipynb)" in text
    assert "no stand-ins" in digits_book.status_text({**full, "standins": {}})
    assert "quick mode" in digits_book.status_text({**full, "mode": "quick", "standins": {}})


def page_of(notebook: Path) -> str:
    return notebook.relative_to(ROOT).with_suffix(".html").as_posix()


def test_the_book_has_every_notebook_the_front_page_and_says_how_it_was_built(book):
    missing = [page_of(notebook) for notebook in NOTEBOOKS if not (book / page_of(notebook)).is_file()]
    assert not missing, f"notebooks without a page: {missing}"
    assert (book / "index.html").is_file() and (book / "README.html").is_file() and (book / "search.html").is_file()
    status = json.loads((book / "_digits_book.json").read_text())
    assert status["mode"] == "quick", status
    front = (book / "README.html").read_text()
    assert "quick mode" in front and "Built on" in front, "the front page does not say how the book was built"
    for standin_page in status["standins"]:  # each named on the front page, with a link to it
        assert f"{standin_page}.html" in front, standin_page
    # The table of contents comes from the files: every notebook is in the front page's navigation.
    unlisted = [page_of(notebook) for notebook in NOTEBOOKS if f'href="{page_of(notebook)}"' not in front]
    assert not unlisted, f"missing from the navigation: {unlisted}"


def test_the_drawing_pad_is_a_still_with_a_note_and_no_widget_script(book):
    pads = [page for page in book.glob("notebooks/*.html") if "digits-pad-still" in page.read_text()]
    assert pads, "no page shows the still of the drawing pad"
    for page in book.rglob("*.html"):
        text = page.read_text()
        assert "application/vnd.jupyter.widget-view+json" not in text, f"{page}: a widget left that cannot run"
    text = re.sub(r"<[^>]+>", "", pads[0].read_text())  # the words, without the tags of `code`
    assert "make app" in text and "JupyterLab" in text, "the still does not say where the pad runs live"


def test_a_rebuild_executes_nothing_when_nothing_changed(book):
    """The execution cache: a second build right after the first runs no notebook."""
    env = {**os.environ, "DIGITLIB_SMOKE": "1"}
    rebuilt = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-c", "book", "-d", "build/book-doctrees/quick", ".",
         str(book)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr[-4000:]
    assert "Executing notebook" not in rebuilt.stdout + rebuilt.stderr, "a notebook was executed again"
    assert "reading sources... [100%] README" in rebuilt.stdout or "1 changed" in rebuilt.stdout, rebuilt.stdout


def test_make_figures_writes_small_figures_and_their_captions_into_the_readme(book, tmp_path):
    figures = book_module("figures")
    readme = tmp_path / "README.md"
    readme.write_text(f"# digits\n\n{figures.BEGIN}\nold\n{figures.END}\n\nthe rest\n")
    figures.main(book, docs=tmp_path / "docs", readme_path=readme)
    written = sorted((tmp_path / "docs").glob("*.png"))
    assert [path.name for path in written] == sorted(figure[1] for figure in figures.FIGURES)
    assert all(path.stat().st_size < 100_000 for path in written), {p.name: p.stat().st_size for p in written}
    text = readme.read_text()
    assert "old" not in text and text.endswith("the rest\n") and "quick-mode" in text
    assert all(f"](docs/{path.name})" in text for path in written)
    assert re.search(r"notebook \d\d", text), "the captions name no notebook"


# --- in Chromium -------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served_book(book):
    """The book over HTTP on a free local port: {"url": ..., "failed": [paths answered 404]}."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=book))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


IMAGES_JS = """async () => Promise.all([...document.images].map(async (image) => {
    image.loading = "eager";
    try { await image.decode(); } catch (error) { return image.currentSrc || image.src; }
    return image.naturalWidth > 0 ? null : (image.currentSrc || image.src);
}))"""
LINKS_JS = "() => [...document.querySelectorAll('a[href]')].map(a => a.href)"
IDS_JS = "() => [...document.querySelectorAll('[id]')].map(element => element.id)"


@pytest.mark.browser
def test_every_page_loads_with_its_images_and_links_and_nothing_from_elsewhere(served_book):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (no /usr/bin/chromium and no `chromium` on PATH)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    base = served_book
    origin = urlsplit(base).netloc
    requested: list[str] = []
    errors: list[str] = []
    broken: list[str] = []
    ids: dict[str, set[str]] = {}
    fragments: list[tuple[str, str, str]] = []  # (page, linked page, fragment)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.on("request", lambda request: requested.append(request.url))
            # A load still pending when the crawl moves to the next page is aborted (net::ERR_ABORTED, seen
            # for the favicon); a missing file answers 404, which the response check below catches.
            context.on("requestfailed", lambda request: "ERR_ABORTED" not in (request.failure or "")
                       and errors.append(f"request failed: {request.url} ({request.failure})"))
            context.on("response", lambda response: response.status >= 400 and errors.append(
                f"HTTP {response.status}: {response.url}"))
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(f"pageerror on {page.url}: {error.message}"))
            page.on("console", lambda message: message.type == "error" and errors.append(
                f"console error on {page.url}: {message.text}"))

            page.goto(base, timeout=PAGE_TIMEOUT_MS)  # index.html leads to the front page
            page.wait_for_url(re.compile(r"README\.html$"), timeout=PAGE_TIMEOUT_MS)
            queue, seen = deque([page.url]), {page.url}
            while queue:
                url = queue.popleft()
                page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
                broken += [f"{url}: image {src}" for src in page.evaluate(IMAGES_JS) if src]
                ids[url] = set(page.evaluate(IDS_JS))
                for link in page.evaluate(LINKS_JS):
                    target, fragment = urldefrag(link)
                    if urlsplit(target).netloc != origin:
                        continue  # a link out (a reference); it is not followed
                    if fragment:
                        fragments.append((url, target, fragment))
                    if target.endswith(".html") and target not in seen:
                        seen.add(target)
                        queue.append(target)
                    elif not target.endswith(".html") and target not in seen:
                        seen.add(target)
                        answer = context.request.get(target)
                        if not answer.ok:
                            broken.append(f"{url}: link to {target} answers {answer.status}")
            pages = {urlsplit(url).path.lstrip("/") for url in ids}

            # Search: the index is built and answers from the page itself.
            page.goto(urljoin(base, "search.html?q=confusion"), timeout=PAGE_TIMEOUT_MS)
            results = page.locator("#search-results li")
            results.first.wait_for(timeout=PAGE_TIMEOUT_MS)
            found = results.count()
        finally:
            browser.close()

    for url, target, fragment in fragments:
        if target in ids and fragment not in ids[target]:
            broken.append(f"{url}: link to #{fragment} of {target}, which has no such id")
    missing = [page_of(notebook) for notebook in NOTEBOOKS if page_of(notebook) not in pages]
    assert not missing, f"pages no link leads to: {missing}"
    assert not broken, "\n".join(broken)
    assert not errors, "\n".join(errors)
    elsewhere = sorted({url for url in requested if not url.startswith(("data:", "blob:"))
                        and urlsplit(url.removeprefix("blob:")).hostname != "127.0.0.1"})
    assert not elsewhere, f"requests to other hosts: {elsewhere}"
    assert found >= 1, "searching for 'confusion' found nothing"
