"""Where things live, and the one switch that makes everything small and fast."""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def smoke_test() -> bool:
    """True when ``DIGITLIB_SMOKE`` is set to 1/true/yes/on.

    Notebooks read it in their parameters cell and shrink data and epochs, so the whole
    course runs in minutes on two CPU cores (CI, nbval). Users get full mode by default.
    """
    return os.environ.get("DIGITLIB_SMOKE", "").strip().lower() in _TRUE


def repo_root() -> Path:
    """The checkout digitlib is installed from (editable install), else the working directory."""
    candidate = Path(__file__).resolve().parents[1]
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


def data_dir() -> Path:
    """MNIST's root folder: ``$DIGITLIB_DATA`` or ``data/`` at the repository root."""
    return Path(os.environ.get("DIGITLIB_DATA") or repo_root() / "data")


def models_dir() -> Path:
    """Trained checkpoints: ``$DIGITLIB_MODELS``, else ``models/`` at the repository root.

    In smoke mode the default is ``models/smoke/``, so a quick run never overwrites a fully
    trained model.
    """
    if os.environ.get("DIGITLIB_MODELS"):
        return Path(os.environ["DIGITLIB_MODELS"])
    return repo_root() / "models" / ("smoke" if smoke_test() else "")


def figures_dir() -> Path:
    """Figures the notebooks save: ``$DIGITLIB_FIGURES`` or ``build/figures/``."""
    return Path(os.environ.get("DIGITLIB_FIGURES") or repo_root() / "build" / "figures")
