"""The per-sample input pipeline: albumentations one image at a time, in a DataLoader.

The on-device pipeline and its similarity to this one are tested in test_augment.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import digitlib as dl

# --- augmentation -----------------------------------------------------------------------------


def _transform_names(compose):
    names = []
    for transform in compose.transforms:
        names.append(type(transform).__name__)
        if hasattr(transform, "transforms"):
            names.extend(_transform_names(transform))
    return names


def test_train_augmentation_keeps_shape_dtype_and_is_seeded(small_splits):
    image = small_splits.train_images[0].numpy()
    first = dl.augment.train_augmentation(seed=0)
    second = dl.augment.train_augmentation(seed=0)
    outputs = [first(image=image)["image"] for _ in range(20)]
    for output in outputs:
        assert output.shape == (28, 28) and output.dtype == np.uint8
        assert 0 <= output.min() and output.max() <= 255 and output.max() > 0   # the digit survives
    assert np.array_equal(outputs[0], second(image=image)["image"])
    changed = sum(not np.array_equal(output, image) for output in outputs)
    assert changed >= 15, f"only {changed} of 20 draws changed the image"


def test_train_augmentation_never_turns_or_flips_a_digit():
    names = _transform_names(dl.augment.train_augmentation(seed=0))
    assert "Affine" in names
    forbidden = {"RandomRotate90", "Transpose", "HorizontalFlip", "VerticalFlip", "D4", "SquareSymmetry"}
    assert not forbidden & set(names), names
    affine = dl.augment.train_augmentation(seed=0).transforms[0]
    assert max(abs(angle) for angle in affine.rotate) <= 15


# --- datasets and loaders ---------------------------------------------------------------------


def test_per_sample_loaders_batches_and_normalisation(small_splits):
    splits = small_splits
    train_loader, val_loader, test_loader = dl.loaders.make_loaders(
        splits, batch_size=32, augment="albumentations", num_workers=0
    )
    x, y = next(iter(train_loader))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert len(train_loader) == len(splits.train_labels) // 32   # drop_last

    for loader, images, labels in ((val_loader, splits.val_images, splits.val_labels),
                                   (test_loader, splits.test_images, splits.test_labels)):
        x, y = next(iter(loader))
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        torch.testing.assert_close(x, dl.data.normalize(images, splits.mean, splits.std))
        assert torch.equal(y, labels)


def test_unaugmented_training_loader_equals_normalize(small_splits):
    splits = small_splits
    train_loader, _, _ = dl.loaders.per_sample_loaders(splits, batch_size=100, augment=False, num_workers=0)
    dataset = train_loader.dataset
    assert dataset.transform is None and len(dataset) == len(splits.train_labels)
    x = torch.stack([dataset[i][0] for i in range(5)])
    torch.testing.assert_close(x, dl.data.normalize(splits.train_images[:5], splits.mean, splits.std))


def test_digit_dataset_rejects_mismatched_lengths(small_splits):
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        dl.loaders.DigitDataset(small_splits.train_images[:5], small_splits.train_labels[:4], 0.1, 0.3)


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 0), (None, 0), (8, 4), (16, 4)])
def test_default_workers(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert dl.loaders.default_workers() == workers


def test_per_sample_loader_epochs_are_seeded_by_epoch(small_splits):
    def first_batch(epoch):
        train_loader, _, _ = dl.loaders.per_sample_loaders(small_splits, batch_size=16, num_workers=0, seed=3)
        train_loader.set_epoch(epoch)
        return next(iter(train_loader))

    again = first_batch(1)
    assert torch.equal(first_batch(1)[0], again[0]) and torch.equal(first_batch(1)[1], again[1])
    assert not torch.equal(first_batch(2)[0], again[0])
