"""Where trained models come from: the one place that loads one for use.

- :func:`load_model`: a checkpoint (``.pt``) or an exported ONNX file, as (model, info); ``info``
  carries the normalisation (``checkpoints.normalization(info, path)``) either way.
- :func:`best_checkpoint`: the best usable checkpoint of a dataset in ``models/`` (``predict`` and
  ``evaluate`` without ``--model``).
- :func:`load_or_train`: the trained ``<arch>.pt`` a notebook or the pad needs, or a small stand-in
  trained once when there is none, said so.

Where each file lives is ``config``'s path policy (:func:`config.trained_path`,
:func:`config.standin_path`, :func:`config.model_set_paths`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .checkpoints import load_checkpoint, normalization, read_checkpoint, require_dataset, run_metadata
from .config import dataset_models_dir, run_config, standin_path, trained_path
from .data import dataset_info, dataset_of
from .errors import CheckpointError, DigitlibError
from .export import is_onnx_path, load_onnx
from .runtime import pick_device, seed_everything
from .training import fit


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, info) from a digitlib checkpoint or an exported ``.onnx`` file.

    Checkpoints load with :func:`digitlib.checkpoints.load_checkpoint` onto ``device``; ONNX files run
    on the CPU with ONNX Runtime whatever ``device`` says (inputs on another device are copied).
    Either way the model takes normalised images and returns log probabilities, and ``info`` has the
    same fields (``arch``, ``normalization``, ``metrics``, ...).
    """
    if is_onnx_path(path):
        return load_onnx(path)
    return load_checkpoint(path, device)


def recorded_accuracy(info: dict) -> tuple[str, float] | None:
    """("test" or "val", accuracy) recorded in a checkpoint's metrics, test preferred; None if neither."""
    metrics = info.get("metrics") or {}
    for split in ("test", "val"):
        if metrics.get(f"{split}_accuracy") is not None:
            return split, float(metrics[f"{split}_accuracy"])
    return None


def best_checkpoint(
    folder: str | os.PathLike | None = None, log: Callable[[str], None] | None = None, dataset: str = "mnist"
) -> Path:
    """The checkpoint of ``dataset`` in ``folder`` with the highest recorded accuracy.

    ``folder`` defaults to ``dataset_models_dir(dataset)`` (``models/``, or ``models/fashion/``); its
    subfolders are not searched. Test accuracy where recorded, else validation accuracy. Checkpoints
    trained on another dataset are passed over: a Fashion-MNIST model never reads digits. Every file is
    read and checked (``checkpoints.read_checkpoint``: metrics, history and every other recorded field,
    plus a usable normalisation): one that fails is skipped, and ``log`` is told which and why, so a
    damaged file that is not the best one cannot stop ``predict``, and a crafted one claiming 150 %
    is never chosen. Raises :class:`CheckpointError` when none is usable.
    """
    info = dataset_info(dataset)
    folder = Path(folder) if folder is not None else dataset_models_dir(info.name)
    scored = []
    for path in sorted(folder.glob("*.pt")):
        try:
            checkpoint = read_checkpoint(path)
            normalization(checkpoint, path)
            recorded = recorded_accuracy(checkpoint) if dataset_of(checkpoint) == info.name else None
        except DigitlibError as error:
            if log:
                log(f"skipped {path}: {error}")
            continue
        if recorded is not None:
            scored.append((recorded[1], path))
    if not scored:
        if info.name == "mnist":
            what, train = "", "`python -m digitlib train` (or run notebook 03)"
        else:
            what, train = f"{info.title} ", f"`python -m digitlib train --dataset {info.name}`"
        raise CheckpointError(f"no usable {what}checkpoint in {folder}: train one with {train}, or pass --model PATH.")
    return max(scored, key=lambda item: item[0])[1]


def load_or_train(
    arch: str,
    path: str | os.PathLike | None = None,
    epochs: int = 2,
    train_limit: int = 6000,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
    dataset: str = "mnist",
    quick: bool | None = None,
):
    """(model in eval mode on ``device``, checkpoint info) for notebooks 04-09 and the drawing pad.

    Loads ``path``, by default ``<arch>.pt`` in ``dataset_models_dir(dataset, quick)`` (``models/``,
    ``models/fashion/``, or their quick ``smoke/`` folder: a quick notebook reads what quick runs wrote).
    When no path is given and that file does not exist, uses a small stand-in instead, kept apart in
    ``standin/<arch>.pt`` there so it is never taken for the full model: trained once (``train_limit``
    images, ``epochs``, no augmentation) and then reused. ``info["standin"]`` is True for it, and ``log``
    says so. A checkpoint trained on another dataset than ``dataset`` is refused.
    """
    from .data import load_splits
    from .loaders import make_loaders
    from .models import build_model

    full = trained_path(arch, dataset, quick)
    if path is not None or full.exists():
        return _load_for(dataset, path if path is not None else full, device, arch)
    standin = standin_path(arch, dataset, quick)
    if log:
        log(f"no fully trained {arch} at {full}: using a small stand-in ({train_limit:,} images, {epochs} epochs), "
            f"{'trained just now' if not standin.exists() else 'trained earlier'} at {standin}")
    if not standin.exists():
        seed_everything(0)
        splits = load_splits(seed=0, train_limit=train_limit, test_limit=1000, dataset=dataset)
        config = replace(run_config(arch, quick=True), epochs=epochs, batch_size=64)
        train_loader, val_loader, _ = make_loaders(splits, config.batch_size, augment="none",
                                                   device=pick_device(device))
        fit(
            build_model(arch), train_loader, val_loader, config, device=device, checkpoint=standin,
            metadata={**run_metadata(splits, seed=0, augment="none"), "standin": True}, progress=False, log=None,
        )
    return _load_for(dataset, standin, device, arch)


def _load_for(dataset: str, path: str | os.PathLike, device, arch: str):
    """load_checkpoint, refusing a checkpoint trained on another dataset (old ones without a record are MNIST's)."""
    model, info = load_checkpoint(path, device=pick_device(device), arch=arch)
    require_dataset(info, path, dataset)
    return model, info
