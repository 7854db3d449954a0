"""Helpers shared by several test files."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from digitlib.cli import main

# Debian's Chromium, which the browser tests drive through Playwright's executable_path (Playwright's
# own browser download is never used); None where it is not installed.
CHROMIUM = next(
    (path for path in ("/usr/bin/chromium", shutil.which("chromium")) if path and os.access(path, os.X_OK)), None
)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def run(argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m digitlib *argv``, run in the test's own process
    (fast, and monkeypatches apply)."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def make_unreadable(path: Path, module, monkeypatch) -> None:
    """chmod 000. Root reads such files anyway, so as root ``module``'s open() is also made to fail
    for ``path`` the way the OS fails it for everyone else (same exception, errno and text)."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        real_open = open

        def open_as_another_user(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(module, "open", open_as_another_user, raising=False)


def use_models_folder(monkeypatch, folder: Path) -> None:
    """Make ``folder`` the models folder the command line reads and writes by default, in full mode.

    `make test` runs with DIGITLIB_SMOKE=1, under which the library keeps to the quick subfolder
    ``folder/smoke``; a test about the default folder itself asks for full mode instead.
    """
    monkeypatch.setenv("DIGITLIB_MODELS", str(folder))
    monkeypatch.delenv("DIGITLIB_SMOKE", raising=False)


def train_config(epochs: int, loader=None, **settings):
    """A ``TrainConfig`` for a test: ``epochs``, a one-cycle peak of 0.01 unless ``settings`` say otherwise,
    and ``loader``'s batch size (``fit`` refuses loaders built with another one)."""
    from digitlib.config import TrainConfig

    batch_size = getattr(loader, "batch_size", None) or 128
    return TrainConfig(epochs=epochs, **{"max_lr": 1e-2, "batch_size": batch_size, **settings})
