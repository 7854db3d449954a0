"""Timing: where training time goes (``python -m digitlib bench``, notebook 07) and how fast a
trained model answers (``python -m digitlib evaluate``, notebook 05).

``epoch_breakdown`` times the three parts of ``fit``'s own training step separately (making the batch,
forward + backward, the optimiser step) so that a slow input pipeline cannot hide behind the
network; ``time_to_accuracy`` trains the CNN and reports the wall time until its validation accuracy
first reaches a target; ``single_image_latency`` and ``batch_throughput`` time inference.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from . import training
from .config import FULL_RUNS
from .data import MnistSplits
from .errors import DataError
from .loaders import make_loaders
from .models import build_model
from .preprocess import preprocess
from .runtime import amp_dtype, batch_to, model_device, pick_device, seed_everything, torch_threads


@dataclass(frozen=True)
class EpochTiming:
    """Seconds spent in each part of ``batches`` training steps, and what that makes an epoch."""

    model: str
    device: str
    amp: str
    pipeline: str  # the loader's augmentation: device, albumentations or none
    batch_size: int
    workers: int
    threads: int
    batches: int
    data_s: float  # waiting for the next batch: loading, augmenting, normalising, copying
    forward_backward_s: float  # the forward pass, the loss, the backward pass and gradient clipping
    optimizer_s: float  # the optimizer's update (AdamW), the schedule and any average of the weights
    epoch_images: int  # training images in one epoch

    @property
    def total_s(self) -> float:
        return self.data_s + self.forward_backward_s + self.optimizer_s

    @property
    def images_per_s(self) -> float:
        return self.batches * self.batch_size / self.total_s

    @property
    def epoch_s(self) -> float:
        """A whole training epoch at this rate (validation not included)."""
        return self.epoch_images / self.images_per_s


def epoch_breakdown(
    arch: str,
    splits: MnistSplits,
    batch_size: int = 128,
    augment: str = "device",
    batches: int | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    threads: int | None = None,
    num_workers: int | None = None,
    channels_last: bool = True,
) -> EpochTiming:
    """Train ``arch`` for ``batches`` steps (default: one epoch) after up to 3 warm-up steps, timing each part.

    Each step is ``training.train_batch``, the step ``fit`` takes, with the settings ``train`` uses for
    ``arch`` (the full run's peak learning rate, label smoothing and average of the weights; ``fit``'s
    clipping; a GradScaler with fp16). The optimizer's step pre-hook marks where the update begins:
    everything before it (forward, loss, backward, clipping) is forward + backward, the rest the optimizer.

    On CUDA every part ends with a synchronisation, so each is charged its own GPU time; that costs a
    little speed, which is why ``fit``'s own epochs (no synchronisation) are the figures to quote.
    """
    device = pick_device(device)
    dtype = amp_dtype(device, amp)
    full_run = FULL_RUNS[arch]
    with torch_threads(threads):
        seed_everything(0)
        model = build_model(arch).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_loader, _, _ = make_loaders(splits, batch_size, augment=augment, device=device, num_workers=num_workers)
        config = replace(full_run.at_batch_size(batch_size), epochs=1, amp=amp)
        optimizer, scheduler = training.make_optimizer(model, len(train_loader), config)
        settings = training.StepSettings(dtype, config.clip_norm, config.label_smoothing)
        scaler, ema = training.make_scaler(device, dtype), training.make_ema(model, config.ema_decay)
        warmup = min(3, len(train_loader) - 1)  # the first steps pay for allocations and kernel choices
        steps = len(train_loader) - warmup if batches is None else min(batches, len(train_loader) - warmup)
        if steps < 1:
            raise DataError(f"{len(train_loader)} batch of {batch_size} images is too few to time: use more images")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        update_started: list[float] = []

        def mark_update(*_) -> None:  # the optimizer's step pre-hook
            sync()
            update_started.append(time.perf_counter())

        hook = optimizer.register_step_pre_hook(mark_update)
        parts = [0.0, 0.0, 0.0]
        model.train()
        iterator = iter(train_loader)
        try:
            for step in range(warmup + steps):
                started = time.perf_counter()
                x, y = batch_to(*next(iterator), device)
                if not channels_last:
                    x = x.contiguous()
                sync()
                loaded = time.perf_counter()
                update_started.clear()
                training.train_batch(model, x, y, optimizer, settings, scaler=scaler, scheduler=scheduler, ema=ema)
                sync()
                finished = time.perf_counter()
                # A GradScaler skips the update when fp16 gradients overflowed: that step only computed them.
                computed = update_started[0] if update_started else finished
                if step >= warmup:
                    for index, seconds in enumerate((loaded - started, computed - loaded, finished - computed)):
                        parts[index] += seconds
        finally:
            hook.remove()
        return EpochTiming(
            model=arch, device=str(device), amp=str(dtype).removeprefix("torch.") if dtype else "off",
            pipeline=augment, batch_size=batch_size, workers=getattr(train_loader, "num_workers", 0),
            threads=torch.get_num_threads(), batches=steps, data_s=parts[0], forward_backward_s=parts[1],
            optimizer_s=parts[2], epoch_images=len(splits.train_labels),
        )


@dataclass(frozen=True)
class TimeToAccuracy:
    """The CNN's validation accuracy after each epoch, and the training time until it first reached ``target``."""

    target: float
    seconds_to_target: float | None  # None: not reached within the run
    epochs: int
    total_s: float
    val_accuracy_per_epoch: list[float]
    seconds_per_epoch: list[float]


