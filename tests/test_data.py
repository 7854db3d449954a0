"""digitlib.data and digitlib.config: loading, bad files, the split, augmentation, loaders, paths."""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
import torchvision

import digitlib as dl
from digitlib import cli, config

# The project's MNIST folder, which `make test` prepares (read before any test changes DIGITLIB_DATA).
PROJECT_RAW = dl.data.raw_dir()
UNZIPPED = [name.removesuffix(".gz") for name in dl.data.MNIST_FILES]


def copy_archives(root):
    """The four original .gz files copied into ``root/MNIST/raw``; returns that folder."""
    dl.data.copy_mnist_files(PROJECT_RAW, root)
    return dl.data.raw_dir(root)


def truncate(path, size=1000):
    path.write_bytes(path.read_bytes()[:size])


# --- raw files -------------------------------------------------------------------------------


@pytest.mark.parametrize("train, count", [(True, 60_000), (False, 10_000)])
def test_load_mnist_counts_types_and_labels(train, count):
    images, labels = dl.data.load_mnist(train=train)
    assert images.shape == (count, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert labels.min().item() == 0 and labels.max().item() == 9
    assert set(labels.unique().tolist()) == set(range(10))


def test_copy_mnist_files_copies_the_originals_and_they_load(tmp_path):
    copied = dl.data.copy_mnist_files(PROJECT_RAW, tmp_path)
    assert sorted(path.name for path in copied) == sorted(dl.data.MNIST_FILES)
    for path in copied:
        assert path.parent == tmp_path / "MNIST" / "raw"
        assert hashlib.md5(path.read_bytes()).hexdigest() == dl.data.MNIST_FILES[path.name]
    assert not list(path for path in (tmp_path / "MNIST" / "raw").iterdir() if path.suffix == ".part")

    images, labels = dl.data.load_mnist(train=False, root=tmp_path)
    expected_images, expected_labels = dl.data.load_mnist(train=False)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_copy_mnist_files_from_an_incomplete_source_names_the_missing_file(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(dl.DataError, match="train-images-idx3-ubyte.gz is missing"):
        dl.data.copy_mnist_files(source, tmp_path / "root")


def test_truncated_archive_is_reported_by_name(tmp_path):
    raw = copy_archives(tmp_path)
    truncate(raw / "train-labels-idx1-ubyte.gz")
    with pytest.raises(dl.DataError, match="truncated or corrupt") as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    assert str(raw / "train-labels-idx1-ubyte.gz") in str(error.value)
    assert "make data" in str(error.value)


def test_truncated_unzipped_file_is_extracted_again_from_its_archive(tmp_path):
    raw = copy_archives(tmp_path)
    unzipped = raw / "t10k-labels-idx1-ubyte"
    shutil.copyfile(PROJECT_RAW / unzipped.name, unzipped)
    truncate(unzipped, 100)

    images, labels = dl.data.load_mnist(train=False, root=tmp_path)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert unzipped.read_bytes() == (PROJECT_RAW / unzipped.name).read_bytes()


def test_truncated_unzipped_file_without_archive_is_reported_by_name(tmp_path):
    raw = dl.data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in UNZIPPED:
        shutil.copyfile(PROJECT_RAW / name, raw / name)
    truncate(raw / "train-images-idx3-ubyte")
    with pytest.raises(dl.DataError, match="truncated or corrupt") as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    assert str(raw / "train-images-idx3-ubyte") in str(error.value)
    assert "make data" in str(error.value)


def test_missing_files_that_cannot_be_downloaded_say_where_and_what_to_do(tmp_path, monkeypatch):
    # Port 9 (discard) is closed on localhost: the download fails at once and nothing leaves the machine.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(dl.DataError) as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    message = str(error.value)
    assert str(dl.data.raw_dir(tmp_path)) in message
    for name in dl.data.MNIST_FILES:
        assert name in message
    assert "make data" in message
    assert "\n" not in message   # one line, not torchvision's multi-line report


# --- the split and normalisation ------------------------------------------------------------


@pytest.fixture(scope="module")
def train_labels():
    return dl.data.load_mnist(train=True)[1]


def test_split_train_val_is_seeded(train_labels):
    train_a, val_a = dl.data.split_train_val(train_labels, seed=0)
    train_b, val_b = dl.data.split_train_val(train_labels, seed=0)
    train_c, val_c = dl.data.split_train_val(train_labels, seed=1)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert not torch.equal(val_a, val_c)


def test_split_train_val_sizes_disjoint_covering_and_stratified(train_labels):
    train_idx, val_idx = dl.data.split_train_val(train_labels, val_fraction=0.2, seed=0)
    assert len(train_idx) == 48_000 and len(val_idx) == 12_000
    assert torch.all(train_idx[1:] > train_idx[:-1]) and torch.all(val_idx[1:] > val_idx[:-1])   # sorted
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert torch.equal(torch.sort(torch.cat([train_idx, val_idx])).values, torch.arange(60_000))

    whole = np.bincount(train_labels.numpy(), minlength=10) / len(train_labels)
    for part in (train_idx, val_idx):
        share = np.bincount(train_labels[part].numpy(), minlength=10) / len(part)
        assert np.abs(share - whole).max() < 0.005, (share, whole)


def test_load_splits_respects_the_limits(small_splits):
    splits = small_splits   # train_limit=3000, test_limit=1000
    assert len(splits.train_images) == len(splits.train_labels) == 2_400
    assert len(splits.val_images) == len(splits.val_labels) == 600
    assert len(splits.test_images) == len(splits.test_labels) == 1_000
    assert splits.train_images.shape[1:] == (28, 28) and splits.train_images.dtype == torch.uint8
    assert set(splits.train_labels.unique().tolist()) == set(range(10))
    assert (splits.mean, splits.std) == pytest.approx(dl.data.compute_normalization(splits.train_images))


def test_compute_normalization_matches_mnist_constants():
    splits = dl.data.load_splits(seed=0)
    assert len(splits.train_labels) == 48_000 and len(splits.test_labels) == 10_000
    assert splits.mean == pytest.approx(0.1307, abs=0.002)
    assert splits.std == pytest.approx(0.3081, abs=0.002)
    assert dl.data.compute_normalization(torch.full((2, 28, 28), 255, dtype=torch.uint8)) == (1.0, 0.0)


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
    first = dl.data.train_augmentation(seed=0)
    second = dl.data.train_augmentation(seed=0)
    outputs = [first(image=image)["image"] for _ in range(20)]
    for output in outputs:
        assert output.shape == (28, 28) and output.dtype == np.uint8
        assert 0 <= output.min() and output.max() <= 255 and output.max() > 0   # the digit survives
    assert np.array_equal(outputs[0], second(image=image)["image"])
    changed = sum(not np.array_equal(output, image) for output in outputs)
    assert changed >= 15, f"only {changed} of 20 draws changed the image"


def test_train_augmentation_never_turns_or_flips_a_digit():
    names = _transform_names(dl.data.train_augmentation(seed=0))
    assert "Affine" in names
    forbidden = {"RandomRotate90", "Transpose", "HorizontalFlip", "VerticalFlip", "D4", "SquareSymmetry"}
    assert not forbidden & set(names), names
    affine = dl.data.train_augmentation(seed=0).transforms[0]
    assert max(abs(angle) for angle in affine.rotate) <= 15


# --- datasets and loaders ---------------------------------------------------------------------


def test_make_loaders_batches_and_normalisation(small_splits):
    splits = small_splits
    train_loader, val_loader, test_loader = dl.data.make_loaders(splits, batch_size=32, num_workers=0)
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
    train_loader, _, _ = dl.data.make_loaders(splits, batch_size=100, augment=False, num_workers=0)
    dataset = train_loader.dataset
    assert dataset.transform is None and len(dataset) == len(splits.train_labels)
    x = torch.stack([dataset[i][0] for i in range(5)])
    torch.testing.assert_close(x, dl.data.normalize(splits.train_images[:5], splits.mean, splits.std))


def test_digit_dataset_rejects_mismatched_lengths(small_splits):
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        dl.data.DigitDataset(small_splits.train_images[:5], small_splits.train_labels[:4], 0.1, 0.3)


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 0), (None, 0), (8, 4), (16, 4)])
def test_default_workers(monkeypatch, cores, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert dl.data.default_workers() == workers


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE", " On "])
def test_smoke_test_on(monkeypatch, value):
    monkeypatch.setenv("DIGITLIB_SMOKE", value)
    assert dl.smoke_test() is True


@pytest.mark.parametrize("value", ["", "0", "no", "false", "off"])
def test_smoke_test_off(monkeypatch, value):
    monkeypatch.setenv("DIGITLIB_SMOKE", value)
    assert dl.smoke_test() is False


def test_smoke_test_off_when_unset(monkeypatch):
    monkeypatch.delenv("DIGITLIB_SMOKE", raising=False)
    assert dl.smoke_test() is False


def test_environment_overrides_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DIGITLIB_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("DIGITLIB_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("DIGITLIB_SMOKE", "1")   # an explicit DIGITLIB_MODELS wins over smoke mode
    assert dl.data_dir() == tmp_path / "data"
    assert dl.data.raw_dir() == tmp_path / "data" / "MNIST" / "raw"
    assert dl.models_dir() == tmp_path / "models"
    assert dl.figures_dir() == tmp_path / "figures"


def test_default_folders_and_smoke_models(monkeypatch):
    for name in ("DIGITLIB_DATA", "DIGITLIB_MODELS", "DIGITLIB_SMOKE"):
        monkeypatch.delenv(name, raising=False)
    root = config.repo_root()
    assert (root / "pyproject.toml").exists()
    assert dl.data_dir() == root / "data"
    assert dl.models_dir() == root / "models"
    monkeypatch.setenv("DIGITLIB_SMOKE", "1")
    assert dl.models_dir() == root / "models" / "smoke"


# --- the command line -------------------------------------------------------------------------


def test_cli_data_copies_and_prints_the_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path))
    assert cli.main(["data", "--source", str(PROJECT_RAW)]) == 0
    raw = tmp_path / "MNIST" / "raw"
    assert str(raw) in capsys.readouterr().out
    assert all((raw / name).exists() for name in dl.data.MNIST_FILES)
    assert all((raw / name).stat().st_size == (PROJECT_RAW / name).stat().st_size for name in UNZIPPED)


def test_cli_data_with_a_bad_source_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path / "data"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["data", "--source", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is missing" in err
