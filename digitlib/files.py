"""Writing files so that an interruption never leaves half of one under the real name.

Checkpoints, exported ONNX models and the dataset files copied into ``data/`` are all written the
same way: into a temporary file beside the target, flushed to disk, then renamed over it. A rename
within one folder is atomic, so a reader (or the next run) finds the old file, or none, or the
whole new one: never a truncated file that fails later with a confusing error.

A destination must be a regular file or a new path (:func:`check_destination`): renaming over a
device node, a FIFO or a socket would replace it (as root, ``--out /dev/null --force`` would replace
the real /dev/null), and a folder cannot be replaced at all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import DigitlibError

#: What each kind of non-regular file is called in messages, by the ``stat`` test that tells it.
_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file, nor a folder, nor absent: "a character device",
    "a block device", "a FIFO (named pipe)" or "a socket"; else None.

    Symbolic links are followed: a link to /dev/null is a character device. Only ``stat`` is used,
    never ``open``: opening a FIFO waits for a writer, forever.
    """
    try:
        mode = path.stat().st_mode
    except OSError:  # absent, a dangling link, a loop, no permission: the caller's open() says which
        return None
    return next((kind for is_kind, kind in _SPECIAL_KINDS if is_kind(mode)), None)


def check_destination(path: Path) -> Path:
    """Raise :class:`DigitlibError` (one line) unless ``path`` is a regular file or does not exist yet.

    The one check of every destination the command line writes (``train``, ``models``, ``export``),
    and of :func:`atomic_write`: a device, a FIFO, a socket or a folder is refused before any work is
    done, and never touched.
    """
    kind = "a folder" if path.is_dir() else special_file_kind(path)
    if kind is not None:
        raise DigitlibError(
            f"{path} is {kind}, not a regular file: it is never replaced; give the path of a new file or of a "
            "regular file"
        )
    return path


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` with ``write(file)`` under a temporary name beside it, then rename it over ``path``.

    An exception (a full disk, Ctrl-C) removes the temporary file and leaves ``path`` as it was.
    A ``path`` that is not a regular file or a new path is refused first (:func:`check_destination`).
    """
    check_destination(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; these are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then raise KeyboardInterrupt.

    A write that is cut short leaves nothing behind; one that is allowed to finish keeps what it
    was writing (the epoch just trained, the test metrics). Signal handlers can only be set in the
    main thread: elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if received:
        raise KeyboardInterrupt
