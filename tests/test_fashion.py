"""Fashion-MNIST through the same library and command line: files, split, names, training, evaluation.

The data come from ``data/FashionMNIST/raw`` when `make data` has put them there, else from Debian's
``dataset-fashion-mnist`` package (copied into a temporary folder); the tests that need them are
skipped, with the reason, only where neither exists. CI installs the package, so there they run.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from helpers import run, use_models_folder  # noqa: E402

import digitlib as dl  # noqa: E402
from digitlib import config  # noqa: E402
from digitlib.checkpoints import read_checkpoint, update_checkpoint  # noqa: E402
from digitlib.errors import CheckpointError  # noqa: E402

FASHION = dl.datafiles.DATASETS["fashion"]
DEBIAN = FASHION.local_copy  # /usr/share/datasets/fashion-mnist
PROJECT_FASHION = dl.datafiles.raw_dir(dataset="fashion")  # read before any test changes DIGITLIB_DATA
NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

needs_debian = pytest.mark.skipif(not DEBIAN.is_dir(), reason=f"{DEBIAN} is missing: install Debian's "
                                  "package dataset-fashion-mnist to test copying from it")


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    """A data root whose FashionMNIST/raw holds the four files: the project's, else a copy of Debian's."""
    if dl.datafiles.available("fashion"):
        return dl.data_dir()
    if DEBIAN.is_dir():
        root = tmp_path_factory.mktemp("data")
        dl.datafiles.copy_raw_files(DEBIAN, root, "fashion")
        return root
    pytest.skip(f"Fashion-MNIST is neither in {PROJECT_FASHION} nor in {DEBIAN}: run `python -m digitlib data "
                "--dataset fashion` (or install Debian's package dataset-fashion-mnist)")


@pytest.fixture
def no_proxy(monkeypatch):
    """Local test servers are reached directly, even where a proxy is configured."""
    monkeypatch.setenv("no_proxy", "*")


# --- the datasets' descriptions ---------------------------------------------------------------


def test_the_two_datasets_and_their_class_names():
    assert list(dl.datafiles.DATASETS) == ["mnist", "fashion"] == list(config.DATASET_NAMES)
    assert [info.title for info in dl.datafiles.DATASETS.values()] == ["MNIST", "Fashion-MNIST"]
    assert dl.data.class_names("mnist") == tuple(str(digit) for digit in range(10))
    assert dl.data.class_names("fashion") == NAMES == tuple(torchvision.datasets.FashionMNIST.classes)
    assert dl.data.class_names() == dl.data.class_names("mnist")
    with pytest.raises(AttributeError):
        FASHION.title = "changed"  # frozen: one description for everyone


def test_fashion_files_match_torchvision():
    # Written out so that importing digitlib.data does not import torchvision.
    assert dict(FASHION.files) == dict(torchvision.datasets.FashionMNIST.resources)
    assert FASHION.torchvision_class == torchvision.datasets.FashionMNIST.__name__


@pytest.mark.parametrize("name", ["kmnist", "MNIST", None])
def test_an_unknown_dataset_is_one_line_listing_the_known_ones(name):
    with pytest.raises(dl.DataError) as error:
        dl.data.load_dataset(name)
    assert str(error.value) == f"unknown dataset {name!r}: use one of mnist, fashion."


def test_a_checkpoint_without_a_dataset_is_mnist():
    assert dl.data.dataset_of({}) == "mnist"  # checkpoints and stand-ins from before Fashion-MNIST
    assert dl.data.dataset_of({"data": {"train_limit": None}}) == "mnist"
    assert dl.data.dataset_of({"data": {"dataset": "fashion"}}) == "fashion"
    with pytest.raises(dl.DataError, match="unknown dataset 'kmnist'"):
        dl.data.dataset_of({"data": {"dataset": "kmnist"}})


def test_each_dataset_has_its_own_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path / "data"))
    use_models_folder(monkeypatch, tmp_path / "models")
    assert dl.datafiles.raw_dir(dataset="fashion") == tmp_path / "data" / "FashionMNIST" / "raw"
    assert dl.datafiles.raw_dir() == tmp_path / "data" / "MNIST" / "raw"
    assert config.dataset_models_dir("mnist") == tmp_path / "models"
    assert config.dataset_models_dir("fashion") == tmp_path / "models" / "fashion"
    assert dl.config.model_set_paths(["cnn"], 2, "fashion") == {
        ("cnn", 0): tmp_path / "models" / "fashion" / "cnn.pt",
        ("cnn", 1): tmp_path / "models" / "fashion" / "seeds" / "cnn-seed1.pt",
    }


# --- the files ----------------------------------------------------------------------------------


@needs_debian
def test_debians_recompressed_archives_hold_the_original_data(tmp_path):
    # Debian's gzip headers lack the file name and date, so the archives' md5s are not torchvision's:
    # copy_raw_files recognises the data by their unzipped md5 and unzips them itself.
    for name, md5 in FASHION.files.items():
        assert hashlib.md5((DEBIAN / name).read_bytes()).hexdigest() != md5, "Debian now ships the originals"
    kept = dl.datafiles.copy_raw_files(DEBIAN, tmp_path, "fashion")
    raw = dl.datafiles.raw_dir(tmp_path, "fashion")
    assert sorted(path.name for path in kept) == sorted(FASHION.contents) == sorted(p.name for p in raw.iterdir())
    for path in kept:
        assert hashlib.md5(path.read_bytes()).hexdigest() == FASHION.contents[path.name]
    modified = {path: path.stat().st_mtime_ns for path in kept}
    assert dl.datafiles.copy_raw_files(DEBIAN, tmp_path, "fashion") == kept  # a second call writes nothing
    assert {path: path.stat().st_mtime_ns for path in kept} == modified


@needs_debian
def test_cli_data_copies_fashion_and_refuses_one_source_for_two_datasets(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path))
    status, out, err = run(["data", "--dataset", "fashion", "--source", DEBIAN], capsys)
    assert status == 0, err
    assert out == f"Fashion-MNIST ready in {tmp_path / 'FashionMNIST' / 'raw'} (copied from {DEBIAN})\n"
    assert dl.datafiles.available("fashion", tmp_path) and not dl.datafiles.available("mnist", tmp_path)

    status, out, err = run(["data", "--dataset", "mnist", "fashion", "--source", DEBIAN], capsys)
    assert status == 2 and out == "" and err.count("\n") == 1 and "give a single --dataset" in err


def test_a_damaged_fashion_file_is_named_with_what_to_run(fashion_root, tmp_path):
    raw = dl.datafiles.raw_dir(tmp_path, "fashion")
    raw.mkdir(parents=True)
    for name in FASHION.contents:
        shutil.copyfile(dl.datafiles.raw_dir(fashion_root, "fashion") / name, raw / name)
    labels = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    labels[0:4] = (2051).to_bytes(4, "big")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    with pytest.raises(dl.DataError) as error:
        dl.data.load_dataset("fashion", train=False, root=tmp_path)
    assert str(error.value) == (
        f"{raw / 't10k-labels-idx1-ubyte'} is not a Fashion-MNIST labels file (magic number 2051, expected 2049). "
        "Delete it and run `python -m digitlib data --dataset fashion`."
    )


def test_missing_fashion_data_that_cannot_be_downloaded_is_one_clear_line(tmp_path, monkeypatch, no_proxy, capsys):
    # Port 9 (discard) is closed on localhost: the download fails at once and nothing leaves the machine.
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(dl.DataError) as error:
        dl.data.load_splits(dataset="fashion", root=tmp_path)
    message = str(error.value)
    assert message.startswith(f"Fashion-MNIST is not in {dl.datafiles.raw_dir(tmp_path, 'fashion')} and could not be "
                              "downloaded (Error downloading train-images-idx3-ubyte.gz")
    assert all(name in message for name in FASHION.files) and "\n" not in message
    assert f"`python -m digitlib data --dataset fashion` copies them from {DEBIAN}/ (Debian's package" in message

    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path))  # the command line says the same, in one line
    status, out, err = run(["train", "--dataset", "fashion", "--limit", "600", "--out", tmp_path / "x.pt"], capsys)
    assert status == 2 and err == f"error: {message}\n" and not (tmp_path / "x.pt").exists()


# --- loading, splitting, normalising -------------------------------------------------------------


def test_load_fashion_counts_types_and_balanced_labels(fashion_root):
    for train, count in ((True, 60_000), (False, 10_000)):
        images, labels = dl.data.load_dataset("fashion", train=train, root=fashion_root)
        assert images.shape == (count, 28, 28) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64
        assert torch.equal(labels.bincount(), torch.full((10,), count // 10))  # Fashion-MNIST is exactly balanced
    mnist_test = dl.data.load_mnist(train=False)[0]
    assert not torch.equal(images, mnist_test)  # not MNIST under another name


def test_fashion_splits_and_their_own_normalisation(fashion_root):
    splits = dl.data.load_splits(seed=0, train_limit=3000, test_limit=500, root=fashion_root, dataset="fashion")
    assert (len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)) == (2400, 600, 500)
    assert splits.dataset == "fashion" and splits.classes == NAMES
    assert torch.equal(splits.train_labels.bincount(), torch.full((10,), 240))  # stratified
    # Fashion-MNIST's pixels: mean 0.286, std 0.353 over all 60,000 images; 2,400 of them land within
    # 0.01 (the per-image mean varies by about 0.12, so its standard error here is 0.0025). MNIST's 0.13
    # and 0.31 are far outside.
    assert splits.mean == pytest.approx(0.286, abs=0.01) and splits.std == pytest.approx(0.353, abs=0.01)
    normalised = dl.data.normalize(splits.train_images, splits.mean, splits.std)
    assert normalised.shape == (2400, 1, 28, 28)
    assert normalised.mean().item() == pytest.approx(0, abs=1e-4) and normalised.std().item() == pytest.approx(1, 1e-3)


# --- train, then evaluate, through the command line -----------------------------------------------


@pytest.fixture(scope="module")
def fashion_checkpoint(fashion_root, tmp_path_factory):
    """A one-epoch CNN on 600 Fashion-MNIST images, trained by the command line to its default path."""
    models = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIGITLIB_DATA", str(fashion_root))
        use_models_folder(patch, models)
        status = dl.cli.main(["train", "--model", "cnn", "--dataset", "fashion", "--epochs", "1", "--batch-size",
                              "32", "--augment", "none", "--limit", "600", "--device", "cpu"])
    assert status == 0
    return models / "fashion" / "quick" / "cnn.pt"


def test_train_fashion_records_its_dataset_and_keeps_apart_from_mnist(fashion_checkpoint):
    models = fashion_checkpoint.parents[2]
    assert fashion_checkpoint.exists()  # models/fashion/quick/cnn.pt: no MNIST path was touched
    assert not (models / "quick").exists() and not (models / "cnn.pt").exists()
    info = read_checkpoint(fashion_checkpoint)
    assert info["data"]["dataset"] == "fashion" and dl.data.dataset_of(info) == "fashion"
    assert info["normalization"]["mean"] == pytest.approx(0.286, abs=0.03)  # Fashion's constants, not MNIST's 0.13


def test_evaluate_reads_the_dataset_from_the_checkpoint(fashion_checkpoint, fashion_root, monkeypatch, capsys):
    mnist_test = dl.data.load_mnist(train=False)  # before the data folder is pointed at Fashion-MNIST's
    monkeypatch.setenv("DIGITLIB_DATA", str(fashion_root))
    status, out, err = run(["evaluate", "--model", fashion_checkpoint, "--limit", "300", "--repeats", "0",
                            "--device", "cpu"], capsys)
    assert status == 0, err
    assert "test images  300 (Fashion-MNIST)" in out
    for name in NAMES:  # per-class accuracy, one line per class name
        assert re.search(rf"^  {re.escape(name)} +[\d.]+%$", out, re.MULTILINE), name
    pairs = re.findall(r"^  (.+) -> (.+): \d+$", out, re.MULTILINE)
    assert pairs and all(true in NAMES and predicted in NAMES for true, predicted in pairs)

    # The printed accuracy is the model's on the first 300 Fashion-MNIST test images, computed here again.
    model, info = dl.checkpoints.load_checkpoint(fashion_checkpoint, "cpu")
    mean, std = dl.checkpoints.normalization(info, fashion_checkpoint)

    def accuracy_on(images, labels):
        loader = dl.evaluation.make_test_loader(images[:300], labels[:300], mean, std)
        return dl.evaluation.classification_metrics(*dl.evaluation.predict_proba(model, loader, "cpu"))["accuracy"]

    on_fashion = accuracy_on(*dl.data.load_dataset("fashion", train=False, root=fashion_root))
    printed = float(re.search(r"^accuracy +([\d.]+)%", out, re.MULTILINE).group(1))
    assert printed == round(100 * on_fashion, 2)
    # 15 steps on 480 images; chance is 10 %. A trained model is far above it on its own test set (55-66 %
    # with seeds 0-2), and on MNIST's digits it is not (8-9 %: what evaluate would print had it used the
    # wrong test set).
    assert on_fashion > 0.3
    assert abs(accuracy_on(*mnist_test) - on_fashion) > 0.1


def test_a_dataset_mismatch_is_one_line(fashion_checkpoint, tmp_path, capsys):
    status, out, err = run(["evaluate", "--model", fashion_checkpoint, "--dataset", "mnist"], capsys)
    assert status == 2 and out == "" and err == (
        f"error: {fashion_checkpoint} was trained on Fashion-MNIST, not MNIST: leave out --dataset mnist to use "
        "its own test set, or pass a checkpoint trained on MNIST\n"
    )
    as_mnist = tmp_path / "mnist.pt"  # the same file, relabelled as an old MNIST checkpoint without a dataset
    shutil.copy(fashion_checkpoint, as_mnist)
    update_checkpoint(as_mnist, data={"train_limit": 600})
    status, out, err = run(["evaluate", "--model", fashion_checkpoint, as_mnist], capsys)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err == (f"error: {as_mnist} was trained on MNIST, not Fashion-MNIST: evaluate checkpoints of one "
                   f"dataset at a time ({fashion_checkpoint} was trained on Fashion-MNIST)\n")

    with pytest.raises(CheckpointError, match="was trained on Fashion-MNIST, not MNIST"):
        dl.zoo.load_or_train("cnn", fashion_checkpoint, device="cpu", log=None)
    _, info = dl.zoo.load_or_train("cnn", fashion_checkpoint, device="cpu", log=None, dataset="fashion")
    assert info["data"]["dataset"] == "fashion"


def test_predict_refuses_a_model_that_does_not_read_digits(fashion_checkpoint, tmp_path, capsys):
    # Its preprocessing crops, scales and centres a drawn digit: a Fashion-MNIST model would name a
    # garment for every drawing, so it is refused in one line rather than read.
    drawing = tmp_path / "one.png"
    dl.evaluation.as_drawing(dl.data.load_mnist(train=False)[0][2]).save(drawing)
    status, out, err = run(["predict", "--model", fashion_checkpoint, drawing], capsys)
    assert status == 2 and out == "" and err == (
        f"error: {fashion_checkpoint} was trained on Fashion-MNIST, not MNIST: predict reads drawn digits "
        "(cropped, scaled and centred like MNIST's); measure it with "
        f"`python -m digitlib evaluate --model {fashion_checkpoint}`\n"
    )


def test_evaluate_times_a_fashion_image_without_the_digit_preprocessing(fashion_checkpoint, fashion_root,
                                                                         monkeypatch, capsys):
    monkeypatch.setenv("DIGITLIB_DATA", str(fashion_root))
    status, out, err = run(["evaluate", "--model", fashion_checkpoint, "--limit", "200", "--repeats", "5",
                            "--device", "cpu"], capsys)
    assert status == 0, err
    latency = re.search(r"^latency .* for one 28x28 Fashion-MNIST test image: normalising ([\d.]+) ms \+ forward "
                        r"([\d.]+) ms \(CPU, 1 thread, 5 runs\)$", out, re.MULTILINE)
    assert latency, out
    assert 0 < float(latency.group(2))
    threads = re.search(r"^throughput +[\d,]+ images/s \(CPU forward pass, batches of 200, (\d+) threads?\)$", out,
                        re.MULTILINE)
    assert threads and threads.group(0).endswith("1 thread)" if threads.group(1) == "1" else "threads)")


def test_best_checkpoint_never_takes_a_fashion_model_for_digits(fashion_checkpoint, tmp_path, monkeypatch):
    use_models_folder(monkeypatch, tmp_path)
    digits, clothes = tmp_path / "digits.pt", tmp_path / "clothes.pt"
    shutil.copy(fashion_checkpoint, digits)
    update_checkpoint(digits, data={"dataset": "mnist"}, metrics={"test_accuracy": 0.5})
    shutil.copy(fashion_checkpoint, clothes)  # beside the digit model, with a higher accuracy
    update_checkpoint(clothes, metrics={"test_accuracy": 0.9})
    assert dl.zoo.best_checkpoint() == digits
    assert dl.zoo.best_checkpoint(tmp_path, dataset="fashion") == clothes
    with pytest.raises(CheckpointError) as error:  # models/fashion/ has none yet
        dl.zoo.best_checkpoint(dataset="fashion")
    assert str(error.value) == (
        f"no usable Fashion-MNIST checkpoint in {tmp_path / 'fashion'}: train one with "
        "`python -m digitlib train --dataset fashion`, or pass --model PATH."
    )


@pytest.mark.parametrize("command", ["data", "train", "models", "evaluate"])
def test_help_explains_the_dataset_flag(command, capsys):
    status, out, _ = run([command, "--help"], capsys)
    assert status == 0 and "--dataset" in out
    assert "(default: mnist)" in out or "(default: ['mnist'])" in out or "the dataset the checkpoint records" in out


# --- figures name the classes ---------------------------------------------------------------------


@pytest.fixture
def close_figures():
    yield
    plt.close("all")


def test_figures_take_class_names(close_figures):
    matrix = np.diag(np.full(10, 90)) + 1
    ax = dl.plots.confusion_heatmap(matrix, classes=NAMES)
    assert [label.get_text() for label in ax.get_xticklabels()] == list(NAMES)
    assert [label.get_text() for label in ax.get_yticklabels()] == list(NAMES)
    assert [label.get_text() for label in dl.plots.confusion_heatmap(matrix).get_xticklabels()] == list("0123456789")

    bars = dl.plots.per_class_bars(np.linspace(0.8, 0.95, 10), classes=NAMES)
    assert [label.get_text() for label in bars.get_xticklabels()] == list(NAMES)
    assert bars.get_xticklabels()[0].get_rotation() > 0  # long names are turned so they do not overlap

    mistakes = pd.DataFrame({"index": [0], "true": [6], "predicted": [0], "probability": [0.7], "second": [6],
                             "second_probability": [0.2]})
    figure = dl.plots.misclassified_gallery(torch.zeros(1, 28, 28, dtype=torch.uint8), mistakes, classes=NAMES)
    assert figure.axes[0].get_title() == "Shirt → T-shirt/top\nT-shirt/top: 70%\nShirt: 20%"

    labels = torch.arange(10).repeat_interleave(3)
    images = torch.zeros(30, 28, 28, dtype=torch.uint8)
    grid = dl.plots.sample_grid(images, labels, per_class=3, classes=NAMES)
    assert [grid.axes[row * 3].get_ylabel() for row in range(10)] == list(NAMES)
    balance = dl.plots.class_balance({"train": labels}, classes=NAMES)
    assert [label.get_text() for label in balance.get_xticklabels()] == list(NAMES)
    assert balance.get_xlabel() == "class" and dl.plots.class_balance({"train": labels}).get_xlabel() == "digit"
    means = dl.plots.mean_digits(images[:10].float(), classes=NAMES)
    assert [ax.get_title() for ax in means.axes] == list(NAMES)


def test_recompressed_copy_check_is_by_content_not_by_archive(fashion_root, tmp_path):
    # Any archive whose data are the originals is accepted, however it was compressed; others are refused.
    source = tmp_path / "source"
    source.mkdir()
    raw = dl.datafiles.raw_dir(fashion_root, "fashion")
    for name in FASHION.files:
        unzipped = raw / name.removesuffix(".gz")
        data = unzipped.read_bytes() if unzipped.exists() else gzip.decompress((raw / name).read_bytes())
        (source / name).write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    kept = dl.datafiles.copy_raw_files(source, tmp_path / "root", "fashion")
    assert all(hashlib.md5(path.read_bytes()).hexdigest() == FASHION.contents[path.name] for path in kept)

    labels = source / "t10k-labels-idx1-ubyte.gz"
    data = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(data[:-1] + bytes([(data[-1] + 1) % 10]), mtime=0))  # one label changed
    with pytest.raises(dl.DataError) as error:
        dl.datafiles.copy_raw_files(source, tmp_path / "other", "fashion")
    assert str(error.value) == (
        f"{labels} holds neither the original Fashion-MNIST file nor its data (both md5s differ from the "
        "originals'): replace it with the original file."
    )
