"""The course as a website: Sphinx + myst-nb + sphinx-book-theme (`make book`, `make book QUICK=1`).

The source folder is the repository itself (`sphinx-build -c book . build/book`), so the README,
its links to notebooks and its figures under docs/ work unchanged on the site. The pages are the
README (the front page), every notebook in notebooks/ and notebooks/solutions/, the pages in docs/
(results, command line) and CONTRIBUTING.md; the table of contents is made from those files
(book/digits_book.py), never from a list of names. Every notebook is executed through myst-nb's
cache (jupyter-cache): a rebuild executes only the notebooks whose code changed. Nothing on the
pages comes from another host.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
sys.path.insert(0, str(BOOK))  # digits_book, the book's own extension

# Quick mode is the notebooks' own switch (DIGITLIB_SMOKE=1, which their kernels inherit).
QUICK = os.environ.get("DIGITLIB_SMOKE", "").strip().lower() in {"1", "true", "yes", "on"}
MODE = "quick" if QUICK else "full"
# The figures the notebooks save (dl.plots.save_figure) and the pad's still: build/figures in full
# mode, as `make course` writes them; a quick build keeps its own, so it never replaces full ones.
os.environ["DIGITLIB_FIGURES"] = str(ROOT / "build" / ("figures-quick" if QUICK else "figures"))

project = "digits"
author = "the digits course"
copyright = "the digits course, MIT licence"
html_title = "digits: handwritten digits with PyTorch" + (" (quick mode)" if QUICK else "")

extensions = ["myst_nb", "digits_book"]
root_doc = "README"  # the learner README is the front page; build-finished writes index.html
# Only the course: the walk below the repository prunes the excluded folders first.
include_patterns = ["README.md", "CONTRIBUTING.md", "docs/*.md", "notebooks/*.ipynb", "notebooks/solutions/*.ipynb"]
exclude_patterns = [".venv", ".git", "build", "data", "models", "app", "tests", "tools", "digitlib", "book",
                    ".whl", ".gpu", "**/.ipynb_checkpoints"]

# --- notebooks --------------------------------------------------------------------------------------
nb_execution_mode = "cache"
nb_execution_cache_path = str(ROOT / "build" / "book-cache" / MODE)  # quick and full outputs never mix
nb_execution_timeout = -1  # full mode trains; no limit, as `make course`
nb_execution_raise_on_error = True  # a notebook that fails fails the build, as nbval fails the tests
nb_execution_show_tb = True
nb_merge_streams = True
# ipywidgets' JavaScript would come from a CDN; the book shows widgets as stills instead (digits_book).
nb_ipywidgets_js: dict = {}
digits_quick = QUICK

# --- Markdown ---------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # the README's links to its own sections (#fashion-mnist)
html_math_renderer = "mathml"  # digits_book: LaTeX to MathML at build time, no MathJax from a CDN

# --- HTML ---------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,  # each page's source
    "navigation_with_keys": False,
}
html_last_updated_fmt = "%Y-%m-%d"
html_context = {"default_mode": "light"}  # figures have white backgrounds; the light/dark switch stays
html_favicon = "favicon.svg"  # a drawn 7; without one the browser asks for /favicon.ico, which is not there
# The README's Colab cell is IPython (!git, %cd): Pygments highlights it relaxed, as GitHub does.
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]
