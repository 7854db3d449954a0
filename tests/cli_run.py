"""Run ``python -m digitlib`` in the test's own process (fast, and monkeypatches apply)."""

from __future__ import annotations

from digitlib.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m digitlib *argv``."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err
