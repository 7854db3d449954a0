"""The README's "At a glance" figures: `make figures` (from the full book) or `make figures QUICK=1`.

Copies four figures the book's build saved (the notebooks' dl.plots.save_figure, and the drawing
pad's still) to docs/ as small PNGs, and rewrites the README's section between its two figure
markers: the pictures, a caption each, and the build they came from. The figures are found by
their names without the notebook number, so renumbered notebooks need no edit here.

    python book/figures.py build/book        # the book's folder: its _digits_book.json says the rest
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
BEGIN = "<!-- figures: written by `make figures` (book/figures.py) -->"
END = "<!-- /figures -->"
WIDTH = 640  # pixels: sharp in a README column, a few tens of KB as a 32-colour PNG
COLOURS = 32

# (figure name without its notebook number, file under docs/, width in pixels, short alt text, caption);
# {notebook} in a caption is the notebook that drew it.
FIGURES = [
    ("samples_per_class", "digits.png", 440, "digits from MNIST",
     "Digits from MNIST's training set, eight of each class ({notebook})."),
    ("training_curves", "learning_curves.png", WIDTH, "learning curves",
     "Learning curves of the small CNN: loss and accuracy per epoch on the training and validation sets "
     "({notebook})."),
    ("confusion_matrices", "confusion_matrices.png", WIDTH, "confusion matrices",
     "Confusion matrices of the CNN and the ResNet on the test set, in counts and as shares of each true digit "
     "(grey: correct, red: mistakes): which digit is taken for which ({notebook})."),
    ("pad_still", "drawing_pad.png", WIDTH, "the drawing pad reading a 4",
     "The drawing pad reading a 4: the drawing, the 28×28 image the model saw and the ten probabilities "
     "({notebook}; it runs live in JupyterLab or `make app`)."),
]


def find(figures: Path, name: str) -> Path:
    """The first figure (by name, so by notebook number) called NN_<name>.png or <name>.png."""
    found = sorted(figures.glob(f"[0-9][0-9]_{name}.png")) or sorted(figures.glob(f"{name}.png"))
    if not found:
        raise SystemExit(f"no {name}.png in {figures}: build the book first (make book)")
    return found[0]


def notebook_of(figure: Path) -> str:
    """'notebook 05' for 05_x.png (whatever notebook carries that number now); the drawing pad's for its still."""
    number = figure.name[:2] if figure.name[:2].isdigit() else None
    if number is None:
        pads = sorted((ROOT / "notebooks").glob("[0-9][0-9]_drawing_pad.ipynb"))
        number = pads[0].name[:2] if pads else None
    return f"notebook {number}" if number else "the drawing-pad notebook"


def shrink(source: Path, target: Path, width: int) -> int:
    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    return target.stat().st_size


def section(status: dict, captions: list[tuple[str, str]]) -> str:
    if status["mode"] == "quick":
        origin = (f"These come from a **quick-mode** build ({status['date']}): a small slice of the data and an "
                  "epoch or two, so they show what each notebook draws, not the course's results. `make figures` "
                  "makes them again from a full build.")
    else:
        origin = f"From the full-mode build of {status['date']} (`make figures` makes them again)."
    if status["standins"]:
        origin += " Trained models were missing, so some notebooks used small stand-ins."
    cells = [f"![{alt}](docs/{name})" for name, alt, _ in captions]
    texts = [caption for _, _, caption in captions]
    rows = []
    for start in range(0, len(cells), 2):
        rows.append("| " + " | ".join(cells[start:start + 2]) + " |")
        rows.append("| " + " | ".join(texts[start:start + 2]) + " |")
    table = "| | |\n|---|---|\n" + "\n".join(rows)
    return f"{BEGIN}\n{table}\n\n{origin}\n{END}"


def main(book: Path, docs: Path = DOCS, readme_path: Path = README) -> None:
    status = json.loads((book / "_digits_book.json").read_text())
    figures = Path(status["figures"])
    docs.mkdir(exist_ok=True)
    captions = []
    for name, target, width, alt, caption in FIGURES:
        source = find(figures, name)
        size = shrink(source, docs / target, width)
        captions.append((target, alt, caption.format(notebook=notebook_of(source))))
        print(f"{source.relative_to(ROOT) if source.is_relative_to(ROOT) else source} -> docs/{target} "
              f"({size / 1024:.0f} KB)")
    readme = readme_path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no figure section ({BEGIN} ... {END})")
    readme_path.write_text(pattern.sub(lambda _: section(status, captions), readme))
    print(f"{readme_path.name}: figure section rewritten")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
