"""Throughput measurements behind ``python -m digitlib bench``."""

from __future__ import annotations

import itertools
import time

import torch

from .data import MnistSplits, make_loaders
from .models import build_model
from .training import amp_dtype, fit, make_optimizer, pick_device, seed_everything, train_step


def training_throughput(
    arch: str,
    splits: MnistSplits,
    batch_size: int = 128,
    num_workers: int | None = None,
    batches: int | None = None,
    device: str | None = None,
    amp: bool | None = None,
    threads: int | None = None,
) -> dict:
    """Train ``arch`` for one epoch (or ``batches`` batches, after 5 warm-up ones) and time it.

    ``threads`` sets PyTorch's intra-op threads for the run (default: leave as is). Returns
    images/s and the seconds a full epoch over the training split takes at that rate.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _time_training(arch, splits, batch_size, num_workers, batches, device, amp)
    finally:
        torch.set_num_threads(previous_threads)


def _time_training(arch, splits, batch_size, num_workers, batches, device, amp) -> dict:
    device = pick_device(device)
    dtype = amp_dtype(device, amp)
    seed_everything(0)
    model = build_model(arch).to(device).to(memory_format=torch.channels_last)
    train_loader, _, _ = make_loaders(splits, batch_size, num_workers=num_workers)
    optimizer, scheduler = make_optimizer(model, len(train_loader), 1)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    warmup = list(itertools.islice(iter(train_loader), 5))
    train_step(model, warmup, optimizer, None, device, dtype, scaler)
    timed = train_loader if batches is None else itertools.islice(train_loader, batches)
    started = time.perf_counter()
    count = 0
    for batch in timed:
        train_step(model, [batch], optimizer, scheduler, device, dtype, scaler)
        count += len(batch[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    images_per_second = count / seconds
    return {
        "model": arch, "device": str(device), "amp": str(dtype).removeprefix("torch.") if dtype else "off",
        "batch_size": batch_size, "workers": train_loader.num_workers, "threads": torch.get_num_threads(),
        "images_per_s": images_per_second,
        "epoch_s": len(splits.train_labels) / images_per_second,
    }


def time_to_accuracy(
    splits: MnistSplits,
    target: float = 0.992,
    epochs: int = 5,
    batch_size: int = 128,
    augment: bool = False,
    device: str | None = None,
) -> dict:
    """Train a DigitCNN for ``epochs`` with test accuracy measured after each epoch.

    Without augmentation by default: a short run has no time to profit from it.

    Returns the wall time until test accuracy first reached ``target`` (None if it never did)
    and the per-epoch history. The test set is watched here only to time the run; no model
    is selected on it.
    """
    seed_everything(0)
    model = build_model("cnn")
    train_loader, _, test_loader = make_loaders(splits, batch_size, augment=augment)
    started = time.perf_counter()
    history = fit(model, train_loader, test_loader, epochs, device=device, progress=False, log=None)
    total = time.perf_counter() - started
    elapsed, reached = 0.0, None
    for seconds, accuracy in zip(history["seconds"], history["val_accuracy"]):
        elapsed += seconds
        if accuracy >= target:
            reached = elapsed
            break
    return {
        "target": target, "seconds_to_target": reached, "epochs": epochs, "total_s": total,
        "test_accuracy_per_epoch": history["val_accuracy"], "seconds_per_epoch": history["seconds"],
    }
