"""One training loop for notebooks and CLI: AdamW + OneCycleLR, NLL loss, clipping, optional AMP.

``fit`` returns a history (per-epoch lists) and keeps the model with the best validation
accuracy; with ``checkpoint=`` it saves that model after every improving epoch, plus the state
needed to resume, so Ctrl-C loses at most the epoch in progress.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import read_checkpoint, save_checkpoint
from .errors import CheckpointError, DigitlibError

#: Settings of the README's full runs, per architecture: the CLI's defaults and the notebooks' full
#: mode. For the CNN a one-cycle peak of 0.003 beat 0.01 (99.50 % against 99.36 % test accuracy).
FULL_RUNS = {"cnn": {"epochs": 15, "max_lr": 3e-3}, "resnet": {"epochs": 25, "max_lr": 1e-2}}

HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else the best available: cuda, then mps, then cpu."""
    if preferred is not None and str(preferred) != "auto":
        try:
            device = torch.device(preferred)
        except RuntimeError:
            raise DigitlibError(f"{preferred!r} is not a device: use cuda, mps, cpu or auto.") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(device.type, False):
            raise DigitlibError(f"device {preferred!r} is not available here: use cpu or auto.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device, amp: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for full fp32.

    ``amp=None`` means: on for CUDA, off elsewhere. A CPU without bf16 instructions emulates
    bf16 and only gets slower under autocast; one with them (AVX-512 BF16, AMX) may gain, so
    there it is worth measuring (notebook 03, ``python -m digitlib bench --amp``).
    CUDA uses bf16 where the GPU supports it, else fp16 (which needs a GradScaler).
    """
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device):
    # channels_last: measured 10-25 % faster convolutions on CPU, and what tensor cores want.
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_step(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_norm: float | None = 1.0,
    progress: bool = False,
) -> tuple[float, float]:
    """One epoch of training: (mean loss, accuracy) over the samples seen."""
    device = torch.device(device)
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y in tqdm(loader, desc="train", leave=False, disable=not progress):
        x, y = _to_device(x, y, device)
        with _autocast(device, dtype):
            log_probs = model(x)
        loss = F.nll_loss(log_probs.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        else:
            loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # Accumulate on the device: no host sync per batch.
        total_loss += loss.detach() * len(y)
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
        x, y = _to_device(x, y, device)
        with _autocast(device, dtype):
            log_probs = model(x).float()
        total_loss += F.nll_loss(log_probs, y, reduction="sum")
        correct += (log_probs.argmax(1) == y).sum()
        seen += len(y)
    return total_loss.item() / seen, correct.item() / seen


test_step.__test__ = False  # a library function: pytest must not collect it where a test imports it


def make_optimizer(model: nn.Module, steps_per_epoch: int, epochs: int, lr=1e-3, max_lr=1e-2, weight_decay=1e-2):
    """AdamW with a OneCycleLR schedule stepped once per batch: warm up from ``lr`` to ``max_lr``,
    then anneal far below ``lr``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    # OneCycleLR starts at max_lr / div_factor and ignores the optimizer's lr: make them agree.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, div_factor=max_lr / lr
    )
    return optimizer, scheduler


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


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    epochs: int,
    lr: float = 1e-3,
    max_lr: float = 1e-2,
    weight_decay: float = 1e-2,
    clip_norm: float | None = 1.0,
    amp: bool | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    metadata: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, list]:
    """Train ``model`` for ``epochs`` and return its history, one list entry per epoch.

    The model ends with the weights of its best validation epoch. ``checkpoint`` is saved
    after each epoch that improves validation accuracy (with ``metadata``, e.g. the
    normalisation constants) and carries a ``resume`` state until training completes;
    ``resume=True`` continues from it.
    """
    device = pick_device(device)
    dtype = amp_dtype(device, amp)
    model.to(device).to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, len(train_loader), epochs, lr, max_lr, weight_decay)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    history: dict[str, list] = {key: [] for key in HISTORY_KEYS}
    best_accuracy, best_state, start_epoch = -1.0, None, 0
    settings = {
        "epochs": epochs, "lr": lr, "max_lr": max_lr, "weight_decay": weight_decay, "clip_norm": clip_norm,
        "batch_size": train_loader.batch_size, "amp": str(dtype).removeprefix("torch.") if dtype else "off",
        "device": str(device),
    }

    if resume:
        start_epoch, history, best_state = _restore(checkpoint, model, optimizer, scheduler, scaler, epochs)
        best_accuracy = max(history["val_accuracy"])
        if log and start_epoch < epochs:
            log(f"resuming {checkpoint} after epoch {start_epoch}/{epochs}")

    def save(final: bool) -> None:
        if checkpoint is None:
            return
        resume_state = None if final else {
            "epoch": epoch + 1,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
        }
        best_epoch = int(np.argmax(history["val_accuracy"]))
        save_checkpoint(
            checkpoint, model, state_dict=best_state, **(metadata or {}), history=history, training=settings,
            epochs_completed=len(history["epoch"]), best_epoch=best_epoch + 1,
            metrics={"val_loss": history["val_loss"][best_epoch], "val_accuracy": history["val_accuracy"][best_epoch]},
            resume=resume_state,
        )

    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        current_lr = scheduler.get_last_lr()[0]
        train_loss, train_accuracy = train_step(
            model, train_loader, optimizer, scheduler, device, dtype, scaler, clip_norm, progress
        )
        val_loss, val_accuracy = test_step(model, val_loader, device, dtype)
        seconds = time.perf_counter() - started
        for key, value in zip(HISTORY_KEYS, (epoch + 1, train_loss, train_accuracy, val_loss, val_accuracy, current_lr, seconds)):
            history[key].append(value)
        improved = val_accuracy > best_accuracy
        if improved:
            best_accuracy = val_accuracy
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if log:
            log(
                f"epoch {epoch + 1:>3}/{epochs}  train loss {train_loss:.4f} acc {train_accuracy:.2%}  "
                f"val loss {val_loss:.4f} acc {val_accuracy:.2%}  {seconds:5.1f}s{'  *' if improved else ''}"
            )
        if checkpoint is not None and epoch + 1 < epochs:
            save(final=False)  # every epoch: the resume state moves on even when the best does not

    if best_state is not None:
        model.load_state_dict(best_state)
        if checkpoint is not None:
            save(final=True)
    return history


