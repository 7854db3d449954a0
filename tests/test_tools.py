"""The measurement scripts in tools/: bad input gets one clear line and a non-zero exit, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "not_a_digit_by_recipe.py"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_a_recipe_without_checkpoints_is_refused():
    result = run_tool("--recipe", "smoothed")
    assert result.returncode == 2
    assert "--recipe smoothed: name its checkpoints after it" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_checkpoint_is_named_before_any_work(tmp_path):
    there = tmp_path / "there.pt"
    there.write_bytes(b"")
    missing = tmp_path / "missing.pt"
    result = run_tool("--recipe", "default", str(there), str(missing))
    assert result.returncode == 2
    assert f"no checkpoint at {missing}" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_file_that_is_no_checkpoint_gets_one_line(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    result = run_tool("--recipe", "default", str(broken), "--per-kind", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_an_existing_out_file_is_never_overwritten(tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    earlier = tmp_path / "figures.json"
    earlier.write_text("[]\n")
    result = run_tool("--recipe", "default", str(checkpoint), "--out", str(earlier))
    assert result.returncode == 2
    assert f"--out {earlier} exists" in result.stderr and "Traceback" not in result.stderr
    assert earlier.read_text() == "[]\n"
