"""Where things live, and the one switch that makes everything small and fast."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def smoke_test() -> bool:
    """True when ``DIGITLIB_SMOKE`` is set to 1/true/yes/on: quick mode.

    A notebook's parameters cell starts from it (``smoke_test = dl.smoke_test()``) and shrinks data and
    epochs, so the whole course runs in minutes on two CPU cores (CI, nbval). A learner chooses quick
    mode either way: by setting the variable before starting JupyterLab, or by editing that line to
    ``smoke_test = True``; the notebook passes its own value on (``quick=smoke_test``), so both lead
    to the same folders. Users get full mode by default.
    """
    return os.environ.get("DIGITLIB_SMOKE", "").strip().lower() in _TRUE


#: The batch size at which the full runs' learning rates were chosen.
REFERENCE_BATCH_SIZE = 128
#: Where the one-cycle schedule starts, at the reference batch size.
START_LR = 1e-3


def scaled_max_lr(max_lr: float, batch_size: int, reference: int = REFERENCE_BATCH_SIZE) -> float:
    """The peak learning rate for ``batch_size``, given one chosen at ``reference``: square-root scaling.

    A k times larger batch averages away gradient noise but takes k times fewer steps per epoch. For
    Adam-style optimisers the rate that keeps training on the same path grows with the square root of
    k (Malladi et al., 2022), not linearly as for SGD (Goyal et al., 2017).
    """
    return max_lr * math.sqrt(batch_size / reference)


#: The longest a training step's gradient may be (its L2 norm over all the weights): a longer one is scaled
#: down to it, so that one unlucky batch cannot throw the weights far off.
CLIP_NORM = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """How ``training.fit`` trains a model: AdamW with a one-cycle schedule, and what goes with it.

    One object for the CLI, the notebooks, ``models``, ``bench`` and the stand-in models. ``fit`` saves
    it verbatim in the checkpoint (``"training"``) and resumes a run only with an equal one. Start from
    a preset (:func:`run_config`) and change a field with ``dataclasses.replace``; the loaders are
    built with its ``batch_size`` (``fit`` checks that they were).
    """

    epochs: int
    max_lr: float  # OneCycleLR's peak learning rate
    lr: float = START_LR  # where the one-cycle schedule starts (and the learning rate it ends far below)
    batch_size: int = REFERENCE_BATCH_SIZE
    weight_decay: float = 1e-2  # AdamW's
    clip_norm: float | None = CLIP_NORM  # None: no clipping
    label_smoothing: float = 0.0  # of the training loss's targets; 0: none
    ema_decay: float | None = None  # of the weights' exponential moving average (validated and saved); None: none
    amp: bool | None = None  # mixed precision; None: where the device computes it fast (runtime.amp_dtype)

    def at_batch_size(self, batch_size: int) -> TrainConfig:
        """The same run at another batch size, both learning rates scaled by :func:`scaled_max_lr`'s rule."""
        return replace(self, batch_size=batch_size, lr=scaled_max_lr(self.lr, batch_size, self.batch_size),
                       max_lr=scaled_max_lr(self.max_lr, batch_size, self.batch_size))


#: Full-run settings per architecture: the CLI's defaults and the notebooks' full mode. docs/results.md
#: (its table generated from the runs' records) is the evidence for each.
FULL_RUNS: dict[str, TrainConfig] = {
    # No label smoothing, although it won on validation (docs/results.md): it caps a model's top
    # probabilities near 0.9, close to confidence.MIN_CONFIDENCE (0.85), where the rule refuses real digits as
    # "not a digit?" (measured at 0.90 with a quick-mode model: docs/results.md).
    "cnn": TrainConfig(epochs=6, max_lr=3e-3),
    "resnet": TrainConfig(epochs=10, max_lr=1e-2),
}
#: Epochs of a quick run (smoke mode, stand-ins): enough to see the loss fall, in seconds.
QUICK_EPOCHS = 2
#: The command line's quick sizes (smoke mode, or any run on a training limit): training images taken
#: before the split, and the first test images a quick run is measured on.
QUICK_TRAIN_IMAGES = 2000
QUICK_TEST_IMAGES = 1000


def run_config(arch: str, quick: bool = False) -> TrainConfig:
    """The full run of ``arch``, or its quick version: :data:`QUICK_EPOCHS` epochs and no average of the
    weights (a quick run takes a few dozen steps, too few for an average over about 1 / (1 - decay) of them)."""
    full = FULL_RUNS[arch]
    return replace(full, epochs=QUICK_EPOCHS, ema_decay=None) if quick else full