def _restore(checkpoint, model, optimizer, scheduler, scaler, epochs):
    if checkpoint is None:
        raise CheckpointError("resume=True needs the checkpoint to resume from: pass checkpoint=PATH.")
    payload = read_checkpoint(checkpoint, map_location=next(model.parameters()).device)
    state = payload.get("resume")
    planned = payload.get("training", {}).get("epochs")
    if not state:
        raise CheckpointError(f"{checkpoint} finished training ({payload.get('epochs_completed')} epochs): nothing to resume.")
    if planned != epochs:
        raise CheckpointError(f"{checkpoint} was started for {planned} epochs; resume it with epochs={planned}.")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{checkpoint} does not fit this model or optimizer: {error}".splitlines()[0]) from None
    return state["epoch"], payload["history"], payload["state_dict"]


def load_or_train(
    arch: str,
    path: str | os.PathLike | None = None,
    epochs: int = 2,
    train_limit: int = 6000,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
):
    """(model in eval mode, checkpoint info) from ``path`` (default ``models_dir()/<arch>.pt``).

    When there is no checkpoint yet, train a small one (``train_limit`` images, ``epochs``,
    no augmentation: a minute on a CPU), save it there, and say so through ``log``.
    """
    from .checkpoints import load_checkpoint
    from .config import models_dir
    from .data import load_splits, make_loaders
    from .models import build_model

    path = Path(path) if path is not None else models_dir() / f"{arch}.pt"
    if not path.exists():
        if log:
            log(f"no checkpoint at {path}: training a small {arch} ({train_limit:,} images, {epochs} epochs) instead")
        seed_everything(0)
        splits = load_splits(seed=0, train_limit=train_limit, test_limit=1000)
        train_loader, val_loader, _ = make_loaders(splits, batch_size=64, augment=False, num_workers=0)
        fit(
            build_model(arch), train_loader, val_loader, epochs, device=device, checkpoint=path,
            metadata={"normalization": {"mean": splits.mean, "std": splits.std}, "seed": 0},
            progress=False, log=None,
        )
    return load_checkpoint(path, device=pick_device(device), arch=arch)
