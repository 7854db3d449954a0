"""MNIST through torchvision: loading, a stratified split, augmentation, datasets and loaders.

Images stay uint8 tensors in memory (47 MB for all 70,000); a Dataset turns one into a
normalised float tensor on demand, after an optional albumentations pipeline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import albumentations as A
import cv2
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import MNIST

from .config import data_dir
from .errors import DataError

#: The four original files and the md5s torchvision checks.
MNIST_FILES: dict[str, str] = dict(MNIST.resources)

# Bytes of each file once unzipped: a 16-byte (images) or 8-byte (labels) header plus the data.
_UNZIPPED_SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}

CLASSES = tuple(range(10))


def raw_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder torchvision's MNIST reads: ``<root>/MNIST/raw``."""
    return Path(root or data_dir()) / "MNIST" / "raw"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def copy_mnist_files(source: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Copy the four original ``.gz`` files from ``source`` into ``<root>/MNIST/raw``.

    Files already there with the right checksum are left alone. Returns the paths in ``raw``.
    """
    source, target = Path(source), raw_dir(root)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, md5 in MNIST_FILES.items():
        src, dst = source / name, target / name
        if not src.exists():
            raise DataError(f"{src} is missing: {source} should hold the four MNIST files {', '.join(MNIST_FILES)}.")
        if not (dst.exists() and _md5(dst) == md5):
            tmp = dst.with_suffix(".part")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)  # atomic: a half-copied file never carries the real name
        copied.append(dst)
    return copied


def check_raw_files(root: str | os.PathLike | None = None) -> None:
    """Fail with a clear message if a file in ``MNIST/raw`` is truncated or corrupt.

    torchvision would otherwise try to re-download a bad ``.gz`` or hand a short unzipped file to
    numpy. An unzipped file that is wrong but has a good ``.gz`` beside it is simply removed, so
    torchvision unzips it again.
    """
    folder = raw_dir(root)
    for name, md5 in MNIST_FILES.items():
        archive, unzipped = folder / name, folder / name.removesuffix(".gz")
        archive_ok = archive.exists() and _md5(archive) == md5
        if archive.exists() and not archive_ok:
            raise DataError(
                f"{archive} is truncated or corrupt (its md5 is not the original's {md5}). "
                "Delete it and run `make data`, or copy the original file there."
            )
        if unzipped.exists() and unzipped.stat().st_size != _UNZIPPED_SIZES[unzipped.name]:
            if archive_ok:
                unzipped.unlink()
            else:
                raise DataError(
                    f"{unzipped} is truncated or corrupt ({unzipped.stat().st_size:,} bytes, expected "
                    f"{_UNZIPPED_SIZES[unzipped.name]:,}). Delete it and run `make data`."
                )


def load_mnist(train: bool = True, root: str | os.PathLike | None = None, download: bool = True):
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the official train or test set.

    Reads ``<root>/MNIST/raw`` (root defaults to ``data/`` or ``$DIGITLIB_DATA``); torchvision
    downloads only when the files are not there.
    """
    root = Path(root or data_dir())
    check_raw_files(root)
    try:
        dataset = MNIST(str(root), train=train, download=download)
    except (RuntimeError, URLError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"MNIST is not in {raw_dir(root)} and could not be downloaded ({reason}). "
            f"Put the four original files there ({', '.join(MNIST_FILES)}): `make data` copies "
            "them from ../shared/mnist/, or set DIGITLIB_DATA to a folder whose MNIST/raw/ has them."
        ) from None
    return dataset.data, dataset.targets


def split_train_val(labels: torch.Tensor, val_fraction: float = 0.2, seed: int = 0):
    """Seeded, stratified split: (train indices, validation indices), each sorted."""
    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, stratify=np.asarray(labels), random_state=seed
    )
    return torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))


