"""One training loop for notebooks and CLI: AdamW + OneCycleLR, NLL loss, clipping, optional AMP,
optional label smoothing and an exponential moving average (EMA) of the weights. ``train_batch`` is
its one step, which ``fit`` takes for every batch and ``bench`` times.

``fit`` returns a history (per-epoch lists) and keeps the model with the best validation
accuracy; with ``checkpoint=`` it saves that model after every epoch, plus the state needed to
resume, so Ctrl-C (or SIGTERM, in the CLI) loses at most the epoch in progress. A resumed run
continues exactly as the uninterrupted one would have: the checkpoint holds the optimizer,
scheduler and random-number states, and the loaders draw each epoch from (seed, epoch).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NotRequired, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoints import HISTORY_KEYS, check_optimizer_state, check_resume_state, read_checkpoint, save_checkpoint
from .errors import CheckpointError, TrainingError
from .files import check_destination, hold_interrupts
from .models import architecture_of
from .runtime import amp_dtype, autocast, batch_to, model_device, pick_device, seed_everything


class History(TypedDict):
    """What ``fit`` returns: one entry per epoch in each list."""

    epoch: list[int]
    train_loss: list[float]
    train_accuracy: list[float]
    val_loss: list[float]
    val_accuracy: list[float]
    lr: list[float]  # the learning rate at the start of the epoch
    seconds: list[float]  # training plus validation wall time
    # With an EMA, val_* measure the averaged weights and this the raw ones (the two can be compared).
    raw_val_accuracy: NotRequired[list[float]]


def empty_history() -> History:
    return History(epoch=[], train_loss=[], train_accuracy=[], val_loss=[], val_accuracy=[], lr=[], seconds=[])


#: The longest a training step's gradient may be (its L2 norm over all the weights): a longer one is scaled
#: down to it, so that one unlucky batch cannot throw the weights far off.
CLIP_NORM = 1.0


@dataclass(frozen=True)
class StepSettings:
    """How :func:`train_batch` trains every batch of a run."""

    dtype: torch.dtype | None = None  # autocast's precision (runtime.amp_dtype); None: fp32 throughout
    clip_norm: float | None = CLIP_NORM  # None: no clipping
    label_smoothing: float = 0.0  # of the loss's targets; 0: plain NLL


def train_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    settings: StepSettings,
    *,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: AveragedModel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on the batch ``(x, y)``, already on the device of ``model`` (in train mode):
    (the batch's mean loss, detached, and its log-probabilities), both left on the device, so that a
    loop needs no host sync per batch.

    The loss is cross-entropy with the settings' label smoothing on the model's log-probabilities. With
    fp16, ``scaler`` (:func:`make_scaler`) scales the loss so that small gradients survive, and skips the
    update of a step whose gradients overflowed. After the optimizer's step come ``scheduler``'s and
    ``ema``'s (:func:`make_ema`), if given. ``fit`` trains with this function and ``bench.epoch_breakdown``
    times it, so what is timed is what trains.
    """
    with autocast(x.device, settings.dtype):
        log_probs = model(x)
    # cross_entropy takes logits: log-probabilities are logits whose log-sum-exp is already 0.
    loss = F.cross_entropy(log_probs.float(), y, label_smoothing=settings.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if settings.clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update_parameters(model)
    return loss.detach(), log_probs


def train_step(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_norm: float | None = CLIP_NORM,
    progress: bool = False,
    *,
    label_smoothing: float = 0.0,
    ema: AveragedModel | None = None,
) -> tuple[float, float]:
    """One epoch of training, :func:`train_batch` after :func:`train_batch`: (mean loss, accuracy) over
    the samples seen.

    The loss is cross-entropy with ``label_smoothing`` (0: plain NLL) on the model's log-probabilities;
    ``ema``, if given, is updated from the model after every optimizer step.
    """
    device = torch.device(device)
    settings = StepSettings(dtype, clip_norm, label_smoothing)
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    # One pass, started here: tqdm.auto calls iter() on what it wraps when it is made and again when the
    # loop starts, and each iter() of a training loader begins an epoch (a new shuffle; with workers, new
    # worker processes). Handing it the iterator makes the second call return the same pass.
    batches = iter(loader)
    for x, y in tqdm(batches, total=len(loader), desc="train", leave=False, disable=not progress):
        x, y = batch_to(x, y, device)
        loss, log_probs = train_batch(model, x, y, optimizer, settings, scaler=scaler, scheduler=scheduler, ema=ema)
        # Accumulate on the device: no host sync per batch.
        total_loss += loss * len(y)
        correct += (log_probs.argmax(1) == y).sum()
        seen += len(y)
    return total_loss.item() / seen, correct.item() / seen


@torch.no_grad()
def test_step(
    model: nn.Module, loader, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``loader``, in eval mode."""
    device = torch.device(device)
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in loader:
        x, y = batch_to(x, y, device)
        with autocast(device, dtype):
            log_probs = model(x).float()
        total_loss += F.nll_loss(log_probs, y, reduction="sum")
        correct += (log_probs.argmax(1) == y).sum()
        seen += len(y)
    return total_loss.item() / seen, correct.item() / seen


test_step.__test__ = False  # type: ignore[attr-defined]  # a library function: pytest must not collect it where a test imports it


#: Devices with a fused AdamW kernel in PyTorch.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, steps_per_epoch: int, epochs: int, lr=1e-3, max_lr=1e-2, weight_decay=1e-2):
    """AdamW with a OneCycleLR schedule stepped once per batch: warm up from ``lr`` to ``max_lr``,
    then anneal far below ``lr``.

    AdamW is fused (one kernel for all weights) on the CPU and CUDA, where PyTorch has that kernel;
    elsewhere it is PyTorch's default (foreach). Both compute the same update.
    """
    fused = model_device(model).type in FUSED_ADAMW_DEVICES or None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    # OneCycleLR starts at max_lr / div_factor and ignores the optimizer's lr: make them agree.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, div_factor=max_lr / lr
    )
    return optimizer, scheduler


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """The GradScaler that training in ``dtype`` on ``device`` needs: one for fp16, whose small range
    flushes small gradients to zero unless the loss is scaled up; None for bf16 (fp32's range) and fp32."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and batch-norm statistics, updated with weight
    ``1 - decay`` after every step (:func:`train_batch`); None for ``decay`` None or 0: no average."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None


def learning_rates(epochs: int, steps_per_epoch: int, lr: float = 1e-3, max_lr: float = 1e-2) -> list[float]:
    """The learning rate of each of the ``epochs * steps_per_epoch`` steps ``fit`` takes.

    Steps the very optimizer and scheduler ``fit`` uses, on a throwaway parameter.
    """
    optimizer, scheduler = make_optimizer(nn.Linear(1, 1), steps_per_epoch, epochs, lr, max_lr)
    rates = []
    for _ in range(epochs * steps_per_epoch):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()  # no gradients, so a no-op; keeps the scheduler's order check quiet
        scheduler.step()
    return rates


#: Settings that must match for ``resume=True``: a run continued with others is a different run.
RESUME_SETTINGS = ("epochs", "batch_size", "lr", "max_lr", "weight_decay", "clip_norm", "amp", "label_smoothing",
                   "ema_decay")
#: What a checkpoint written before a setting existed was trained with.
_SETTING_DEFAULTS = {"label_smoothing": 0.0, "ema_decay": None}
#: Checkpoint fields that fit writes itself; everything else in a checkpoint is the caller's metadata.
_OWN_FIELDS = {"format", "arch", "arch_class", "arch_kwargs", "state_dict", "versions", "date", "history", "training",
               "epochs_completed", "best_epoch", "metrics", "resume"}


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    epochs: int,
    lr: float = 1e-3,
    max_lr: float = 1e-2,
    weight_decay: float = 1e-2,
    clip_norm: float | None = CLIP_NORM,
    amp: bool | None = None,
    device: str | torch.device | None = None,
    label_smoothing: float = 0.0,
    ema_decay: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    metadata: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> History:
    """Train ``model`` for ``epochs`` and return its history, one list entry per epoch.

    ``label_smoothing`` softens the targets of the loss (0: none). With ``ema_decay`` (say 0.999), an
    exponential moving average of the weights and batch-norm statistics is updated after every step, and
    it is the averaged model that is validated, kept and saved (``history["raw_val_accuracy"]`` has the
    raw weights' validation accuracy, for comparison).

    The model ends with the weights of its best validation epoch. ``checkpoint`` is saved after
    every epoch (the best weights, with ``metadata`` such as the normalisation constants) and
    carries a ``resume`` state until training completes; ``resume=True`` continues from it, with
    the same settings and metadata. A loader with a ``set_epoch(epoch)`` method is told each epoch
    so that it can draw its shuffling and augmentation from (seed, epoch).
    """
    _check_settings(epochs, lr, max_lr, weight_decay, clip_norm, label_smoothing, ema_decay)
    device = pick_device(device)
    dtype = amp_dtype(device, amp)
    model.to(device).to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, len(train_loader), epochs, lr, max_lr, weight_decay)
    scaler, ema = make_scaler(device, dtype), make_ema(model, ema_decay)
    validated = ema.module if ema is not None else model
    history, best_accuracy, best_state, start_epoch = empty_history(), -1.0, None, 0
    settings = {
        "epochs": epochs, "lr": lr, "max_lr": max_lr, "weight_decay": weight_decay, "clip_norm": clip_norm,
        "batch_size": getattr(train_loader, "batch_size", None),
        "amp": str(dtype).removeprefix("torch.") if dtype else "off", "device": str(device),
        "label_smoothing": label_smoothing, "ema_decay": ema_decay,
    }
    metadata = dict(metadata or {})

    if resume:
        saved = _restore(checkpoint, model, optimizer, scheduler, scaler, settings, metadata, ema)
        start_epoch, history, best_state, metadata = saved
        best_accuracy = max(history["val_accuracy"])
        if log and start_epoch < epochs:
            log(f"resuming {checkpoint} after epoch {start_epoch}/{epochs}")
    elif checkpoint is not None:
        check_writable(checkpoint)

    def save(final: bool) -> None:
        if checkpoint is None:
            return
        resume_state = None if final else {
            "epoch": epoch + 1,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "rng": _rng_states(),
            **({"ema": {k: v.detach().cpu() for k, v in ema.state_dict().items()}} if ema is not None else {}),
        }
        best_epoch = int(np.argmax(history["val_accuracy"]))
        with hold_interrupts(), _clear_write_errors(checkpoint):
            save_checkpoint(
                checkpoint, model, state_dict=best_state, **metadata, history=history, training=settings,
                epochs_completed=len(history["epoch"]), best_epoch=best_epoch + 1,
                metrics={"val_loss": history["val_loss"][best_epoch],
                         "val_accuracy": history["val_accuracy"][best_epoch]},
                resume=resume_state,
            )

    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        started = time.perf_counter()
        current_lr = scheduler.get_last_lr()[0]
        train_loss, train_accuracy = train_step(
            model, train_loader, optimizer, scheduler, device, dtype, scaler, clip_norm, progress,
            label_smoothing=label_smoothing, ema=ema,
        )
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in epoch {epoch + 1}: the learning rate is too high for "
                f"this model (peak {max_lr:g}); lower it"
                + (f" ({checkpoint} keeps the best epoch so far)" if checkpoint is not None and best_state else "")
            )
        val_loss, val_accuracy = test_step(validated, val_loader, device, dtype)
        if ema is not None:
            history.setdefault("raw_val_accuracy", []).append(test_step(model, val_loader, device, dtype)[1])
        seconds = time.perf_counter() - started
        for key, value in zip(
            HISTORY_KEYS, (epoch + 1, train_loss, train_accuracy, val_loss, val_accuracy, current_lr, seconds),
            strict=True,
        ):
            history[key].append(value)  # type: ignore[literal-required]
        improved = val_accuracy > best_accuracy
        if improved:
            best_accuracy = val_accuracy
            best_state = {k: v.detach().clone() for k, v in validated.state_dict().items()}
        if checkpoint is not None and epoch + 1 < epochs:
            save(final=False)  # every epoch: the resume state moves on even when the best does not
        if log:  # after the save: an epoch that has been reported is never lost
            log(
                f"epoch {epoch + 1:>3}/{epochs}  train loss {train_loss:.4f} acc {train_accuracy:.2%}  "
                f"val loss {val_loss:.4f} acc {val_accuracy:.2%}  {seconds:5.1f}s{'  *' if improved else ''}"
            )

    if best_state is not None:
        model.load_state_dict(best_state)
        if checkpoint is not None:
            save(final=True)
    return history


def _check_settings(
    epochs: int, lr: float, max_lr: float, weight_decay: float, clip_norm: float | None, label_smoothing: float = 0.0,
    ema_decay: float | None = None,
) -> None:
    """Refuse settings that would train a NaN model, before any work is done."""
    if not (isinstance(epochs, int) and epochs > 0):
        raise TrainingError(f"epochs must be a positive whole number, not {epochs!r}")
    positive = {"lr": lr, "max_lr": max_lr, **({"clip_norm": clip_norm} if clip_norm is not None else {})}
    for name, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise TrainingError(f"{name} must be a finite positive number, not {value}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise TrainingError(f"weight_decay must be a finite number of 0 or more, not {weight_decay}")
    if not 0 <= label_smoothing < 1:
        raise TrainingError(f"label_smoothing must be from 0 to below 1, not {label_smoothing}")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise TrainingError(f"ema_decay must be between 0 and 1 (say 0.999), or None for no average, not {ema_decay}")
    if max_lr < lr:
        raise TrainingError(
            f"max_lr ({max_lr:g}) is below lr ({lr:g}): the one-cycle schedule warms up from lr to max_lr"
        )


def check_writable(path: str | os.PathLike) -> Path:
    """Make sure a checkpoint can be written at ``path`` before hours are spent training for it.

    Creates the folder, then writes and removes a probe file in it. Raises one line with the reason:
    the path is a folder or a special file (``files.check_destination``), a parent is a file, the
    folder is read-only, or the disk is full.
    """
    path = check_destination(Path(path))
    with _clear_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    return path


@contextlib.contextmanager
def _clear_write_errors(path: str | os.PathLike) -> Iterator[None]:
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


def _rng_states() -> dict:
    """The global random states a training epoch draws from (dropout, and anything the loader uses)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _restore(checkpoint, model, optimizer, scheduler, scaler, settings: dict, metadata: dict, ema=None):
    """Load the resume state into the objects; return (next epoch, history, best weights, metadata).

    Every failure is one CheckpointError line: no resume state (the run finished), another run (its
    architecture, settings or metadata differ from this one's), or a damaged state
    (``checkpoints.check_resume_state``), all found before anything is loaded.
    """
    if checkpoint is None:
        raise CheckpointError("resume=True needs the checkpoint to resume from: pass checkpoint=PATH.")
    payload = read_checkpoint(checkpoint, map_location=model_device(model))
    if not payload.get("resume"):
        raise CheckpointError(
            f"{checkpoint} finished training ({payload.get('epochs_completed')} epochs): nothing to resume."
        )
    saved_metadata = _check_same_run(payload, checkpoint, model, settings, metadata)
    fresh = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    state = check_resume_state(payload, checkpoint, fresh)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{checkpoint} does not fit this model or optimizer: {error}".splitlines()[0]) from None
    check_optimizer_state(optimizer, checkpoint)
    if state.get("rng"):
        _set_rng_states(state["rng"])
    return state["epoch"], payload["history"], payload["state_dict"], {**saved_metadata, **metadata}


def _check_same_run(payload: dict, checkpoint, model: nn.Module, settings: dict, metadata: dict) -> dict:
    """Raise CheckpointError unless ``payload`` is a run of ``model``'s architecture with these ``settings``
    and ``metadata``; return its metadata. The architecture comes first: another one also has other
    default settings, and "max_lr differs" would hide the real difference."""
    _check_same_architecture(payload, checkpoint, model)
    saved_settings = payload.get("training", {})
    for key in RESUME_SETTINGS:
        saved = saved_settings.get(key, _SETTING_DEFAULTS.get(key))
        before, now = _shown(saved), _shown(settings[key])
        if saved != settings[key]:
            raise CheckpointError(
                f"{checkpoint} was started with {key}={before}, this run asks for {key}={now}: "
                f"resume it with {key}={before}, or train into a new checkpoint"
            )
    saved_metadata = {key: value for key, value in payload.items() if key not in _OWN_FIELDS}
    # The seed and the data come first: a different normalisation is only their consequence.
    for key in sorted(metadata, key=lambda key: (key not in ("seed", "data"), key)):
        value = metadata[key]
        if key in saved_metadata and saved_metadata[key] != value:
            raise CheckpointError(
                f"{checkpoint} was started with {key}={saved_metadata[key]}, this run has {key}={value}: resume it "
                "with the same data and seed, or train into a new checkpoint"
            )
    return saved_metadata


def _check_same_architecture(payload: dict, checkpoint, model: nn.Module) -> None:
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
        f"{checkpoint} was started with a {saved!r} model, this run trains a {arch or type(model).__qualname__!r}: "
        f"resume it with the same architecture (--model {saved}), or train into a new checkpoint"
    )


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
    from .config import dataset_models_dir
    from .data import dataset_info, load_splits
    from .loaders import make_loaders
    from .models import build_model

    folder = dataset_models_dir(dataset_info(dataset).name, quick)
    full = folder / f"{arch}.pt"
    if path is not None or full.exists():
        return _load_for(dataset, path if path is not None else full, device, arch)
    standin = folder / "standin" / f"{arch}.pt"
    if log:
        log(f"no fully trained {arch} at {full}: using a small stand-in ({train_limit:,} images, {epochs} epochs), "
            f"{'trained just now' if not standin.exists() else 'trained earlier'} at {standin}")
    if not standin.exists():
        seed_everything(0)
        splits = load_splits(seed=0, train_limit=train_limit, test_limit=1000, dataset=dataset)
        train_loader, val_loader, _ = make_loaders(splits, batch_size=64, augment="none", device=pick_device(device))
        fit(
            build_model(arch), train_loader, val_loader, epochs, device=device, checkpoint=standin,
            metadata={"normalization": {"mean": splits.mean, "std": splits.std}, "seed": 0, "standin": True,
                      "data": {"dataset": dataset, "train_limit": train_limit, "augment": "none"}},
            progress=False, log=None,
        )
    return _load_for(dataset, standin, device, arch)


def _load_for(dataset: str, path: str | os.PathLike, device, arch: str):
    """load_checkpoint, refusing a checkpoint trained on another dataset (old ones without a record are MNIST's)."""
    from .checkpoints import load_checkpoint, require_dataset

    model, info = load_checkpoint(path, device=pick_device(device), arch=arch)
    require_dataset(info, path, dataset)
    return model, info
