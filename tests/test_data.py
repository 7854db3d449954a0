"""digitlib.data, datafiles and config: loading, bad files, the split, augmentation, loaders, paths."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import torch
import torchvision

import digitlib as dl
from digitlib import cli, config

# The project's MNIST folder, which `make test` prepares (read before any test changes DIGITLIB_DATA).
PROJECT_RAW = dl.datafiles.raw_dir()
UNZIPPED = [name.removesuffix(".gz") for name in dl.datafiles.MNIST_FILES]


def copy_archives(root):
    """The four original .gz files copied into ``root/MNIST/raw``; returns that folder."""
    dl.datafiles.copy_mnist_files(PROJECT_RAW, root)
    return dl.datafiles.raw_dir(root)


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
    copied = dl.datafiles.copy_mnist_files(PROJECT_RAW, tmp_path)
    assert sorted(path.name for path in copied) == sorted(dl.datafiles.MNIST_FILES)
    for path in copied:
        assert path.parent == tmp_path / "MNIST" / "raw"
        assert hashlib.md5(path.read_bytes()).hexdigest() == dl.datafiles.MNIST_FILES[path.name]
    # Exactly the four files: no temporary file of the atomic writes is left behind.
    assert sorted(path.name for path in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(dl.datafiles.MNIST_FILES)

    images, labels = dl.data.load_mnist(train=False, root=tmp_path)
    expected_images, expected_labels = dl.data.load_mnist(train=False)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_copy_mnist_files_from_an_incomplete_source_names_the_missing_file(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(dl.DataError, match="train-images-idx3-ubyte.gz is missing"):
        dl.datafiles.copy_mnist_files(source, tmp_path / "root")


def test_truncated_archive_is_reported_by_name(tmp_path):
    raw = copy_archives(tmp_path)
    truncate(raw / "train-labels-idx1-ubyte.gz")
    with pytest.raises(dl.DataError, match="truncated or corrupt") as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    assert str(raw / "train-labels-idx1-ubyte.gz") in str(error.value)
    assert "make data" in str(error.value)


def test_truncated_unzipped_file_is_extracted_again_from_its_archive(tmp_path):
    raw = copy_archives(tmp_path)
    for name in UNZIPPED:   # all four, or torchvision would unzip every archive again anyway
        shutil.copyfile(PROJECT_RAW / name, raw / name)
    unzipped = raw / "t10k-labels-idx1-ubyte"
    truncate(unzipped, 100)

    images, labels = dl.data.load_mnist(train=False, root=tmp_path)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert unzipped.read_bytes() == (PROJECT_RAW / unzipped.name).read_bytes()


def test_truncated_unzipped_file_without_archive_is_reported_by_name(tmp_path):
    raw = dl.datafiles.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in UNZIPPED:
        shutil.copyfile(PROJECT_RAW / name, raw / name)
    truncate(raw / "train-images-idx3-ubyte")
    with pytest.raises(dl.DataError, match="truncated or corrupt") as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    assert str(raw / "train-images-idx3-ubyte") in str(error.value)
    assert "make data" in str(error.value)


def test_missing_files_that_cannot_be_downloaded_say_where_and_what_to_do(tmp_path, monkeypatch, no_proxy):
    # Port 9 (discard) is closed on localhost: the download fails at once and nothing leaves the machine.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(dl.DataError) as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    message = str(error.value)
    assert str(dl.datafiles.raw_dir(tmp_path)) in message
    for name in dl.datafiles.MNIST_FILES:
        assert name in message
    assert "make data" in message
    assert "\n" not in message   # one line, not torchvision's multi-line report


def test_mnist_files_match_torchvision():
    # MNIST_FILES is written out so that importing digitlib.data (and datafiles) does not import torchvision.
    assert dl.datafiles.MNIST_FILES == dict(torchvision.datasets.MNIST.resources)
    assert dl.datafiles.DATASETS["mnist"].files is dl.datafiles.MNIST_FILES


def test_the_unzipped_md5s_are_those_of_the_original_archives():
    # DatasetInfo.contents recognises a re-compressed copy; it must be what the md5-checked archives hold.
    contents = dl.datafiles.DATASETS["mnist"].contents
    for name in dl.datafiles.MNIST_FILES:
        data = gzip.decompress((PROJECT_RAW / name).read_bytes())
        assert hashlib.md5(data).hexdigest() == contents[name.removesuffix(".gz")], name


def test_a_recompressed_archive_is_unzipped_by_the_copy_and_loads(tmp_path):
    # Another gzip header (no file name, another date) changes an archive's md5 but not its data: the
    # copy unzips it itself (torchvision would discard it and download again), and a damaged archive left
    # in the target is replaced by the good data.
    source = tmp_path / "source"
    source.mkdir()
    for name in dl.datafiles.MNIST_FILES:
        (source / name).write_bytes(gzip.compress(gzip.decompress((PROJECT_RAW / name).read_bytes()), mtime=0))
    raw = dl.datafiles.raw_dir(tmp_path / "root")
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"half a download")
    kept = dl.datafiles.copy_mnist_files(source, tmp_path / "root")
    assert sorted(path.name for path in kept) == sorted(UNZIPPED) == sorted(path.name for path in raw.iterdir())
    images, labels = dl.data.load_mnist(train=False, root=tmp_path / "root", download=False)
    expected_images, expected_labels = dl.data.load_mnist(train=False)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)


def test_every_network_failure_is_reported_with_its_reason(tmp_path, monkeypatch, no_proxy):
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(dl.DataError, match="could not be downloaded") as error:
        dl.data.load_mnist(train=True, root=tmp_path)
    assert "Connection refused" in str(error.value) and "train-images-idx3-ubyte.gz" in str(error.value)


# --- a download that never answers ----------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch):
    """Local test servers are reached directly, even where a proxy is configured."""
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def silent_mirror(monkeypatch, no_proxy):
    """torchvision's MNIST mirrors pointed at a local server that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    connections, stop = [], threading.Event()

    def accept_and_say_nothing():
        while not stop.is_set():
            try:
                connections.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{listener.getsockname()[1]}/"])
    yield connections
    stop.set()
    thread.join()
    for connection in connections:
        connection.close()
    listener.close()


