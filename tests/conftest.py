"""Shared fixtures: MNIST from the data folder, small splits, and small trained checkpoints."""

from __future__ import annotations

import pytest
from helpers import train_config

import digitlib as dl


@pytest.fixture(scope="session")
def small_splits():
    """A stratified 3,000-image slice of the training set (2,400/600) and 1,000 test images."""
    return dl.data.load_splits(seed=0, train_limit=3000, test_limit=1000)


@pytest.fixture(scope="session")
def trained_checkpoints(tmp_path_factory):
    """{"cnn": path, "resnet": path}: each trained 2 epochs on 6,000 images (about 96-97 % test)."""
    folder = tmp_path_factory.mktemp("models")
    splits = dl.data.load_splits(seed=0, train_limit=6000, test_limit=1000)
    paths = {}
    for arch in ("cnn", "resnet"):
        dl.runtime.seed_everything(0)
        train_loader, val_loader, _ = dl.loaders.make_loaders(splits, batch_size=64, augment="none")
        model = dl.models.build_model(arch)
        paths[arch] = folder / f"{arch}.pt"
        dl.training.fit(model, train_loader, val_loader, train_config(2, train_loader), device="cpu",
                        checkpoint=paths[arch], metadata={"normalization": {"mean": splits.mean, "std": splits.std},
                        "seed": 0}, progress=False, log=None)
    return paths