def time_to_accuracy(
    splits: MnistSplits,
    target: float = 0.992,
    epochs: int = 5,
    batch_size: int = 128,
    augment: str = "device",
    device: str | torch.device | None = None,
    amp: bool | None = None,
) -> TimeToAccuracy:
    """Train a DigitCNN for ``epochs`` (the full run squeezed into them, its rates scaled to ``batch_size``),
    measuring validation accuracy after every epoch: a race is a choice (of a recipe, a length), and
    nothing is chosen on the test set. An epoch's seconds include that validation pass.
    """
    seed_everything(0)
    model = build_model("cnn")
    train_loader, val_loader, _ = make_loaders(splits, batch_size, augment=augment, device=pick_device(device))
    started = time.perf_counter()
    config = replace(FULL_RUNS["cnn"].at_batch_size(batch_size), epochs=epochs, amp=amp)
    history = training.fit(model, train_loader, val_loader, config, device=device, progress=False, log=None)
    total = time.perf_counter() - started
    elapsed, reached = 0.0, None
    for seconds, accuracy in zip(history["seconds"], history["val_accuracy"], strict=True):
        elapsed += seconds
        if accuracy >= target:
            reached = elapsed
            break
    return TimeToAccuracy(
        target=target, seconds_to_target=reached, epochs=epochs, total_s=total,
        val_accuracy_per_epoch=history["val_accuracy"], seconds_per_epoch=history["seconds"],
    )


def single_image_latency(
    model: Callable[[torch.Tensor], torch.Tensor], image, mean: float, std: float, repeats: int = 200, warmup: int = 20,
    threads: int | None = 1, prepare: Callable[..., torch.Tensor] | None = None,
) -> dict:
    """Time preprocessing plus the forward pass for one image, in this process on the CPU.

    ``model`` is any callable from a normalised (1, 1, 28, 28) tensor to scores: an ``nn.Module``
    (moved to the CPU and put in eval mode), an int8 model, or ``export.OnnxModel``. ``prepare(image,
    mean, std)`` makes that tensor; the default is the digit preprocessing of ``preprocess.preprocess``
    (crop to the ink, scale, centre by mass), which only suits drawn digits.

    Returns median and 90th-percentile milliseconds of the whole path (``median_ms``, ``p90_ms``)
    and the medians of its two parts (``preprocess_ms``, ``forward_ms``). One thread by default:
    a single 28x28 image is too little work to share, so more threads mostly add synchronisation
    (notebook 05's fourth exercise measures both on the learner's machine).
    """
    model = _on_cpu(model)
    prepare = preprocess if prepare is None else prepare
    totals, preprocess_times, forward_times = [], [], []
    with torch_threads(threads), torch.inference_mode():
        for run in range(warmup + repeats):
            started = time.perf_counter()
            x = prepare(image, mean, std)
            prepared = time.perf_counter()
            model(x)
            finished = time.perf_counter()
            if run >= warmup:
                totals.append(finished - started)
                preprocess_times.append(prepared - started)
                forward_times.append(finished - prepared)
    milliseconds = 1000 * np.asarray(totals)
    return {
        "median_ms": float(np.median(milliseconds)),
        "p90_ms": float(np.percentile(milliseconds, 90)),
        "preprocess_ms": 1000 * statistics.median(preprocess_times),
        "forward_ms": 1000 * statistics.median(forward_times),
        "repeats": repeats,
        "threads": torch.get_num_threads() if threads is None else threads,
    }


def batch_throughput(
    model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 1000, repeats: int = 3,
    threads: int | None = None,
) -> dict:
    """Images per second for the forward pass over normalised ``images`` (N, 1, 28, 28) in batches.

    The best of ``repeats`` passes (after one warm-up batch), all threads by default. ``model`` is any
    callable, as for :func:`single_image_latency`.
    """
    model = _on_cpu(model)
    batches = list(images.split(batch_size))
    with torch_threads(threads), torch.inference_mode():
        model(batches[0])
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            for batch in batches:
                model(batch)
            seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {"images_per_s": len(images) / best, "batch_size": batch_size, "images": len(images), "seconds": best}


def _on_cpu(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ``nn.Module`` on the CPU in eval mode (a CPU copy of one on another device, which stays where it
    is); any other callable as it is."""
    if not isinstance(model, nn.Module):
        return model
    return (model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()).eval()
