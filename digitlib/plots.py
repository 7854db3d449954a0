"""Figures the notebooks share. Each function draws on a new or given Axes and returns it."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from .config import figures_dir


def save_figure(figure: plt.Figure, name: str) -> Path:
    """Save ``figure`` as ``<figures_dir>/<name>.png`` (build/figures by default); returns the path."""
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path