def call_with_deadline(function, seconds):
    """(exception raised or None, elapsed seconds); fails instead of hanging the suite when ``function`` hangs."""
    outcome = {}

    def target():
        try:
            function()
        except BaseException as error:   # handed to the test, which checks its type
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s: the download has no timeout"
    return outcome.get("error"), time.monotonic() - start


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_a_download_that_never_answers_times_out_with_a_clear_message(tmp_path, monkeypatch, silent_mirror, how):
    if how == "environment":
        monkeypatch.setenv("DIGITLIB_DOWNLOAD_TIMEOUT", "1")
        call = lambda: dl.data.load_mnist(train=True, root=tmp_path)   # noqa: E731
    else:
        monkeypatch.delenv("DIGITLIB_DOWNLOAD_TIMEOUT", raising=False)
        call = lambda: dl.data.prepare(root=tmp_path, timeout_s=1)   # noqa: E731
    previous_default = socket.getdefaulttimeout()
    # A 1 s timeout returns in about 1 s; 20 s leaves room for a loaded machine. Without a timeout
    # the call never returns, and the deadline turns that into a failure instead of a stuck suite.
    error, elapsed = call_with_deadline(call, 20)
    assert isinstance(error, dl.DataError), repr(error)
    assert elapsed < 20
    assert silent_mirror, "the download never reached the silent server, so nothing was tested"
    message = str(error)
    assert "could not be downloaded (no answer within 1 s" in message and "make data" in message
    assert "\n" not in message
    assert socket.getdefaulttimeout() == previous_default   # the process-wide default is restored


