"""The course book's own Sphinx extension (book/conf.py): what a generic notebook site does not do.

- The table of contents is made from the notebook files (sorted by name), so renumbered or new
  notebooks need no edit here.
- The front page (the README) says how the book was built: full or quick mode, and which notebooks
  had to use small stand-ins because trained models were missing (read from their outputs).
- A widget cannot run in a static page: the drawing pad's output becomes a still of the pad reading
  a drawn 4 (through the pad's own code, with the models the notebook used), with a note that the
  pad runs live in JupyterLab or `make app`; any other widget becomes that note.
- Math becomes MathML at build time (browsers draw it natively), so no MathJax comes from a CDN.
- Cached execution stays honest: when the library, the mode or the trained models change, the
  cache is emptied and every notebook runs again (a notebook's cache key is its code alone).
- index.html leads to the front page, and _digits_book.json records the build for `make figures`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

from docutils import nodes

STANDIN_MARK = "using a small stand-in"  # what dl.zoo.load_or_train prints when it uses one
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PAD_STILL = "pad_still"  # its name among the figures (dl.plots.save_figure)
# A 4 in two strokes, as notebook 05 draws one (pad coordinates, 280 x 280).
FOUR = [[(160, 40), (70, 170), (220, 170)], [(170, 100), (170, 250)]]
LIVE_NOTE = ("The pad is a live widget, which a static page cannot run: open the notebook in JupyterLab "
             "(`make lab`), or serve the pad as an app of its own with `make app`.")


def setup(app):
    app.add_config_value("digits_quick", False, "env")
    app.connect("config-inited", check_cache)
    app.connect("env-before-read-docs", front_page_last)
    app.connect("env-get-outdated", outdated)
    app.connect("env-purge-doc", purge)
    app.connect("source-read", front_page)
    app.connect("doctree-read", static_widgets, priority=400)  # before Sphinx collects the images
    app.connect("doctree-read", note_standins)
    app.connect("build-finished", finish)
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_math_block, None))
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}


# --- the pages ---------------------------------------------------------------------------------------


def pages(srcdir: Path) -> dict[str, list[str]]:
    """The docnames of the book's parts, from the files: the course, the solutions, other pages."""
    def names(pattern: str) -> list[str]:
        return [path.relative_to(srcdir).with_suffix("").as_posix() for path in sorted(srcdir.glob(pattern))]
    return {
        "The course": names("notebooks/*.ipynb"),
        "Solutions": names("notebooks/solutions/*.ipynb"),
        "Results and reference": names("docs/*.md") + names("CONTRIBUTING.md"),
    }


def front_page_last(app, env, docnames):
    """Read the README after the notebooks: its status line needs what they printed."""
    if app.config.root_doc in docnames:
        docnames.remove(app.config.root_doc)
        docnames.append(app.config.root_doc)


def outdated(app, env, added, changed, removed):
    """The front page always (its status line); every page after the cache was emptied."""
    if getattr(app, "digits_cache_emptied", False):
        return sorted(env.found_docs)
    return [app.config.root_doc]


def front_page(app, docname, source):
    """The README, plus a line on how the book was built and the table of contents (hidden: the
    theme shows it in the sidebar)."""
    if docname != app.config.root_doc:
        return
    text = source[0]
    status = build_status(app)
    title_end = text.find("\n", text.find("# ")) + 1  # after the README's title line
    note = f":::{{note}}\n{status_text(status)}\n:::\n\n"
    toctrees = "".join(
        f"\n```{{toctree}}\n:hidden:\n:caption: {caption}\n\n" + "\n".join(docnames) + "\n```\n"
        for caption, docnames in pages(Path(app.srcdir)).items() if docnames
    )
    source[0] = text[:title_end] + "\n" + note + text[title_end:] + toctrees


def build_status(app) -> dict:
    standins = getattr(app.env, "digits_standins", {})
    return {
        "mode": "quick" if app.config.digits_quick else "full",
        "date": datetime.date.today().isoformat(),
        "standins": {docname: standins[docname] for docname in sorted(standins) if standins[docname]},
    }


def status_text(status: dict) -> str:
    if status["mode"] == "quick":
        lines = [f"Built on {status['date']} in **quick mode** (`make book QUICK=1`): every notebook ran on a "
                 "small slice of MNIST for an epoch or two, so its numbers and figures show what the code does, "
                 "not the course's results. `make book` builds the full course."]
    else:
        lines = [f"Built on {status['date']} in **full mode** (`make book`): every notebook ran as in `make course`."]
    if status["standins"]:
        listed = ", ".join(f"[{Path(docname).name}](/{docname}.ipynb)" for docname in status["standins"])
        lines.append(f"Trained models were missing, so these notebooks used **small stand-ins** (a few thousand "
                     f"images, two epochs), as their outputs say: {listed}. Train the real models with "
                     "`make models`, then run `make book` again.")
    elif status["mode"] == "full":
        lines.append("Every notebook used the fully trained models in `models/` (no stand-ins).")
    else:
        lines.append("No notebook needed a stand-in model: they used the models the quick runs trained.")
    return "\n".join(lines)


def note_standins(app, doctree):
    """Remember which models a notebook's outputs say were stand-ins."""
    if not app.env.docname.startswith("notebooks/"):
        return
    lines = []
    for node in doctree.findall(nodes.literal_block):
        if "output" in node.get("classes", []):
            lines += [line.strip() for line in node.astext().splitlines() if STANDIN_MARK in line]
    if not hasattr(app.env, "digits_standins"):
        app.env.digits_standins = {}
    app.env.digits_standins[app.env.docname] = lines


