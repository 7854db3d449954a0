"""MNIST and Fashion-MNIST: the images and labels, a stratified validation split, and normalisation.

Both datasets have the same shape (60,000 + 10,000 grey 28 × 28 images, 10 classes, the same four
IDX files), so every function takes a dataset name (:data:`DATASETS`: ``"mnist"``, ``"fashion"``)
and defaults to MNIST. Images stay uint8 tensors in memory (55 MB for all 70,000: 70,000 × 28 × 28
bytes). Turning them into batches is ``loaders``' job; augmenting them is ``augment``'s; keeping the
files on disk sound (checksums, IDX headers, downloads, copies) is ``datafiles``'.

Heavy packages (torchvision, scikit-learn) are imported inside the functions that use them, so
``import digitlib.data`` costs little more than ``import torch``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import data_dir

# The registry and the files' folder live in datafiles; learners and the command line know them as
# dl.data.DATASETS, dl.data.dataset_info and dl.data.raw_dir.
from .datafiles import DATASETS as DATASETS
from .datafiles import check_raw_files, copy_raw_files, dataset_info, download_guard, raw_dir


def class_names(dataset: str = "mnist") -> tuple[str, ...]:
    """The dataset's class names in label order: ``"0"`` to ``"9"`` for MNIST, ``"T-shirt/top"`` ... for Fashion."""
    return dataset_info(dataset).classes


def dataset_of(info: Mapping) -> str:
    """The dataset a checkpoint was trained on (``info["data"]["dataset"]``); "mnist" for one that does not say.

    Checkpoints from before Fashion-MNIST, and stand-ins, record no dataset: they were all trained on MNIST.
    """
    data = info.get("data") if isinstance(info, Mapping) else None
    name = data.get("dataset") if isinstance(data, Mapping) else None
    return dataset_info(name).name if name is not None else "mnist"


def split_seed_of(info: Mapping) -> int:
    """The seed of the training/validation split a checkpoint was chosen on (``info["data"]["split_seed"]``).

    Checkpoints from before the split had a seed of its own split with the run's seed.
    """
    data = info.get("data")
    recorded = data.get("split_seed") if isinstance(data, Mapping) else None
    return int(recorded if recorded is not None else info.get("seed") or 0)


def load_dataset(
    name: str = "mnist",
    train: bool = True,
    root: str | os.PathLike | None = None,
    download: bool = True,
    timeout_s: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of a dataset's official train or test set.

    ``name`` is a key of :data:`DATASETS`. Reads :func:`raw_dir` (root defaults to ``data/`` or
    ``$DIGITLIB_DATA``) once ``datafiles.check_raw_files`` has found the files there sound;
    torchvision downloads only when they are not there, waiting at most ``timeout_s`` seconds
    (default ``datafiles.download_timeout()``) on each network operation.
    """
    import torchvision.datasets

    info = dataset_info(name)
    root = Path(root or data_dir())
    check_raw_files(root, name)
    with download_guard(root, name, timeout_s):
        dataset = getattr(torchvision.datasets, info.torchvision_class)(str(root), train=train, download=download)
    return dataset.data, dataset.targets


def load_mnist(
    train: bool = True,
    root: str | os.PathLike | None = None,
    download: bool = True,
    timeout_s: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's images and labels: ``load_dataset("mnist", ...)``."""
    return load_dataset("mnist", train, root, download, timeout_s)


def split_train_val(labels: torch.Tensor, val_fraction: float = 0.2, seed: int = 0):
    """Seeded, stratified split: (train indices, validation indices), each sorted."""
    from sklearn.model_selection import train_test_split

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
    """The three sets as uint8 images and int64 labels, plus the training split's statistics.

    (The name is older than Fashion-MNIST: ``dataset`` says which one the splits are of.)
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float
    dataset: str = "mnist"
    split_seed: int = 0  # the seed of the training/validation split
    train_limit: int | None = None  # the training images taken before the split; None: all

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in label order."""
        return class_names(self.dataset)


def load_splits(
    seed: int = 0,
    val_fraction: float = 0.2,
    train_limit: int | None = None,
    test_limit: int | None = None,
    root: str | os.PathLike | None = None,
    dataset: str = "mnist",
) -> MnistSplits:
    """Load a dataset (MNIST by default), split the 60,000 training images 80/20, and compute normalisation.

    ``train_limit`` keeps a stratified subset of the training images before splitting and
    ``test_limit`` the first test images: the smoke mode's small data. The mean and standard
    deviation are the training split's own, so each dataset is normalised with its constants.
    """
    from sklearn.model_selection import train_test_split

    images, labels = load_dataset(dataset, train=True, root=root)
    if train_limit is not None and train_limit < len(labels):
        keep, _ = train_test_split(
            np.arange(len(labels)), train_size=train_limit, stratify=labels.numpy(), random_state=seed
        )
        keep = torch.from_numpy(np.sort(keep))
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = split_train_val(labels, val_fraction, seed)
    test_images, test_labels = load_dataset(dataset, train=False, root=root)
    if test_limit is not None:
        test_images, test_labels = test_images[:test_limit], test_labels[:test_limit]
    mean, std = compute_normalization(images[train_idx])
    return MnistSplits(
        images[train_idx], labels[train_idx], images[val_idx], labels[val_idx],
        test_images, test_labels, mean, std, dataset_info(dataset).name, seed, train_limit,
    )


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Pixels as a model takes them: (pixel in [0, 1] - ``mean``) / ``std``, with its training split's constants.

    Integer images, as the datasets hold them (uint8 0..255), are scaled to [0, 1] and given their
    channel axis: (N, 28, 28) → float32 (N, 1, 28, 28), one image (28, 28) → (1, 28, 28). Float images
    are taken to be in [0, 1] already (an augmented batch, ``preprocess.to_mnist``'s picture) and keep
    their shape and dtype. ``images`` itself is never changed.

    The library's one normalisation: the loaders, the pictures ``predict`` and the drawing pad read,
    and the library's test-set batches all go through it, so a model sees the same numbers however its
    input arrived (the tests compare the loaders' batches with it bit for bit).
    """
    if images.is_floating_point():
        return images.sub(mean).div_(std)
    return images.to(torch.float32).div(255).unsqueeze(-3).sub_(mean).div_(std)


def prepare(
    source: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    timeout_s: float | None = None,
    dataset: str = "mnist",
) -> Path:
    """Make a dataset ready in its :func:`raw_dir`: copy it from ``source`` if given, then load both sets once.

    Returns the raw folder. Used by ``make data`` (``python -m digitlib data``). ``timeout_s`` as in
    :func:`load_dataset`.
    """
    if source is not None:
        copy_raw_files(source, root, dataset)
    for train in (True, False):
        load_dataset(dataset, train=train, root=root, timeout_s=timeout_s)
    return raw_dir(root, dataset)
