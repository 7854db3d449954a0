"""Checkpoints: weights plus everything needed to use and trust them, written atomically."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import platform
import tempfile
import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from .errors import CheckpointError
from .models import ARCHITECTURES, architecture_of, build_model

FORMAT = "digitlib-checkpoint-v1"


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
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

    The file is written next to its destination and renamed over it, so an interruption
    (Ctrl-C, a full disk) leaves the previous checkpoint whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "arch": architecture_of(model),
        "arch_kwargs": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()},
        "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    _atomic_save(payload, path)
    return path


def _atomic_save(payload: dict, path: Path) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; a checkpoint is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's contents as a dict, loaded with ``weights_only=True``.

    Raises :class:`CheckpointError` with one clear sentence for a missing file, a file that is
    not a checkpoint, or a corrupt one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: train one with `python -m digitlib train --out {path}` "
            "or run notebooks 02 and 03."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({_first_line(error)}): it may be truncated or "
            "another kind of file. Delete it and train again."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a digitlib checkpoint (no '{FORMAT}' marker). "
            "Pass a file written by digitlib's training."
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``: (model in eval mode on ``device``, the other fields).

    ``arch`` (``"cnn"``/``"resnet"``), when given, must match the checkpoint's architecture.
    """
    payload = read_checkpoint(path, map_location=device)
    saved_arch = payload.get("arch")
    if saved_arch not in ARCHITECTURES:
        raise CheckpointError(f"{path} names an unknown architecture {saved_arch!r}; known: {', '.join(ARCHITECTURES)}.")
    if arch is not None and arch != saved_arch:
        raise CheckpointError(f"{path} holds a {saved_arch!r} model, not the {arch!r} that was asked for.")
    model = build_model(saved_arch, **payload.get("arch_kwargs", {}))
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"{path}'s weights do not fit a {saved_arch!r} model ({_first_line(error)}). "
            "It was written by a different version of the model: train it again."
        ) from None
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval(), info


def update_checkpoint(path: str | os.PathLike, **fields) -> Path:
    """Add or replace fields (e.g. test metrics) in an existing checkpoint, atomically."""
    path = Path(path)
    payload = read_checkpoint(path)
    payload.update(fields)
    _atomic_save(payload, path)
    return path


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch's weights-only refusal and load_state_dict's mismatches put the reason on a later
    # line, under a header that ends in a colon.
    details = [line for line in lines if not line.endswith(":")] or lines
    reason = next((line for line in lines if "WeightsUnpickler error" in line), details[0] if details else "")
    if len(reason) > 200:
        reason = reason[:199] + "…"
    return reason or type(error).__name__
