"""The datasets' files: where they come from, what they must be, and one line for whatever goes wrong.

``digitlib.data`` teaches what is in MNIST and Fashion-MNIST; this module keeps the files it reads
sound. Each dataset is four IDX files (:data:`DATASETS` says which, with torchvision's md5s) in
:func:`raw_dir`. Before torchvision reads them, :func:`check_raw_files` checks the archives' md5s and
the unzipped files' headers, sizes and labels (:func:`idx_problem`), because torchvision would
otherwise re-download a damaged archive, stop on a bare AssertionError, or hand labels outside 0..9
to training. :func:`copy_raw_files` copies the originals from a local folder atomically (a half
copied file never carries the real name), and :func:`download_guard` bounds a download's waits and
turns every network or file-system failure into one :class:`DataError` that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import math
import os
import shutil
import socket
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np

from .config import data_dir
from .errors import DataError
from .files import atomic_write

#: The four original files and the md5s torchvision checks (equal to ``torchvision.datasets.MNIST.resources``,
#: written out so that importing this module does not import torchvision; a test keeps the two in step).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: Fashion-MNIST's four files (the same names as MNIST's) and torchvision's md5s
#: (``torchvision.datasets.FashionMNIST.resources``; a test keeps the two in step).
FASHION_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: its names, its classes, and where its files come from and go."""

    name: str  # the library's and the command line's name: load_dataset(name), --dataset NAME
    title: str  # how people write it
    classes: tuple[str, ...]  # class names in label order: label k means classes[k]
    torchvision_class: str  # torchvision.datasets.<this> reads it, from <data root>/<this>/raw
    files: Mapping[str, str]  # the four original .gz files and torchvision's md5s
    # md5 of each unzipped file, to recognise a copy of the originals that was compressed again (see copy_raw_files).
    contents: Mapping[str, str]
    local_copy: Path  # where `make data` copies the files from when that folder exists
    local_copy_note: str = ""  # what puts them there, for messages

    @property
    def prepare_command(self) -> str:
        """The command that makes this dataset ready, for messages."""
        return "`make data`" if self.name == "mnist" else f"`python -m digitlib data --dataset {self.name}`"


