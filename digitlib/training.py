"""One training loop for notebooks and CLI: AdamW + OneCycleLR, NLL loss, clipping, optional AMP,
optional label smoothing and an exponential moving average (EMA) of the weights. ``train_batch`` is
its one step, which ``fit`` takes for every batch and ``bench`` times.

``fit`` returns a history (per-epoch lists) and keeps the model with the best validation
accuracy; with ``checkpoint=`` it saves that model after every epoch, plus the state needed to
resume, so Ctrl-C (or SIGTERM, in the CLI) loses at most the epoch in progress. What a run is trained
with is one ``config.TrainConfig``; what it takes to survive an interruption lives in ``runstate``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, NotRequired, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import runstate
from .checkpoint_checks import HISTORY_KEYS
from .config import CLIP_NORM, TrainConfig
from .errors import TrainingError
from .runtime import amp_dtype, autocast, batch_to, model_device, pick_device


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


def make_optimizer(model: nn.Module, steps_per_epoch: int, config: TrainConfig):
    """AdamW with a OneCycleLR schedule stepped once per batch: warm up from ``config.lr`` to
    ``config.max_lr``, then anneal far below ``config.lr``, over ``config.epochs``.

    AdamW is fused (one kernel for all weights) on the CPU and CUDA, where PyTorch has that kernel;
    elsewhere it is PyTorch's default (foreach). Both compute the same update.
    """
    fused = model_device(model).type in FUSED_ADAMW_DEVICES or None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    # OneCycleLR starts at max_lr / div_factor and ignores the optimizer's lr: make them agree.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        div_factor=config.max_lr / config.lr,
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


def learning_rates(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The learning rate of each of the ``config.epochs * steps_per_epoch`` steps ``fit`` takes.

    Steps the very optimizer and scheduler ``fit`` uses, on a throwaway parameter.
    """
    optimizer, scheduler = make_optimizer(nn.Linear(1, 1), steps_per_epoch, config)
    rates = []
    for _ in range(config.epochs * steps_per_epoch):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()  # no gradients, so a no-op; keeps the scheduler's order check quiet
        scheduler.step()
    return rates


