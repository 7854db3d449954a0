"""Writing files so that an interruption never leaves half of one under the real name.

Checkpoints, exported ONNX models and the dataset files copied into ``data/`` are all written the
same way: into a temporary file beside the target, flushed to disk, then renamed over it. A rename
within one folder is atomic, so a reader (or the next run) finds the old file, or none, or the
whole new one: never a truncated file that fails later with a confusing error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` with ``write(file)`` under a temporary name beside it, then rename it over ``path``.

    An exception (a full disk, Ctrl-C) removes the temporary file and leaves ``path`` as it was.
    """
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
