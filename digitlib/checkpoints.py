"""Checkpoints: weights plus everything needed to use and trust them, written atomically.

What every checkpoint holds: ``format``, the architecture (``arch`` and ``arch_kwargs``, or
``arch_class`` for a model digitlib does not know), ``state_dict``, ``versions`` and ``date``; from
training (``training.fit``) the settings (``training``: the ``TrainConfig`` verbatim, plus device and
precision), ``history``, ``epochs_completed``, ``best_epoch``, ``metrics`` and, until the run
completes, ``resume``; and the data fields of :func:`run_metadata` (``normalization``, ``seed``,
``data``). Reading one is a trust boundary: ``checkpoint_checks`` checks every field before a model is
built from it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple, cast

import torch
from torch import nn

from .checkpoint_checks import (
    build_checked,
    check_fields,
    check_fits,
    checkpoint_dataset,
    load_torch_file,
    recorded_normalization,
    refuse_special_file,
    state_dict_of,
    torch_reason,
    unreadable_file_message,
)
from .errors import CheckpointError
from .files import atomic_write
from .models import architecture_of

FORMAT = "digitlib-checkpoint-v1"


class Normalization(NamedTuple):
    """The pixel mean and standard deviation a model was trained with (pixels scaled to [0, 1])."""

    mean: float
    std: float


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    import torchvision  # only for its version: importing it costs about a second

    from . import __version__

    return {
        "digitlib": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | os.PathLike, model: nn.Module, state_dict: dict | None = None, **fields) -> Path:
    """Write ``model``'s weights (or ``state_dict``) and ``fields`` (normalisation, history,
    metrics, ...) to ``path``.

    A model of one of digitlib's architectures is recorded by name (``arch``) and settings
    (``arch_kwargs``), so :func:`load_checkpoint` can rebuild it. Any other ``nn.Module`` (say,
    one written in a notebook) is saved too, with ``arch`` None and its class name under
    ``arch_class``: load it with ``load_checkpoint(path, model=YourClass(...))``.

    The fields are checked as :func:`read_checkpoint` checks them (:func:`check_fields`): what would be
    refused when read is refused here, before anything is written. The file is written next to its
    destination and renamed over it, so an interruption (Ctrl-C, a full disk) leaves the previous
    checkpoint whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        arch: str | None = architecture_of(model)
        arch_kwargs = dict(cast(dict, model.config))  # each of digitlib's models records its settings
    except ValueError:  # not one of ours: the weights are still worth keeping
        arch, arch_kwargs = None, {}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_class": type(model).__qualname__,
        "arch_kwargs": arch_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()},
        "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    check_fields(payload, path)  # a checkpoint is never written with fields it would be refused for when read
    _atomic_save(payload, path)
    return path


def _atomic_save(payload: dict, path: Path) -> None:
    atomic_write(path, lambda file: torch.save(payload, file))


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's contents as a dict, loaded with ``weights_only=True`` (no code can run).

    Raises :class:`CheckpointError` with one line for a missing or unreadable file, a device, FIFO or
    socket, a file that is not a PyTorch checkpoint, a damaged one, one refused for safety, a PyTorch
    file that is not digitlib's, or one whose recorded fields are not what digitlib writes
    (:func:`check_fields`): so nothing downstream ever meets a metric of 150 % or a history that is text.
    """
    path = Path(path)
    refuse_special_file(path, "checkpoint")
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        if path.is_symlink():
            raise CheckpointError(unreadable_file_message(path, "checkpoint")) from None
        raise CheckpointError(
            f"no checkpoint at {path}: train one with `python -m digitlib train --out {path}` "
            "or run notebooks 03 and 04."
        ) from None
    except OSError as error:
        raise CheckpointError(unreadable_file_message(path, "checkpoint", error)) from None
    with file:
        payload = load_torch_file(path, file, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a digitlib checkpoint (no '{FORMAT}' marker). "
            "Pass a file written by digitlib's training."
        )
    check_fields(payload, path)
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    model: nn.Module | None = None,
) -> tuple[nn.Module, dict]:
    """The model saved at ``path``: (model in eval mode on ``device``, the other fields).

    digitlib rebuilds its own architectures; ``arch`` (``"cnn"``/``"resnet"``), when given, must
    match the checkpoint's. Pass ``model`` to load the weights into a module you built yourself
    instead (any ``nn.Module`` whose weights have the same names and shapes; it is returned).
    Everything the model is made from is checked first: a crafted or damaged file raises
    :class:`CheckpointError` and never builds a wrong model or allocates what it claims.
    """
    payload = read_checkpoint(path, map_location=device)
    state = state_dict_of(payload, path)
    if model is None:
        model, name = build_checked(payload, state, path, arch), repr(payload["arch"])
    else:
        name = type(model).__name__
        check_fits(state, model.state_dict(), name, path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as error:  # e.g. a complex tensor for a float weight
        raise CheckpointError(f"{path}'s weights do not fit a {name} model ({torch_reason(error)}).") from None
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["path"] = Path(path)  # where it came from: a stand-in or the full model, say
    return model.to(device).eval(), info


def normalization(info: Mapping, path: str | os.PathLike) -> Normalization:
    """The (mean, std) a checkpoint's model was trained with, from its ``info`` (see :func:`load_checkpoint`).

    Raises :class:`CheckpointError` when the checkpoint does not record it, or records values no input
    could be normalised with (``checkpoint_checks.recorded_normalization``).
    """
    return Normalization(*recorded_normalization(info, path))


def run_metadata(splits, seed: int, augment: str) -> dict:
    """What a checkpoint records about the data of a run on ``splits`` (``data.load_splits``) with ``seed``
    and ``augment``: the normalisation constants every reader needs, the seed, and the data's settings.

    The one shape, for the CLI, the notebooks and the stand-ins alike; ``fit(..., metadata=...)`` saves it.
    """
    return {
        "normalization": {"mean": splits.mean, "std": splits.std}, "seed": seed,
        "data": {"dataset": splits.dataset, "train_limit": splits.train_limit, "augment": augment,
                 "split_seed": splits.split_seed},
    }


def require_dataset(info: Mapping, path: str | os.PathLike, dataset: str, advice: str | None = None) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint (or ONNX file) ``info`` was trained on ``dataset``.

    ``advice`` ends the message (default: pass a checkpoint trained on that dataset). A dataset name
    this version does not know is refused too.
    """
    from . import data

    trained_on = checkpoint_dataset(info, path)
    if trained_on != dataset:
        wanted = data.dataset_info(dataset).title
        raise CheckpointError(f"{path} was trained on {data.dataset_info(trained_on).title}, not {wanted}: "
                              + (advice or f"pass a checkpoint trained on {wanted}"))


def update_checkpoint(path: str | os.PathLike, **fields) -> Path:
    """Add or replace fields (e.g. test metrics) in an existing checkpoint, atomically.

    The new fields are checked like every field read (:func:`check_fields`), so a checkpoint is never
    written with fields it would be refused for when read.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    payload.update(fields)
    check_fields(payload, path)
    _atomic_save(payload, path)
    return path