def fit(
    model: nn.Module,
    train_loader,
    val_loader,
    config: TrainConfig,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    metadata: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> History:
    """Train ``model`` as ``config`` says and return its history, one list entry per epoch.

    The model ends with the weights of its best validation epoch. With ``config.ema_decay`` it is the
    exponential moving average of the weights that is validated, kept and saved
    (``history["raw_val_accuracy"]`` has the raw weights' accuracy, for comparison). ``checkpoint`` is
    saved after every epoch (the best weights, ``config`` verbatim, and ``metadata`` such as the
    normalisation constants: ``checkpoints.run_metadata``) with the state to resume from until training
    completes; ``resume=True`` continues from it (``runstate``), with an equal config and the same
    metadata. A loader with a ``set_epoch(epoch)`` method is told each epoch, so that it can draw its
    shuffling and augmentation from (seed, epoch).
    """
    check_config(config, train_loader)
    device = pick_device(device)
    dtype = amp_dtype(device, config.amp)
    run = _start(model.to(device).to(memory_format=torch.channels_last), len(train_loader), config, device, dtype)
    run.metadata = dict(metadata or {})
    if resume:
        runstate.restore(checkpoint, run)
        if log and run.next_epoch < config.epochs:
            log(f"resuming {checkpoint} after epoch {run.next_epoch}/{config.epochs}")
    elif checkpoint is not None:
        runstate.check_writable(checkpoint)
    validated = run.ema.module if run.ema is not None else model
    for epoch in range(run.next_epoch, config.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        started, lr = time.perf_counter(), run.scheduler.get_last_lr()[0]
        train_loss, train_accuracy = train_step(
            model, train_loader, run.optimizer, run.scheduler, device, dtype, run.scaler, config.clip_norm, progress,
            label_smoothing=config.label_smoothing, ema=run.ema,
        )
        _check_finite(train_loss, epoch, config, checkpoint if run.best_state else None)
        val_loss, val_accuracy = test_step(validated, val_loader, device, dtype)
        if run.ema is not None:
            run.history.setdefault("raw_val_accuracy", []).append(test_step(model, val_loader, device, dtype)[1])
        improved = val_accuracy > max(run.history["val_accuracy"], default=-1.0)
        seconds = time.perf_counter() - started
        for key, value in zip(HISTORY_KEYS, (epoch + 1, train_loss, train_accuracy, val_loss, val_accuracy, lr,
                                             seconds), strict=True):
            run.history[key].append(value)
        if improved:
            run.best_state = {k: v.detach().clone() for k, v in validated.state_dict().items()}
        if checkpoint is not None and epoch + 1 < config.epochs:
            runstate.save_epoch(checkpoint, run, final=False)  # every epoch: the resume state moves on
        if log:  # after the save: an epoch that has been reported is never lost
            log(f"epoch {epoch + 1:>3}/{config.epochs}  train loss {train_loss:.4f} acc {train_accuracy:.2%}  "
                f"val loss {val_loss:.4f} acc {val_accuracy:.2%}  {seconds:5.1f}s{'  *' if improved else ''}")
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
        if checkpoint is not None:
            runstate.save_epoch(checkpoint, run, final=True)
    return cast(History, run.history)


def _start(model: nn.Module, steps_per_epoch: int, config: TrainConfig, device: torch.device,
           dtype: torch.dtype | None) -> runstate.Run:
    """A fresh run of ``model``: its optimizer and schedule, a gradient scaler for fp16 (bf16 needs
    none), and the average of the weights if ``config`` keeps one."""
    optimizer, scheduler = make_optimizer(model, steps_per_epoch, config)
    scaler, ema = make_scaler(device, dtype), make_ema(model, config.ema_decay)
    precision = str(dtype).removeprefix("torch.") if dtype else "off"
    settings = {**asdict(config), "device": str(device), "precision": precision}
    return runstate.Run(model, optimizer, scheduler, scaler, ema, settings)


def _check_finite(train_loss: float, epoch: int, config: TrainConfig, kept: str | os.PathLike | None) -> None:
    """Stop a run whose loss stopped being a number, before a broken model is validated or saved."""
    if not math.isfinite(train_loss):
        raise TrainingError(
            f"the training loss became {train_loss} in epoch {epoch + 1}: the learning rate is too high for "
            f"this model (peak {config.max_lr:g}); lower it"
            + (f" ({kept} keeps the best epoch so far)" if kept else "")
        )


def check_config(config: TrainConfig, train_loader=None) -> None:
    """Refuse settings that would train a NaN model, or that the checkpoint would misreport, before any
    work is done: one TrainingError line each."""
    if not isinstance(config, TrainConfig):
        raise TrainingError(f"fit takes a TrainConfig (dl.config.run_config(arch)), not {type(config).__name__}")
    if not (isinstance(config.epochs, int) and config.epochs > 0):
        raise TrainingError(f"epochs must be a positive whole number, not {config.epochs!r}")
    positive = {"lr": config.lr, "max_lr": config.max_lr,
                **({"clip_norm": config.clip_norm} if config.clip_norm is not None else {})}
    for name, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise TrainingError(f"{name} must be a finite positive number, not {value}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise TrainingError(f"weight_decay must be a finite number of 0 or more, not {config.weight_decay}")
    if not 0 <= config.label_smoothing < 1:
        raise TrainingError(f"label_smoothing must be from 0 to below 1, not {config.label_smoothing}")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise TrainingError(
            f"ema_decay must be between 0 and 1 (say 0.999), or None for no average, not {config.ema_decay}")
    if config.max_lr < config.lr:
        raise TrainingError(
            f"max_lr ({config.max_lr:g}) is below lr ({config.lr:g}): the one-cycle schedule warms up from lr to max_lr"
        )
    loader_batch = getattr(train_loader, "batch_size", None)
    if loader_batch is not None and loader_batch != config.batch_size:
        raise TrainingError(
            f"the training loader's batches hold {loader_batch} images, the config says "
            f"batch_size={config.batch_size}: build the loaders with config.batch_size "
            "(the learning rates were chosen for it)"
        )