def repo_root() -> Path:
    """The checkout digitlib is installed from (editable install), else the working directory."""
    candidate = Path(__file__).resolve().parents[1]
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


def data_dir() -> Path:
    """MNIST's root folder: ``$DIGITLIB_DATA`` or ``data/`` at the repository root."""
    return Path(os.environ.get("DIGITLIB_DATA") or repo_root() / "data")


def models_dir(quick: bool | None = None) -> Path:
    """Trained checkpoints: ``$DIGITLIB_MODELS``, else ``models/`` at the repository root.

    Quick runs (``quick=True``; None follows :func:`smoke_test`) use its ``smoke/`` subfolder, so a
    quick run can never replace a fully trained model, wherever the folder is.
    """
    base = Path(os.environ.get("DIGITLIB_MODELS") or repo_root() / "models")
    if quick is None:
        quick = smoke_test()
    return base / "smoke" if quick else base


#: The datasets' names (``digitlib.data.DATASETS`` describes each; listed here too so that the command
#: line's --help needs no torch).
DATASET_NAMES = ("mnist", "fashion")


def dataset_models_dir(dataset: str = "mnist", quick: bool | None = None) -> Path:
    """Where a dataset's checkpoints go: :func:`models_dir` for MNIST, ``models_dir()/<dataset>`` for the others.

    A Fashion-MNIST model therefore never replaces, nor is taken for, the digit model that ``predict``
    and the drawing pad load from ``models/``.
    """
    folder = models_dir(quick)
    return folder if dataset == "mnist" else folder / dataset


def trained_path(arch: str, dataset: str = "mnist", quick: bool | None = None) -> Path:
    """The trained ``arch`` model that notebooks, ``predict`` and the drawing pad load:
    ``dataset_models_dir(dataset, quick)/<arch>.pt``."""
    return dataset_models_dir(dataset, quick) / f"{arch}.pt"


def standin_path(arch: str, dataset: str = "mnist", quick: bool | None = None) -> Path:
    """Where the small stand-in for a missing trained ``arch`` lives: a ``standin/`` folder beside
    :func:`trained_path`, so that it is never taken for the trained model."""
    return dataset_models_dir(dataset, quick) / "standin" / f"{arch}.pt"


def model_set_paths(archs: Sequence[str], seeds: int, dataset: str = "mnist", limit: int | None = None,
                    epochs: int | None = None) -> dict[tuple[str, int], Path]:
    """{(arch, seed): checkpoint path} of the model set that `models` trains (seed 0 is also `train`'s default).

    Under ``dataset_models_dir(dataset)``, or its ``quick/`` folder for an architecture trained on
    ``limit`` images or fewer ``epochs`` than its full run: a quick run never takes the names that
    ``predict``, the notebooks and the drawing pad load.
    """
    paths = {}
    for arch in archs:
        quick = limit is not None or (epochs is not None and epochs < FULL_RUNS[arch].epochs)
        folder = dataset_models_dir(dataset) / ("quick" if quick else "")
        for seed in range(seeds):
            paths[arch, seed] = folder / (f"{arch}.pt" if seed == 0 else f"seeds/{arch}-seed{seed}.pt")
    return paths


def checkpoint_path(
    arch: str, quick: bool, replace: bool = False, log: Callable[[str], None] | None = print
) -> Path:
    """Where a notebook saves the ``arch`` model it trains: ``models_dir(quick)/<arch>.pt``.

    A quick run writes in ``smoke/`` and may replace the quick checkpoint there. A full run never
    replaces a trained checkpoint unasked: when ``<arch>.pt`` exists and ``replace`` is False, the new
    run goes beside it, to ``runs/<arch>-<date and time>.pt`` (a folder that ``predict``, the pad and
    the later notebooks do not read), and ``log`` says so before anything is trained.
    """
    folder = models_dir(quick)
    path = folder / f"{arch}.pt"
    if quick or replace or not path.exists():
        return path
    beside = folder / "runs" / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}.pt"
    if log:
        log(f"{path} holds a trained {arch} and is kept: this run saves to {beside}. To replace it instead, "
            "set replace_trained = True in the parameters cell.")
    return beside


def figures_dir() -> Path:
    """Figures the notebooks save: ``$DIGITLIB_FIGURES`` or ``build/figures/``."""
    return Path(os.environ.get("DIGITLIB_FIGURES") or repo_root() / "build" / "figures")
