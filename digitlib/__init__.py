"""digitlib: the library behind the digits course (handwritten digits on MNIST with PyTorch).

The notebooks teach each piece, then import it from here::

    import digitlib as dl
    splits = dl.data.load_splits()

Submodules load on first use (``dl.data`` imports torch, ``dl.drawing`` imports the widgets), so
``import digitlib`` and ``python -m digitlib --help`` stay fast and a training run on a server
never loads a plotting or widget library.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from .config import data_dir, figures_dir, models_dir, smoke_test
from .errors import CheckpointError, DataError, DigitlibError, ImageError, TrainingError

__version__ = "0.2.0"

# albumentations asks PyPI for a newer version each time it is imported: a warning on a closed
# network, a stall on a slow one. Set before anything (a notebook included) imports it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# OpenMP threads that wait at a barrier spin by default: alone that saves a little time, beside another busy
# process it costs several times over (docs/results.md's "Sharing the machine" measures both). Waiting threads
# sleep instead, unless the environment says otherwise. OpenMP reads this once, when torch is first
# imported: a program that imports torch before digitlib (or a notebook) sets it in its environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_SUBMODULES = (
    "augment", "bench", "checkpoint_checks", "checkpoints", "confidence", "data", "datafiles", "drawing", "evaluation",
    "explain", "export", "extras", "files", "inference", "loaders", "models", "pen", "plots", "preprocess", "reports",
    "results", "runstate", "runtime", "training", "zoo",
)

__all__ = [
    "CheckpointError", "DataError", "DigitlibError", "ImageError", "TrainingError", "__version__",
    "data_dir", "figures_dir", "models_dir", "smoke_test",
    # The submodules, written out (not *_SUBMODULES) so that linters and editors can read the list.
    "augment", "bench", "checkpoint_checks", "checkpoints", "confidence", "data", "datafiles", "drawing", "evaluation",
    "explain", "export", "extras", "files", "inference", "loaders", "models", "pen", "plots", "preprocess", "reports",
    "results", "runstate", "runtime", "training", "zoo",
]

if TYPE_CHECKING:
    from . import (
        augment,
        bench,
        checkpoint_checks,
        checkpoints,
        confidence,
        data,
        datafiles,
        drawing,
        evaluation,
        explain,
        export,
        extras,
        files,
        inference,
        loaders,
        models,
        pen,
        plots,
        preprocess,
        reports,
        results,
        runstate,
        runtime,
        training,
        zoo,
    )


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'digitlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