def purge(app, env, docname):
    getattr(env, "digits_standins", {}).pop(docname, None)


# --- widgets -------------------------------------------------------------------------------------------


def static_widgets(app, doctree):
    """Replace each widget output by a still of the pad (or, for another widget, by the note alone)."""
    for raw in list(doctree.findall(nodes.raw)):
        if WIDGET_VIEW not in raw.astext():
            continue
        cell = raw.parent
        while cell is not None and "cell" not in cell.get("classes", []):
            cell = cell.parent
        code = "".join(node.astext() for node in cell.findall(nodes.literal_block)
                       if "output" not in node.get("classes", [])) if cell is not None else ""
        if "DrawingPad" in code or "drawing.app" in code:
            replacement = pad_figure(app)
        else:
            replacement = [nodes.note("", nodes.paragraph("", "", *inline(
                "An interactive widget is shown here when the notebook runs in JupyterLab (`make lab`).")))]
        raw.replace_self(replacement)


def pad_figure(app) -> list[nodes.Element]:
    """A still of the drawing pad reading a 4, saved with the notebooks' figures, and the note."""
    path = getattr(app, "digits_pad_still", None)
    if path is None:
        path, standins = render_pad_still(app.config.digits_quick)
        app.digits_pad_still = path
        app.digits_pad_standins = standins
    uri = "/" + path.relative_to(Path(app.srcdir)).as_posix()
    caption = ("A still of the pad: the book drew a 4 on it through the pad's own code (`pad.draw_strokes`), "
               f"and the {'stand-in ' if app.digits_pad_standins else ''}models read it.")
    image = nodes.image(uri=uri, alt="the drawing pad reading a drawn 4")
    figure = nodes.figure("", image, nodes.caption("", "", *inline(caption)), classes=["digits-pad-still"])
    figure["ids"].append("drawing-pad-still")
    return [figure, nodes.note("", nodes.paragraph("", "", *inline(LIVE_NOTE)))]


def inline(text: str) -> list[nodes.Node]:
    """Text with `code` in backticks as docutils nodes."""
    return [nodes.literal(part, part) if index % 2 else nodes.Text(part)
            for index, part in enumerate(text.split("`")) if part]


def render_pad_still(quick: bool) -> tuple[Path, bool]:
    """The pad with the models the notebook loaded, a 4 drawn on it; saved as PAD_STILL.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import digitlib as dl

    models = dl.drawing.load_models(device="cpu", quick=quick, log=None)
    pad = dl.drawing.DrawingPad(models)
    pad.draw_strokes(FOUR)
    standins = [name for name, entry in models.items() if entry.standin]
    names = " and ".join(models)
    note = f"{names}, their probabilities averaged" + (f"; {' and '.join(standins)}: stand-ins" if standins else "")
    figure = dl.plots.pad_still(pad, note=note)
    path = dl.plots.save_figure(figure, PAD_STILL)
    plt.close(figure)
    return path, bool(standins)


# --- math -----------------------------------------------------------------------------------------------


def _mathml(latex: str, display: str) -> str:
    from latex2mathml.converter import convert

    return convert(latex, display=display)


def visit_math(self, node):
    self.body.append(_mathml(node.astext(), "inline"))
    raise nodes.SkipNode


def visit_math_block(self, node):
    self.body.append(f'<div class="math">{_mathml(node.astext(), "block")}</div>\n')
    raise nodes.SkipNode


# --- the cache and the end -------------------------------------------------------------------------------


def fingerprint(quick: bool) -> str:
    """What a notebook's outputs depend on beyond its code: the mode, the library, the trained models."""
    import digitlib

    library = Path(digitlib.__file__).parent
    digest = hashlib.sha256(f"mode={'quick' if quick else 'full'}\n".encode())
    for path in sorted(library.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    if not quick:  # the fully trained models a full run loads (quick runs train their own)
        models = digitlib.config.models_dir()
        for path in sorted(list(models.glob("*.pt")) + list(models.glob("fashion/*.pt"))):
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_cache(app, config):
    """Empty the execution cache when what the notebooks' outputs depend on has changed."""
    cache = Path(config.nb_execution_cache_path)
    stamp_path = cache.with_name(cache.name + ".stamp")
    stamp = fingerprint(config.digits_quick)
    if cache.exists() and (not stamp_path.exists() or stamp_path.read_text() != stamp):
        shutil.rmtree(cache)
        app.digits_cache_emptied = True
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(stamp)


def finish(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    front = f"{app.config.root_doc}.html"
    # The icon too: without it Chromium may ask for /favicon.ico, which is not there, before it moves on.
    icon = f'<link rel="icon" href="_static/{Path(app.config.html_favicon).name}">' if app.config.html_favicon else ""
    (outdir / "index.html").write_text(
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{app.config.project}</title>{icon}'
        f'<meta http-equiv="refresh" content="0; url={front}"></head>'
        f'<body><a href="{front}">The course</a></body></html>\n')
    status = build_status(app)
    status["figures"] = os.environ.get("DIGITLIB_FIGURES", "")
    (outdir / "_digits_book.json").write_text(json.dumps(status, indent=1) + "\n")