def test_download_timeout_defaults_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("DIGITLIB_DOWNLOAD_TIMEOUT", raising=False)
    assert dl.datafiles.download_timeout() == dl.datafiles.DOWNLOAD_TIMEOUT_S
    monkeypatch.setenv("DIGITLIB_DOWNLOAD_TIMEOUT", " 2.5 ")
    assert dl.datafiles.download_timeout() == 2.5


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_download_timeout_rejects_what_is_not_a_positive_number(monkeypatch, value):
    monkeypatch.setenv("DIGITLIB_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(dl.DataError, match="DIGITLIB_DOWNLOAD_TIMEOUT=.* is not a positive number of seconds"):
        dl.datafiles.download_timeout()


# --- headers and labels of the unzipped files -----------------------------------------------


def put_u32(path, offset, value):
    """Overwrite one big-endian 32-bit field of an IDX header."""
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = value.to_bytes(4, "big")
    path.write_bytes(bytes(data))


def put_label(path, position, value):
    data = bytearray(path.read_bytes())
    data[8 + position] = value
    path.write_bytes(bytes(data))


# (file, damage, what the message must say). Sizes stay right, so only the new checks can catch these.
BAD_FILES = {
    "image magic": ("t10k-images-idx3-ubyte", lambda p: put_u32(p, 0, 2049),
                    "is not an MNIST images file (magic number 2049, expected 2051)"),
    "label magic": ("t10k-labels-idx1-ubyte", lambda p: put_u32(p, 0, 2051),
                    "is not an MNIST labels file (magic number 2051, expected 2049)"),
    "image shape": ("t10k-images-idx3-ubyte", lambda p: put_u32(p, 12, 27),
                    "has images of shape 10,000 x 28 x 27 in its header, expected 10,000 x 28 x 28"),
    "label count": ("t10k-labels-idx1-ubyte", lambda p: put_u32(p, 4, 9_999),
                    "has labels of shape 9,999 in its header, expected 10,000"),
    "label 200": ("t10k-labels-idx1-ubyte", lambda p: put_label(p, 17, 200),
                  "holds label 200 at position 17 (1 label outside 0..9)"),
    "label 10, last": ("train-labels-idx1-ubyte", lambda p: put_label(p, 59_999, 10),
                       "holds label 10 at position 59,999"),
}


def test_the_project_files_have_no_problem():
    for name in UNZIPPED:
        assert dl.datafiles.idx_problem(PROJECT_RAW / name) is None, name


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_unzipped_file_without_archive_is_named_with_what_is_wrong(tmp_path, case):
    name, damage, expected = BAD_FILES[case]
    raw = dl.datafiles.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for each in UNZIPPED:
        shutil.copyfile(PROJECT_RAW / each, raw / each)
    damage(raw / name)
    assert (raw / name).stat().st_size == (PROJECT_RAW / name).stat().st_size
    with pytest.raises(dl.DataError) as error:
        dl.data.load_mnist(train=name.startswith("train"), root=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{raw / name} ") and expected in message
    assert message.endswith("Delete it and run `make data`.") and "\n" not in message


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_unzipped_file_with_a_good_archive_is_extracted_again(tmp_path, case):
    name, damage, _ = BAD_FILES[case]
    raw = copy_archives(tmp_path)
    for each in UNZIPPED:   # all four, or torchvision would unzip every archive again anyway
        shutil.copyfile(PROJECT_RAW / each, raw / each)
    damage(raw / name)
    images, labels = dl.data.load_mnist(train=name.startswith("train"), root=tmp_path)
    assert (raw / name).read_bytes() == (PROJECT_RAW / name).read_bytes()
    assert len(images) == len(labels) and labels.max().item() <= 9


def test_a_folder_in_place_of_a_file_is_named(tmp_path):
    raw = copy_archives(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").mkdir()
    with pytest.raises(dl.DataError, match="t10k-labels-idx1-ubyte is not a file: remove it"):
        dl.data.load_mnist(train=False, root=tmp_path)


# --- folders that cannot be written or read -------------------------------------------------


def test_a_read_only_folder_with_a_short_file_says_so(tmp_path):
    raw = copy_archives(tmp_path)
    shutil.copyfile(PROJECT_RAW / "t10k-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte")
    truncate(raw / "t10k-labels-idx1-ubyte", 100)
    raw.chmod(0o555)
    try:
        if os.access(raw, os.W_OK):
            pytest.skip("this user (root?) can write to a read-only folder; the monkeypatched test below covers it")
        with pytest.raises(dl.DataError) as error:
            dl.data.load_mnist(train=False, root=tmp_path)
    finally:
        raw.chmod(0o755)
    assert str(error.value).startswith(f"cannot write to {raw} (Permission denied")
    assert "set DIGITLIB_DATA to a writable folder" in str(error.value)


def test_a_short_file_that_cannot_be_removed_says_the_folder_is_not_writable(tmp_path, monkeypatch):
    raw = copy_archives(tmp_path)
    short = raw / "t10k-labels-idx1-ubyte"
    shutil.copyfile(PROJECT_RAW / short.name, short)
    truncate(short, 100)

    def refuse(path, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)   # what a read-only folder does, even for root
    with pytest.raises(dl.DataError) as error:
        dl.data.load_mnist(train=False, root=tmp_path)
    message = str(error.value)
    assert message.startswith(f"cannot write to {raw} (Permission denied: {short})")
    assert "could not be downloaded" not in message and "\n" not in message
    assert short.stat().st_size == 100   # nothing else was touched


@pytest.mark.parametrize("error, advice", [
    (PermissionError(errno.EACCES, "Permission denied"), "make it writable or set DIGITLIB_DATA to a writable folder"),
    (OSError(errno.EROFS, "Read-only file system"), "make it writable or set DIGITLIB_DATA to a writable folder"),
    (OSError(errno.ENOSPC, "No space left on device"), "free some space or set DIGITLIB_DATA to another disk"),
])
def test_a_folder_that_cannot_take_the_download_is_not_called_a_network_failure(tmp_path, monkeypatch, error, advice):
    def download(self):
        error.filename = os.path.join(self.raw_folder, "train-images-idx3-ubyte.gz")
        raise error

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", download)
    with pytest.raises(dl.DataError) as caught:
        dl.data.load_mnist(train=True, root=tmp_path)
    message = str(caught.value)
    raw = dl.datafiles.raw_dir(tmp_path)
    assert message.startswith(f"cannot write to {raw} ({error.strerror}: {raw / 'train-images-idx3-ubyte.gz'})")
    assert advice in message and "could not be downloaded" not in message


def test_copying_into_a_folder_that_cannot_be_written_says_so(tmp_path, monkeypatch):
    def refuse(dir, prefix, suffix, **kwargs):  # where a read-only folder fails: creating the file
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}x{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(dl.DataError, match="cannot write to .* make it writable"):
        dl.datafiles.copy_mnist_files(PROJECT_RAW, tmp_path)


def test_an_unreadable_source_is_not_called_an_unwritable_target(tmp_path, monkeypatch):
    def refuse(source, target, *args):
        raise PermissionError(errno.EACCES, "Permission denied", source.name)

    monkeypatch.setattr(shutil, "copyfileobj", refuse)
    with pytest.raises(dl.DataError, match=r"^cannot read .*train-images-idx3-ubyte.gz \(Permission denied\)"):
        dl.datafiles.copy_mnist_files(PROJECT_RAW, tmp_path)


def test_a_copy_that_fills_the_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    def fill_the_disk(source, target, *args):
        target.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", fill_the_disk)
    with pytest.raises(dl.DataError, match=r"^cannot write to .*No space left on device.*free some space"):
        dl.datafiles.copy_mnist_files(PROJECT_RAW, tmp_path)
    assert list(dl.datafiles.raw_dir(tmp_path).iterdir()) == []


def test_any_other_file_system_failure_is_one_line_too(tmp_path, monkeypatch):
    def fail(self):
        raise OSError(errno.EIO, "Input/output error", os.path.join(self.raw_folder, "t10k-images-idx3-ubyte"))

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fail)
    with pytest.raises(dl.DataError, match=r"^cannot read or write .*\(Input/output error: .*\): check the disk"):
        dl.data.load_mnist(train=False, root=tmp_path)


def test_an_unreadable_file_says_so(tmp_path, monkeypatch):
    raw = copy_archives(tmp_path)
    shutil.copyfile(PROJECT_RAW / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte")

    def refuse(path, dataset="mnist"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(dl.datafiles, "idx_problem", refuse)   # chmod 000 does not stop root
    with pytest.raises(dl.DataError, match=r"^cannot read .*t10k-images-idx3-ubyte \(Permission denied\): make it"):
        dl.data.load_mnist(train=False, root=tmp_path)


# --- light imports and the documented size ---------------------------------------------------

HEAVY_MODULES = ("albumentations", "cv2", "sklearn", "torchvision")


def run_python(code):
    environment = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_importing_digitlib_data_loads_no_heavy_package():
    # digitlib/__init__ loads submodules lazily, so this measures digitlib.data's own imports.
    code = f"import sys, digitlib.data; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    assert run_python(code) == ["[]"]


def test_augmentation_switches_off_albumentations_update_check_before_importing_it():
    code = (
        "import os, sys, digitlib.augment\n"
        "digitlib.augment.train_augmentation(seed=0)\n"
        "print('albumentations' in sys.modules, os.environ.get('NO_ALBUMENTATIONS_UPDATE'))"
    )
    assert run_python(code) == ["True 1"]


def test_the_docstring_states_the_real_size_of_the_images():
    sizes = [dl.data.load_mnist(train=train)[0] for train in (True, False)]
    megabytes = sum(images.nelement() * images.element_size() for images in sizes) / 1e6
    assert f"({round(megabytes)} MB for all {sum(len(images) for images in sizes):,}" in dl.data.__doc__


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
    monkeypatch.setenv("DIGITLIB_SMOKE", "1")   # quick runs keep to a subfolder of DIGITLIB_MODELS too
    assert dl.data_dir() == tmp_path / "data"
    assert dl.datafiles.raw_dir() == tmp_path / "data" / "MNIST" / "raw"
    assert dl.models_dir() == tmp_path / "models" / "smoke"
    assert dl.models_dir(quick=False) == tmp_path / "models"
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
    assert all((raw / name).exists() for name in dl.datafiles.MNIST_FILES)
    assert all((raw / name).stat().st_size == (PROJECT_RAW / name).stat().st_size for name in UNZIPPED)


def test_cli_data_with_a_bad_source_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIGITLIB_DATA", str(tmp_path / "data"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["data", "--source", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is missing" in err


def test_the_split_a_checkpoint_was_chosen_on_is_its_split_seed_else_its_seed():
    # Every seed of a model set holds out the same images (train --split-seed 0), so that the seeds can be
    # compared and ensembled on one validation set; checkpoints from before split with their own seed.
    assert dl.data.split_seed_of({"seed": 3, "data": {"split_seed": 0}}) == 0
    assert dl.data.split_seed_of({"seed": 3, "data": {"dataset": "mnist"}}) == 3
    assert dl.data.split_seed_of({"seed": 3}) == 3
    assert dl.data.split_seed_of({}) == 0


def test_the_lesson_keeps_the_names_learners_call_in_dl_data():
    # The registry and the files' folder live in datafiles; notebooks and the command line reach them through data.
    assert dl.data.DATASETS is dl.datafiles.DATASETS
    assert dl.data.dataset_info is dl.datafiles.dataset_info and dl.data.raw_dir is dl.datafiles.raw_dir