#: The datasets digitlib knows, by name. The unzipped md5s were measured on the files that torchvision's
#: md5-checked downloads unzip to (for Fashion-MNIST also on Debian's copies: the same data).
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist", title="MNIST", classes=tuple(str(digit) for digit in range(10)), torchvision_class="MNIST",
        files=MNIST_FILES,
        contents={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        local_copy=Path("../shared/mnist"),
    ),
    "fashion": DatasetInfo(
        name="fashion", title="Fashion-MNIST",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
        torchvision_class="FashionMNIST", files=FASHION_FILES,
        contents={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        local_copy=Path("/usr/share/datasets/fashion-mnist"),
        local_copy_note=" (Debian's package dataset-fashion-mnist)",
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """``DATASETS[name]``, or a one-line :class:`DataError` that lists the known names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}.") from None


#: Seconds a download waits on each network operation (connect, each read) before giving up.
DOWNLOAD_TIMEOUT_S = 30.0
#: Environment variable that overrides :data:`DOWNLOAD_TIMEOUT_S`.
DOWNLOAD_TIMEOUT_ENV = "DIGITLIB_DOWNLOAD_TIMEOUT"

IMAGE_MAGIC = 2051  # IDX header: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # IDX header: unsigned bytes, 1 dimension
IMAGE_SIDE = 28

CLASSES = tuple(range(10))  # the labels a file may hold


@dataclass(frozen=True)
class IdxLayout:
    """What one unzipped MNIST file must look like."""

    magic: int
    count: int
    is_images: bool

    @property
    def header_bytes(self) -> int:
        return 16 if self.is_images else 8

    @property
    def size(self) -> int:
        """Bytes of the whole file: header plus one byte per pixel or label."""
        per_item = IMAGE_SIDE * IMAGE_SIDE if self.is_images else 1
        return self.header_bytes + self.count * per_item


_UNZIPPED_LAYOUTS = {
    "train-images-idx3-ubyte": IdxLayout(IMAGE_MAGIC, 60_000, is_images=True),
    "train-labels-idx1-ubyte": IdxLayout(LABEL_MAGIC, 60_000, is_images=False),
    "t10k-images-idx3-ubyte": IdxLayout(IMAGE_MAGIC, 10_000, is_images=True),
    "t10k-labels-idx1-ubyte": IdxLayout(LABEL_MAGIC, 10_000, is_images=False),
}

# errno values that mean "this folder cannot take the file", as opposed to a network failure.
_NOT_WRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def raw_dir(root: str | os.PathLike | None = None, dataset: str = "mnist") -> Path:
    """The folder torchvision reads a dataset from: ``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``."""
    return Path(root or data_dir()) / dataset_info(dataset).torchvision_class / "raw"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def download_timeout() -> float:
    """Seconds a download may wait on the network: ``$DIGITLIB_DOWNLOAD_TIMEOUT``, else :data:`DOWNLOAD_TIMEOUT_S`."""
    text = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    if not text:
        return DOWNLOAD_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise DataError(f"{DOWNLOAD_TIMEOUT_ENV}={text!r} is not a positive number of seconds: set it to e.g. 30.")
    return seconds


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give every new socket a timeout while the block runs, then restore the previous default.

    torchvision's download calls ``urlopen`` without a timeout, so a server that accepts and never
    answers would block forever; the process-wide default is the only handle on it.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(error: OSError) -> str:
    """``strerror: filename``, the part of an OSError a user can act on."""
    reason = error.strerror or type(error).__name__
    return f"{reason}: {error.filename}" if error.filename else reason


def _cannot_read(path: Path, error: OSError, dataset: str = "mnist") -> DataError:
    return DataError(
        f"cannot read {path} ({error.strerror or type(error).__name__}): make it readable, or set DIGITLIB_DATA to "
        f"a folder whose {dataset_info(dataset).torchvision_class}/raw/ has the files."
    )


def _cannot_write(folder: Path, error: OSError) -> DataError:
    """One line for a local file-system failure in ``folder``: read-only or not ours, full, or anything else."""
    if isinstance(error, PermissionError) or error.errno in _NOT_WRITABLE_ERRNOS:
        problem, advice = "cannot write to", "make it writable or set DIGITLIB_DATA to a writable folder"
    elif error.errno in _NO_SPACE_ERRNOS:
        problem, advice = "cannot write to", "free some space or set DIGITLIB_DATA to another disk"
    else:
        problem, advice = "cannot read or write", "check the disk or set DIGITLIB_DATA to another folder"
    return DataError(f"{problem} {folder} ({_reason(error)}): {advice}.")


def copy_mnist_files(source: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """Copy the four original MNIST ``.gz`` files from ``source`` into ``<root>/MNIST/raw``: :func:`copy_raw_files`."""
    return copy_raw_files(source, root, "mnist")


def copy_raw_files(
    source: str | os.PathLike, root: str | os.PathLike | None = None, dataset: str = "mnist"
) -> list[Path]:
    """Copy a dataset's four original ``.gz`` files from ``source`` into its :func:`raw_dir`.

    An archive with torchvision's md5 is copied as it is; torchvision unzips it. An archive that was
    compressed again is unzipped here instead, if its data are the originals (the unzipped md5 in
    :attr:`DatasetInfo.contents`): Debian's ``dataset-fashion-mnist`` strips the file name and date from
    each gzip header, which changes the archives' md5s but not a byte of the data, and torchvision would
    take such an archive for a broken download and fetch it again. Files already in place are left
    alone, so a second call only reads checksums. Returns the archives or unzipped files in the raw folder.
    """
    info = dataset_info(dataset)
    source, target = Path(source), raw_dir(root, dataset)
    kept = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, md5 in info.files.items():
            src, dst = source / name, target / name
            unzipped = target / name.removesuffix(".gz")
            if not src.exists():
                raise DataError(
                    f"{src} is missing: {source} should hold the four {info.title} files {', '.join(info.files)}."
                )
            if dst.exists() and _md5(dst) == md5:
                kept.append(dst)
            elif not dst.exists() and unzipped.exists() and _md5(unzipped) == info.contents[unzipped.name]:
                kept.append(unzipped)
            elif _md5(src) == md5:
                _replace_atomically(dst, src)
                kept.append(dst)
            else:
                data = _original_data(src, info)
                _replace_atomically(unzipped, data)
                dst.unlink(missing_ok=True)  # a damaged archive would stop loading; the unzipped data replace it
                kept.append(unzipped)
    except OSError as error:
        if error.filename and Path(error.filename).parent == source:
            raise _cannot_read(Path(error.filename), error, dataset) from None
        raise _cannot_write(target, error) from None
    return kept


def _original_data(archive: Path, info: DatasetInfo) -> bytes:
    """The unzipped content of ``archive`` if it is the original data, else a one-line DataError."""
    unzipped_name = archive.name.removesuffix(".gz")
    try:
        data = gzip.decompress(archive.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error):
        data = None
    if data is None or hashlib.md5(data, usedforsecurity=False).hexdigest() != info.contents[unzipped_name]:
        raise DataError(
            f"{archive} holds neither the original {info.title} file nor its data (both md5s differ from the "
            "originals'): replace it with the original file."
        )
    return data


def _replace_atomically(target: Path, content: Path | bytes) -> None:
    """``target`` written with ``content`` (a file to copy, or bytes) by ``files.atomic_write``: a
    half-written file (disk full, Ctrl-C) never carries the real name."""

    def write(file) -> None:
        if isinstance(content, bytes):
            file.write(content)
        else:
            with content.open("rb") as source:
                shutil.copyfileobj(source, file)

    atomic_write(target, write)


def idx_problem(path: str | os.PathLike, dataset: str = "mnist") -> str | None:
    """What is wrong with one unzipped MNIST or Fashion-MNIST file, or None when it is sound.

    Checks what torchvision would otherwise trip over with an AssertionError, or pass on to
    training: the IDX magic number, the dimensions (N, 28, 28) or (N,), the file size, and for
    label files that every label is a class 0..9. ``path``'s name says which of the four files it
    must be (both datasets name them alike). Reads the header only, plus the labels (60 KB at most).
    """
    path = Path(path)
    layout = _UNZIPPED_LAYOUTS[path.name]
    kind = "images" if layout.is_images else "labels"
    title = dataset_info(dataset).title
    size = path.stat().st_size
    if size < layout.header_bytes:
        return f"is truncated or corrupt ({size:,} bytes, expected {layout.size:,})"
    with path.open("rb") as file:
        header = np.frombuffer(file.read(layout.header_bytes), dtype=">u4")  # IDX: big-endian 32-bit integers
        magic, dims = int(header[0]), tuple(int(d) for d in header[1:])
        if magic != layout.magic:
            article = "an" if title.startswith("MNIST") else "a"  # "an em-nist", "a fashion-em-nist"
            return f"is not {article} {title} {kind} file (magic number {magic}, expected {layout.magic})"
        expected_dims = (layout.count, IMAGE_SIDE, IMAGE_SIDE) if layout.is_images else (layout.count,)
        if dims != expected_dims:
            shown = " x ".join(f"{d:,}" for d in dims)
            wanted = " x ".join(f"{d:,}" for d in expected_dims)
            return f"has {kind} of shape {shown} in its header, expected {wanted}"
        if size != layout.size:
            return f"is truncated or corrupt ({size:,} bytes, expected {layout.size:,})"
        if not layout.is_images:
            labels = np.frombuffer(file.read(), dtype=np.uint8)
            wrong = np.flatnonzero(labels > CLASSES[-1])
            if wrong.size:
                count = f"{wrong.size:,} label" + ("s" if wrong.size > 1 else "")
                return f"holds label {labels[wrong[0]]} at position {wrong[0]:,} ({count} outside 0..{CLASSES[-1]})"
    return None


def check_raw_files(root: str | os.PathLike | None = None, dataset: str = "mnist") -> None:
    """Fail with a clear message if a file in the dataset's raw folder is truncated, corrupt or unreadable.

    torchvision would otherwise try to re-download a bad ``.gz``, stop on an AssertionError for a
    bad header, or hand out labels that crash training. An unzipped file that is wrong but has a
    good ``.gz`` beside it is simply removed, so torchvision unzips it again.
    """
    info = dataset_info(dataset)
    folder, remedy = raw_dir(root, dataset), info.prepare_command
    for name, md5 in info.files.items():
        archive, unzipped = folder / name, folder / name.removesuffix(".gz")
        for path in (archive, unzipped):
            if path.exists() and not path.is_file():
                raise DataError(f"{path} is not a file: remove it and run {remedy}.")
        try:
            archive_ok = archive.exists() and _md5(archive) == md5
        except OSError as error:
            raise _cannot_read(archive, error, dataset) from None
        if archive.exists() and not archive_ok:
            raise DataError(
                f"{archive} is truncated or corrupt (its md5 is not the original's {md5}). "
                f"Delete it and run {remedy}, or copy the original file there."
            )
        try:
            problem = idx_problem(unzipped, dataset) if unzipped.exists() else None
        except OSError as error:
            raise _cannot_read(unzipped, error, dataset) from None
        if problem is None:
            continue
        if not archive_ok:
            raise DataError(f"{unzipped} {problem}. Delete it and run {remedy}.")
        try:
            unzipped.unlink()  # torchvision unzips it again from the good archive
        except OSError as error:
            raise _cannot_write(folder, error) from None


def _is_timeout(error: BaseException) -> bool:
    reason = getattr(error, "reason", None)
    return isinstance(error, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(error)


def _download_failure(folder: Path, error: BaseException, timeout_s: float, info: DatasetInfo) -> DataError:
    if _is_timeout(error):
        reason = f"no answer within {timeout_s:g} s; {DOWNLOAD_TIMEOUT_ENV} sets that limit"
    else:
        # torchvision reports each mirror on its own lines: keep the first (which file) and the last (why).
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    return DataError(
        f"{info.title} is not in {folder} and could not be downloaded ({reason}). "
        f"Put the four original files there ({', '.join(info.files)}): {info.prepare_command} copies "
        f"them from {info.local_copy}/{info.local_copy_note}, or set DIGITLIB_DATA to a folder whose "
        f"{info.torchvision_class}/raw/ has them."
    )


# Failures of the download itself, as opposed to the local folder. URLError is an OSError too, and
# torchvision wraps each file's failed mirrors in one RuntimeError.
_NETWORK_ERRORS = (RuntimeError, URLError, TimeoutError, ConnectionError, socket.gaierror, socket.herror)


def available(dataset: str = "mnist", root: str | os.PathLike | None = None) -> bool:
    """True when the raw folder holds all four files (archive or unzipped), so loading needs no download.

    Says nothing about whether they are sound: loading checks that.
    """
    folder = raw_dir(root, dataset)
    return all((folder / name).is_file() or (folder / name.removesuffix(".gz")).is_file()
               for name in dataset_info(dataset).files)


@contextlib.contextmanager
def download_guard(root: str | os.PathLike | None = None, dataset: str = "mnist",
                   timeout_s: float | None = None) -> Iterator[None]:
    """Around torchvision's read of a dataset (which downloads the files it lacks): bounded waits, clear failures.

    Every network operation waits at most ``timeout_s`` seconds (default :func:`download_timeout`): torchvision
    sets no timeout, so a server that accepts and never answers would block forever. A failed download
    becomes a :class:`DataError` that names the folder and the ways to fill it; a folder that cannot take
    the files (read-only, full) one that says so, not a network failure.
    """
    info = dataset_info(dataset)
    folder = raw_dir(root, dataset)
    timeout_s = download_timeout() if timeout_s is None else timeout_s
    try:
        with _socket_timeout(timeout_s):
            yield
    except _NETWORK_ERRORS as error:
        raise _download_failure(folder, error, timeout_s, info) from None
    except OSError as error:
        raise _cannot_write(folder, error) from None
