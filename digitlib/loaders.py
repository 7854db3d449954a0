"""How batches reach the model: two input pipelines behind one ``make_loaders``.

- ``DeviceLoader`` (the default, ``augment="device"``): the split stays on the training device as
  uint8 (38 MB for 48,000 images), and each batch is made there: shuffled indices,
  ``augment.augment`` on the whole batch, normalisation.
- ``per_sample_loaders`` (``augment="albumentations"``): a PyTorch ``DataLoader`` that augments one
  image at a time with ``augment.train_augmentation`` in worker processes, then the training loop
  copies every batch to the device. Slower, but any albumentations pipeline fits.

Both iterate alike (``for x, y in loader``, ``len(loader)``, ``loader.batch_size``) and both
training loaders have ``set_epoch``, so an epoch's batches depend only on (seed, epoch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentConfig, as_float_images
from .augment import augment as augment_batch
from .data import MnistSplits, normalize
from .errors import DataError

if TYPE_CHECKING:  # only names for type hints: albumentations loads when its pipeline is built
    import albumentations as A

#: The input pipelines ``make_loaders`` builds (the CLI's ``--augment``).
PIPELINES = ("device", "albumentations", "none")


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for epoch ``epoch`` of a run seeded with ``seed``, unrelated to its neighbours' seeds."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


class DeviceLoader:
    """(x, y) batches on ``device``: x float (B, 1, 28, 28), normalised, channels_last; y int64.

    ``shuffle`` draws a new order each epoch and ``augment`` applies ``augment.augment`` with
    ``config``; both draw from the loader's own generator, re-seeded at the start of each epoch
    from (``seed``, epoch). Epoch k's batches thus depend on (seed, k) alone: a run resumed after
    epoch k only needs ``set_epoch(k)``. Each pass over the loader moves on to the next epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: float,
        std: float,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        seed: int = 0,
        config: AugmentConfig | None = None,
    ):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels: pass one label per image.")
        if batch_size < 1:
            raise DataError(f"batch_size is {batch_size}: pass a positive number of images per batch.")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.mean, self.std = mean, std
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.config = seed, config or AugmentConfig()
        self.epoch = 0
        self.generator = torch.Generator(device=self.device)

    def __len__(self) -> int:
        batches = len(self.labels) / self.batch_size
        return math.floor(batches) if self.drop_last else math.ceil(batches)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (counted from 0)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Seed and shuffle now, not at the first batch: a set_epoch() after iter() cannot change this pass.
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        count = len(self.labels)
        if self.shuffle:
            order = torch.randperm(count, generator=self.generator, device=self.device)
        else:
            order = torch.arange(count, device=self.device)
        return self._batches(order)

    def _batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in range(len(self)):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self._make_batch(self.images[indices]), self.labels[indices]

    def _make_batch(self, images: torch.Tensor) -> torch.Tensor:
        x = augment_batch(images, self.generator, self.config) if self.augment else as_float_images(images)
        return normalize(x, self.mean, self.std).contiguous(memory_format=torch.channels_last)


def device_loaders(
    splits: MnistSplits,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    augment: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[DeviceLoader, DeviceLoader, DeviceLoader]:
    """Train (shuffled, augmented if asked, whole batches only), validation and test loaders on ``device``.

    The on-device counterpart of :func:`per_sample_loaders`.
    """
    mean, std = splits.mean, splits.std
    train = DeviceLoader(
        splits.train_images, splits.train_labels, mean, std, batch_size, shuffle=True, augment=augment,
        drop_last=True, device=device, seed=seed,
    )
    val = DeviceLoader(splits.val_images, splits.val_labels, mean, std, eval_batch_size, device=device)
    test = DeviceLoader(splits.test_images, splits.test_labels, mean, std, eval_batch_size, device=device)
    return train, val, test


def make_loaders(
    splits: MnistSplits,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    augment: str = "device",
    device: str | torch.device = "cpu",
    num_workers: int | None = None,
    seed: int = 0,
) -> tuple[DeviceLoader, DeviceLoader, DeviceLoader] | tuple[DataLoader, DataLoader, DataLoader]:
    """Train, validation and test loaders for one of the input pipelines (``PIPELINES``).

    ``"device"``: :func:`device_loaders`, augmenting whole batches on ``device`` (the default);
    ``"none"``: the same without augmentation; ``"albumentations"``: :func:`per_sample_loaders`, one image
    at a time in ``num_workers`` DataLoader workers, on the CPU (the training loop copies each batch).
    """
    if augment == "albumentations":
        return per_sample_loaders(splits, batch_size, eval_batch_size, augment=True, num_workers=num_workers, seed=seed)
    if augment not in PIPELINES:
        raise DataError(f"unknown input pipeline {augment!r}: use one of {', '.join(PIPELINES)}.")
    return device_loaders(splits, batch_size, eval_batch_size, augment=augment == "device", device=device, seed=seed)


# --- One image at a time: the DataLoader path, for any albumentations pipeline ----------------------


class DigitDataset(Dataset):
    """uint8 images in memory → normalised float (1, 28, 28) tensors, augmented per sample if asked."""

    def __init__(self, images, labels, mean: float, std: float, transform: A.Compose | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.mean, self.std, self.transform = mean, std, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = torch.from_numpy(self.transform(image=image.numpy())["image"])
        return normalize(image, self.mean, self.std), self.labels[index]


def default_workers() -> int:
    """DataLoader workers for augmentation: none on two cores or fewer, else up to four.

    On two cores a worker process takes CPU from PyTorch's two training threads, and augmenting in the
    main process was faster (docs/results.md, "Speed"); with more cores the workers have their own.
    """
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


class PerSampleLoader(DataLoader):
    """The shuffled, augmented training DataLoader, with ``set_epoch`` like ``DeviceLoader``.

    ``set_epoch`` re-seeds the shuffling and, when augmenting in this process (no workers), the
    albumentations pipeline from (seed, epoch). Worker processes hold their own copies of the
    pipeline, seeded when they start: with workers, a resumed run is not bit-for-bit the same.
    """

    def __init__(self, dataset: DigitDataset, batch_size: int, num_workers: int, seed: int):
        super().__init__(
            dataset, batch_size, shuffle=True, generator=torch.Generator(), drop_last=True,
            num_workers=num_workers, persistent_workers=num_workers > 0,
        )
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.seed, epoch)
        assert self.generator is not None  # made in __init__
        self.generator.manual_seed(seed)
        transform = self.dataset.transform  # type: ignore[attr-defined]
        if transform is not None and self.num_workers == 0:
            transform.set_random_seed(seed % 2**32)


def per_sample_loaders(
    splits: MnistSplits,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    augment: bool = True,
    num_workers: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled, augmented by ``augment.train_augmentation``), validation and test DataLoaders.

    One image at a time on the CPU, in ``num_workers`` worker processes (None: :func:`default_workers`);
    the training loop copies each batch to its device. Slower than :func:`device_loaders`, but any
    albumentations pipeline fits here.
    """
    from .augment import train_augmentation

    num_workers = default_workers() if num_workers is None else num_workers
    transform = train_augmentation(seed) if augment else None
    train_set = DigitDataset(splits.train_images, splits.train_labels, splits.mean, splits.std, transform)
    val_set = DigitDataset(splits.val_images, splits.val_labels, splits.mean, splits.std)
    test_set = DigitDataset(splits.test_images, splits.test_labels, splits.mean, splits.std)
    return (PerSampleLoader(train_set, batch_size, num_workers, seed), DataLoader(val_set, eval_batch_size),
            DataLoader(test_set, eval_batch_size))