def compute_normalization(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of the pixels, scaled to [0, 1]."""
    pixels = images.to(torch.float64) / 255
    return pixels.mean().item(), pixels.std().item()


@dataclass
class MnistSplits:
    """The three sets as uint8 images and int64 labels, plus the training split's statistics."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float


def load_splits(
    seed: int = 0,
    val_fraction: float = 0.2,
    train_limit: int | None = None,
    test_limit: int | None = None,
    root: str | os.PathLike | None = None,
) -> MnistSplits:
    """Load MNIST, split the 60,000 training images 80/20, and compute normalisation.

    ``train_limit`` keeps a stratified subset of the training images before splitting and
    ``test_limit`` the first test images: the smoke mode's small data.
    """
    images, labels = load_mnist(train=True, root=root)
    if train_limit is not None and train_limit < len(labels):
        keep, _ = train_test_split(
            np.arange(len(labels)), train_size=train_limit, stratify=labels.numpy(), random_state=seed
        )
        keep = torch.from_numpy(np.sort(keep))
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = split_train_val(labels, val_fraction, seed)
    test_images, test_labels = load_mnist(train=False, root=root)
    if test_limit is not None:
        test_images, test_labels = test_images[:test_limit], test_labels[:test_limit]
    mean, std = compute_normalization(images[train_idx])
    return MnistSplits(
        images[train_idx], labels[train_idx], images[val_idx], labels[val_idx],
        test_images, test_labels, mean, std,
    )


def train_augmentation(seed: int | None = None) -> A.Compose:
    """The training pipeline: small rotations, shift/scale, elastic or grid distortion, brightness.

    No 90-degree rotations or flips: a 6 turned over is a 9. Works on uint8 (28, 28) arrays.
    """
    black = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}
    return A.Compose(
        [
            A.Affine(rotate=(-15, 15), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), p=0.9, **black),
            A.OneOf(
                [
                    A.ElasticTransform(alpha=30, sigma=5, **black),
                    A.GridDistortion(num_steps=5, distort_limit=0.3, **black),
                ],
                p=0.3,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.3),
        ],
        seed=seed,
    )


class DigitDataset(Dataset):
    """uint8 images in memory → normalised float (1, 28, 28) tensors, augmented per sample if asked."""

    def __init__(self, images, labels, mean: float, std: float, transform: A.BasicTransform | None = None):
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
        x = (image.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)).unsqueeze_(0)
        return x, self.labels[index]


def default_workers() -> int:
    """DataLoader workers for augmentation: none on two cores or fewer, else up to four.

    Measured with ``python -m digitlib bench --workers 0 1 2 --threads 1 2`` on two cores:
    augmenting in the main process (about 10 s an epoch) beats a worker that takes CPU from
    PyTorch's two training threads (CNN 1,253 vs 1,122 images/s, ResNet 998 vs 915).
    """
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def make_loaders(
    splits: MnistSplits,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    augment: bool = True,
    num_workers: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train (shuffled, augmented), validation and test loaders.

    ``num_workers=None`` picks :func:`default_workers`.
    """
    num_workers = default_workers() if num_workers is None else num_workers
    transform = train_augmentation(seed) if augment else None
    train_set = DigitDataset(splits.train_images, splits.train_labels, splits.mean, splits.std, transform)
    val_set = DigitDataset(splits.val_images, splits.val_labels, splits.mean, splits.std)
    test_set = DigitDataset(splits.test_images, splits.test_labels, splits.mean, splits.std)
    generator = torch.Generator().manual_seed(seed)
    workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    train_loader = DataLoader(train_set, batch_size, shuffle=True, generator=generator, drop_last=True, **workers)
    val_loader = DataLoader(val_set, eval_batch_size)
    test_loader = DataLoader(test_set, eval_batch_size)
    return train_loader, val_loader, test_loader


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, 28, 28), normalised like the training data."""
    return images.to(torch.float32).div(255).sub(mean).div(std).unsqueeze(1)


def prepare(source: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Path:
    """Make MNIST ready in ``<root>/MNIST/raw``: copy it from ``source`` if given, then load both sets once.

    Returns the raw folder. Used by ``make data`` (``python -m digitlib data``).
    """
    if source is not None:
        copy_mnist_files(source, root)
    for train in (True, False):
        load_mnist(train=train, root=root)
    return raw_dir(root)
