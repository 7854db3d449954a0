"""The not-a-digit rule for models of different recipes, each with a threshold chosen on its own validation digits.

Notebook 08 (section 5) chooses the rule's confidence threshold for the course's default models. A recipe that
changes how sure a model sounds (label smoothing 0.1 trains towards 0.91 for the right digit, not 1) needs its own
threshold. For every checkpoint given, this measures, as notebook 08 does:

- the highest top-probability threshold (in steps of 0.01) that refuses at most
  ``confidence.DIGIT_REJECTION_BUDGET`` of the checkpoint's validation digits, after the shape checks;
- what the library's ``MIN_CONFIDENCE`` would refuse of those validation digits;
- at the checkpoint's own threshold: the share of the test digits refused (measured once, chosen on nothing), and
  the share caught of each kind of non-digit (Fashion-MNIST's test images and ``confidence.non_digits``).

Every picture goes through ``preprocess.to_mnist`` first, as a drawn or loaded one does. Then a mean ± std
(over the checkpoints) for each recipe. Used for docs/results.md ("Label smoothing and the not-a-digit rule"):

    python tools/not_a_digit_by_recipe.py --recipe default models/cnn.pt models/seeds/cnn-seed*.pt \\
        --recipe smoothed path/to/cnn6-ls-s*.pt --out build/not-a-digit-by-recipe.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

import digitlib as dl
from digitlib import confidence
from digitlib.errors import DigitlibError
from digitlib.preprocess import to_mnist


def pictures_of_every_kind(per_kind: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The test digits and each kind of non-digit, preprocessed as the pad and ``predict`` do, each with the shape
    checks' verdicts (they need no model, so they are made once)."""
    test_images, _ = dl.data.load_mnist(train=False)
    test_digits = test_images.numpy()
    fashion, _ = dl.data.load_dataset("fashion", train=False)
    pictures: dict[str, Iterable] = {"test digits": test_digits, "fashion": fashion.numpy()}
    for kind in confidence.NON_DIGIT_KINDS:
        pictures[kind] = confidence.non_digits(kind, per_kind, seed=0, digits=test_digits)
    preprocessed = {kind: np.stack([to_mnist(image) for image in images]) for kind, images in pictures.items()}
    return {kind: (images, confidence.shape_rejected(images)) for kind, images in preprocessed.items()}


@torch.inference_mode()
def top_probability(model: torch.nn.Module, normalization: tuple[float, float], pictures: np.ndarray) -> np.ndarray:
    x = dl.data.normalize(torch.as_tensor(pictures), *normalization).unsqueeze(1)  # float pictures keep (N, 28, 28)
    return confidence.raw_logits(model, x).softmax(1).max(1).values.numpy()


def validation_digits(split_seed: int) -> np.ndarray:
    """The validation digits of the split ``split_seed``, preprocessed like every other picture."""
    return np.stack([to_mnist(image) for image in dl.data.load_splits(seed=split_seed).val_images.numpy()])


def measure(path: Path, loaded: tuple[torch.nn.Module, dict], pictures: dict[str, tuple[np.ndarray, np.ndarray]],
            validation: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """One checkpoint (``loaded`` from ``path``): its threshold, chosen on its own validation split, and what
    that threshold does. ``validation`` keeps each split's digits and their shape verdicts for the next checkpoint."""
    model, info = loaded
    normalization = dl.checkpoints.normalization(info, path)
    split_seed = dl.data.split_seed_of(info)
    if split_seed not in validation:
        digits = validation_digits(split_seed)
        validation[split_seed] = digits, confidence.shape_rejected(digits)
    val, val_shape = validation[split_seed]
    val_top = top_probability(model, normalization, val)
    threshold = confidence.confidence_threshold(val_top, val_shape, confidence.DIGIT_REJECTION_BUDGET)
    threshold = float(np.floor(threshold * 100) / 100)  # the rule's steps of 0.01, as notebook 08
    row = {"threshold": threshold,
           "validation digits refused": float(np.mean(val_shape | (val_top < threshold))),
           "validation digits refused at MIN_CONFIDENCE": float(
               np.mean(val_shape | (val_top < confidence.MIN_CONFIDENCE)))}
    for kind, (images, shape_rejected) in pictures.items():
        refused = shape_rejected | (top_probability(model, normalization, images) < threshold)
        row["test digits refused" if kind == "test digits" else f"{kind} caught"] = float(refused.mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", nargs="+", action="append", required=True, metavar=("NAME", "CHECKPOINT"),
                        help="a recipe's name, then its checkpoints (repeat for each recipe)")
    parser.add_argument("--per-kind", type=int, default=500,
                        help="synthetic non-digits of each kind (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write every checkpoint's figures to this new JSON file")
    args = parser.parse_args()
    if args.out is not None and args.out.exists():  # never over an earlier measurement
        parser.error(f"--out {args.out} exists: name another file, or move that one away first")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: no folder {args.out.parent}; create it first")
    for name, *paths in args.recipe:
        if not paths:
            parser.error(f"--recipe {name}: name its checkpoints after it")
        for path in paths:
            if not Path(path).is_file():  # before the minutes of preparing pictures
                parser.error(f"--recipe {name}: no checkpoint at {path}")
    validation: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    try:
        # Every checkpoint is loaded (and so checked) before the minutes of preparing pictures.
        loaded = {path: dl.zoo.load_model(path, device=torch.device("cpu"))
                  for _, *paths in args.recipe for path in map(Path, paths)}
        pictures = pictures_of_every_kind(args.per_kind)
        for name, *paths in args.recipe:
            for path in map(Path, paths):
                rows.append({"recipe": name, "checkpoint": str(path),
                             **measure(path, loaded[path], pictures, validation)})
                print(json.dumps(rows[-1]), flush=True)
    except DigitlibError as error:
        parser.exit(1, f"error: {error}\n")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    for name, *_ in args.recipe:
        own = [row for row in rows if row["recipe"] == name]
        print(f"\n{name} ({len(own)} checkpoints): mean ± std")
        for key in own[0]:
            if key not in ("recipe", "checkpoint"):
                values = np.array([row[key] for row in own])
                spread = values.std(ddof=1) if len(values) > 1 else 0.0
                print(f"  {key:<48}{values.mean():8.4f} ± {spread:.4f}")


if __name__ == "__main__":
    main()
