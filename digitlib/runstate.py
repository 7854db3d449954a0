"""What lets a long training run survive, kept apart from the loop in ``training``: the state saved
with every epoch's checkpoint, resuming from it (and refusing to continue another run), and disk
errors as one line.

A resumed run continues exactly as the uninterrupted one would have: the checkpoint holds the
optimizer, scheduler, gradient-scaler, weight-average and random-number states, and the loaders draw
each epoch from (seed, epoch).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .checkpoint_checks import HISTORY_KEYS, check_optimizer_state, check_resume_state
from .checkpoints import read_checkpoint, save_checkpoint
from .errors import CheckpointError
from .files import check_destination, hold_interrupts
from .models import architecture_of
from .runtime import model_device

#: Checkpoint fields that a training run writes itself; every other field is the caller's metadata.
RUN_FIELDS = frozenset({"format", "arch", "arch_class", "arch_kwargs", "state_dict", "versions", "date", "history",
                        "training", "epochs_completed", "best_epoch", "metrics", "resume"})
#: Fields of the saved "training" settings that describe the machine, not the run: not compared on resume.
MACHINE_FIELDS = frozenset({"device", "precision"})


@dataclass
class Run:
    """The objects one training run updates, and what it has achieved so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    ema: AveragedModel | None
    settings: dict  # the TrainConfig's fields plus the device and precision, as saved in the checkpoint
    metadata: dict = field(default_factory=dict)  # the caller's fields: normalisation, seed, data
    history: dict = field(default_factory=lambda: {key: [] for key in HISTORY_KEYS})
    best_state: dict | None = None  # the weights of the best validation epoch so far
    next_epoch: int = 0


def save_epoch(path: str | os.PathLike, run: Run, final: bool) -> None:
    """Write ``run`` to ``path``: the best weights, history and settings, and unless ``final`` the state to
    resume from. Ctrl-C waits until the file is whole; a disk error is one CheckpointError line."""
    history = run.history
    best = int(np.argmax(history["val_accuracy"]))
    with hold_interrupts(), clear_write_errors(path):
        save_checkpoint(
            path, run.model, state_dict=run.best_state, **run.metadata, history=history, training=run.settings,
            epochs_completed=len(history["epoch"]), best_epoch=best + 1,
            metrics={"val_loss": history["val_loss"][best], "val_accuracy": history["val_accuracy"][best]},
            resume=None if final else _resume_state(run),
        )


def _resume_state(run: Run) -> dict:
    """Everything beyond the best weights that the next epoch depends on."""
    state = {
        "epoch": len(run.history["epoch"]),
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    if run.ema is not None:
        state["ema"] = {k: v.detach().cpu() for k, v in run.ema.state_dict().items()}
    return state


def restore(path: str | os.PathLike | None, run: Run) -> None:
    """Load the resume state at ``path`` into ``run``'s objects and fill in its history, best weights,
    next epoch and saved metadata.

    Every failure is one CheckpointError line, found before anything is loaded: no checkpoint, no
    resume state (the run finished), another run (its architecture, settings or metadata differ from
    ``run``'s), or a damaged state (``checkpoint_checks.check_resume_state``).
    """
    if path is None:
        raise CheckpointError("resume=True needs the checkpoint to resume from: pass checkpoint=PATH.")
    payload = read_checkpoint(path, map_location=model_device(run.model))
    if not payload.get("resume"):
        done = payload.get("epochs_completed")
        raise CheckpointError(f"{path} finished training ({done} epochs): nothing to resume.")
    saved_metadata = check_same_run(payload, path, run)
    fresh = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict()}
    state = check_resume_state(payload, path, fresh)
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} does not fit this model or optimizer: {error}".splitlines()[0]) from None
    check_optimizer_state(run.optimizer, path)
    if state.get("rng"):
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    run.next_epoch, run.history, run.best_state = state["epoch"], payload["history"], payload["state_dict"]
    run.metadata = {**saved_metadata, **run.metadata}


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_same_run(payload: Mapping, path: str | os.PathLike, run: Run) -> dict:
    """Raise CheckpointError unless ``payload`` is a run of ``run``'s architecture with its settings and
    metadata; return the saved metadata. The architecture comes first: another one also has other
    settings, and "max_lr differs" would hide the real difference. The settings are compared field by
    field, as saved; the machine's (device, precision) may differ."""
    _check_same_architecture(payload, path, run.model)
    saved_settings = payload.get("training", {})
    # The batch size first: the learning rates follow from it, and "max_lr differs" would hide the cause.
    for key in sorted(run.settings, key=lambda key: key != "batch_size"):
        saved, now = saved_settings.get(key), run.settings[key]
        if key not in MACHINE_FIELDS and saved != now:
            raise CheckpointError(
                f"{path} was started with {key}={_shown(saved)}, this run asks for {key}={_shown(now)}: "
                f"resume it with {key}={_shown(saved)}, or train into a new checkpoint"
            )
    saved_metadata = {key: value for key, value in payload.items() if key not in RUN_FIELDS}
    # The seed and the data come first: a different normalisation is only their consequence.
    for key in sorted(run.metadata, key=lambda key: (key not in ("seed", "data"), key)):
        value = run.metadata[key]
        if key in saved_metadata and saved_metadata[key] != value:
            raise CheckpointError(
                f"{path} was started with {key}={saved_metadata[key]}, this run has {key}={value}: resume it "
                "with the same data and seed, or train into a new checkpoint"
            )
    return saved_metadata


def _check_same_architecture(payload: Mapping, path: str | os.PathLike, model: nn.Module) -> None:
    """Raise CheckpointError unless the run in ``payload`` trained ``model``'s architecture (for a model digitlib
    does not know, its class, which is what the checkpoint records)."""
    try:
        arch = architecture_of(model)
    except ValueError:
        arch = None
    if payload.get("arch") == arch and (arch is not None or payload.get("arch_class") == type(model).__qualname__):
        return
    saved = payload.get("arch") or payload.get("arch_class")
    raise CheckpointError(
        f"{path} was started with a {saved!r} model, this run trains a {arch or type(model).__qualname__!r}: "
        f"resume it with the same architecture (--model {saved}), or train into a new checkpoint"
    )


def check_writable(path: str | os.PathLike) -> Path:
    """Make sure a checkpoint can be written at ``path`` before hours are spent training for it.

    Creates the folder, then writes and removes a probe file in it. Raises one line with the reason:
    the path is a folder or a special file (``files.check_destination``), a parent is a file, the
    folder is read-only, or the disk is full.
    """
    path = check_destination(Path(path))
    with clear_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    return path


@contextlib.contextmanager
def clear_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into one CheckpointError line that names the cause."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            reason = "the disk is full; free some space"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = "permission denied; choose a writable folder"
        elif error.errno in (errno.ENOTDIR, errno.EEXIST):
            reason = "a part of the path is a file, not a folder; choose another path"
        else:
            reason = f"{error.strerror or error}; choose another path"
        raise CheckpointError(f"cannot write the checkpoint {path}: {reason}") from None
