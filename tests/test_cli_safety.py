"""Nothing is lost and nothing crashes: overwrites, bad numbers, bad destinations, signals, resume.

Every failure here must be one line on stderr that says what to do, and a non-zero exit.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run

import digitlib as dl
from digitlib.checkpoints import read_checkpoint
from digitlib.cli import main

# A two-epoch CNN on 600 images (480 train / 120 validation): a few seconds.
TINY = ["train", "--model", "cnn", "--epochs", "2", "--batch-size", "32", "--limit", "600"]


def one_line_error(status: int, err: str, *fragments: str) -> bool:
    return status != 0 and len(err.splitlines()) == 1 and "Traceback" not in err and all(f in err for f in fragments)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trained") / "cnn.pt"
    assert main([*TINY, "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize(("flag", "value"), [
    ("--max-lr", "nan"), ("--lr", "inf"), ("--weight-decay", "nan"), ("--lr", "-inf"), ("--weight-decay", "-1"),
])
def test_non_finite_numbers_are_refused_before_anything_runs(capsys, tmp_path, flag, value):
    status, out, err = run([*TINY, f"{flag}={value}", "--out", tmp_path / "x.pt"], capsys)
    assert status == 2 and out == "" and f"argument {flag}: '{value}' is not a finite" in err
    assert not list(tmp_path.iterdir())


def test_fit_refuses_non_finite_settings_too():
    model = dl.models.build_model("cnn")
    batch = [(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))]
    for bad in ({"max_lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": float("nan")}, {"clip_norm": -1.0}):
        with pytest.raises(dl.training.TrainingError, match="must be a finite"):
            dl.training.fit(model, batch, batch, epochs=1, device="cpu", progress=False, log=None, **bad)


class NaNModel(torch.nn.Module):
    """Learns nothing and answers NaN: what a diverged network does."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.full((len(x), 10), float("nan")) * self.weight


def test_a_loss_that_stops_being_a_number_stops_training(tmp_path):
    batch = [(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))] * 2
    with pytest.raises(dl.training.TrainingError, match="the training loss became nan in epoch 1"):
        dl.training.fit(NaNModel(), batch, batch, epochs=3, device="cpu", checkpoint=tmp_path / "nan.pt",
                        progress=False, log=None)
    assert not (tmp_path / "nan.pt").exists()  # a NaN model is never saved


def test_an_existing_checkpoint_is_not_replaced_without_force(tiny_checkpoint, capsys):
    before = tiny_checkpoint.read_bytes()
    status, out, err = run([*TINY, "--epochs", "1", "--out", tiny_checkpoint], capsys)
    assert one_line_error(status, err, f"{tiny_checkpoint} already exists (a trained cnn, test accuracy", "--force")
    assert out == "" and tiny_checkpoint.read_bytes() == before
    status, _, err = run([*TINY, "--out", tiny_checkpoint, "--force", "--resume"], capsys)
    assert one_line_error(status, err, "pass one of them")


def test_force_replaces(tiny_checkpoint, tmp_path, capsys):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    status, _, err = run([*TINY, "--epochs", "1", "--out", copy, "--force"], capsys)
    assert status == 0, err
    assert read_checkpoint(copy)["training"]["epochs"] == 1


def test_quick_runs_default_to_their_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIGITLIB_MODELS", str(tmp_path))
    status, out, err = run([*TINY, "--epochs", "1"], capsys)
    assert status == 0, err
    assert out.rstrip().endswith(f"saved {tmp_path / 'quick' / 'cnn.pt'}")
    assert not (tmp_path / "cnn.pt").exists()  # never where the full model lives


@pytest.mark.parametrize("where", ["folder", "under a file", "read-only", "disk full"])
def test_an_unwritable_destination_fails_before_training(tmp_path, capsys, monkeypatch, where):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    out = {"folder": tmp_path, "under a file": a_file / "x.pt"}.get(where, tmp_path / "models" / "x.pt")
    if where in ("read-only", "disk full"):
        # Simulated: root ignores folder permissions, and filling a real disk is no test.
        code = errno.EROFS if where == "read-only" else errno.ENOSPC

        def fail(self, *args, **kwargs):
            raise OSError(code, os.strerror(code), str(self))

        monkeypatch.setattr(Path, "write_bytes", fail)
    monkeypatch.setattr(dl.data, "load_splits", lambda *a, **k: pytest.fail("loaded data before checking --out"))
    status, stdout, err = run([*TINY, "--out", out], capsys)
    expected = {"folder": "is a folder", "under a file": "is a file, not a folder", "read-only": "permission denied",
                "disk full": "the disk is full"}[where]
    assert one_line_error(status, err, expected) and stdout == ""


def test_resume_refuses_other_settings(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.pt"
    argv = [*TINY, "--epochs", "3", "--out", path]

    lines = []

    def ctrl_c_in_second_epoch(line):  # fit saves each epoch, then logs it through the CLI's _print_now
        lines.append(line)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(dl.cli, "_print_now", ctrl_c_in_second_epoch)
        status, _, err = run(argv, capsys)
    assert status == 130 and "--resume" in err
    for change, message in (
        (["--max-lr", "0.01"], "max_lr=0.0015, this run asks for max_lr=0.01"),  # 0.003 scaled to batch 32
        (["--batch-size", "64"], "batch_size=32, this run asks for batch_size=64"),
        (["--seed", "1"], "seed=0, this run has seed=1"),
        (["--limit", "700"], "'train_limit': 600"),
        (["--epochs", "4"], "epochs=3, this run asks for epochs=4"),
    ):
        status, _, err = run([*argv, *change, "--resume"], capsys)
        assert one_line_error(status, err, message), err
    assert read_checkpoint(path)["resume"]["epoch"] == 1  # refused runs changed nothing
    status, out, err = run([*argv, "--resume"], capsys)
    assert status == 0, err
    assert f"resuming {path} after epoch 1/3" in out


def _train_process(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "digitlib", *TINY, "--epochs", "3", "--out", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


@pytest.mark.slow
def test_sigterm_keeps_the_last_epoch_and_resume_finishes_the_same_run(tmp_path):
    uninterrupted = tmp_path / "whole.pt"
    assert subprocess.run([sys.executable, "-m", "digitlib", *TINY, "--epochs", "3", "--out", str(uninterrupted)],
                          capture_output=True, timeout=300).returncode == 0

    out = tmp_path / "cut.pt"
    process = _train_process(out)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("epoch   1/3"):
            process.send_signal(signal.SIGTERM)  # while epoch 2 trains or epoch 1 is being saved
            break
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "continue with the same flags plus --resume" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no half-written files
    assert read_checkpoint(out)["resume"]["epoch"] >= 1

    resumed = subprocess.run([sys.executable, "-m", "digitlib", *TINY, "--epochs", "3", "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole, cut = read_checkpoint(uninterrupted), read_checkpoint(out)
    assert whole["history"]["val_loss"] == cut["history"]["val_loss"]
    assert all(torch.equal(whole["state_dict"][k], cut["state_dict"][k]) for k in whole["state_dict"])


def test_fit_carries_the_metadata_across_a_resume(tmp_path):
    splits = dl.data.load_splits(seed=0, train_limit=300, test_limit=10)
    train, val, _ = dl.loaders.make_loaders(splits, 60, augment="none", device="cpu")
    path = tmp_path / "m.pt"
    metadata = {"normalization": {"mean": splits.mean, "std": splits.std}, "seed": 0}
    lines = []

    def stop_in_epoch_two(line):  # epoch 1 has been saved when it is logged
        lines.append(line)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dl.training.fit(dl.models.build_model("cnn"), train, val, 3, device="cpu", checkpoint=path,
                        metadata=metadata, progress=False, log=stop_in_epoch_two)
    dl.training.fit(dl.models.build_model("cnn"), train, val, 3, device="cpu", checkpoint=path, resume=True,
                    progress=False, log=None)  # no metadata passed: it comes from the checkpoint
    assert read_checkpoint(path)["normalization"] == metadata["normalization"]


def test_predict_into_a_closed_pipe_is_quiet(trained_checkpoints, tmp_path):
    images, _ = dl.data.load_mnist(train=False)
    from PIL import Image

    files = []
    for index in range(40):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(images[index].numpy()).save(files[-1])
    command = (f"{sys.executable} -m digitlib predict --model {trained_checkpoints['cnn']} "
               + " ".join(map(str, files)) + " | head -1")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("model ") and len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_top_is_at_most_ten(capsys, tmp_path):
    status, _, err = run(["predict", tmp_path / "x.png", "--top", "11"], capsys)
    assert status == 2 and "'11' is not a whole number from 1 to 10" in err


def test_ctrl_c_outside_training_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl.data, "prepare", interrupted)
    status, _, err = run(["data"], capsys)
    assert status == 130 and err.strip() == "interrupted"


def test_a_skipped_checkpoint_is_named(trained_checkpoints, tmp_path, monkeypatch, capsys):
    (tmp_path / "cnn.pt").write_bytes(trained_checkpoints["cnn"].read_bytes()[:1000])  # truncated
    (tmp_path / "resnet.pt").write_bytes(trained_checkpoints["resnet"].read_bytes())
    monkeypatch.setenv("DIGITLIB_MODELS", str(tmp_path))
    status, out, err = run(["evaluate", "--limit", "100", "--repeats", "0", "--device", "cpu"], capsys)
    assert status == 0
    assert err.startswith(f"warning: skipped {tmp_path / 'cnn.pt'}: ") and len(err.splitlines()) == 1
    assert out.startswith(f"{tmp_path / 'resnet.pt'}: resnet")


def test_stand_in_models_never_take_the_full_models_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLIB_MODELS", str(tmp_path))
    messages = []
    _, info = dl.training.load_or_train("cnn", epochs=1, train_limit=600, device="cpu", log=messages.append)
    assert info["standin"] is True and "stand-in" in messages[0]
    assert (tmp_path / "standin" / "cnn.pt").exists() and not (tmp_path / "cnn.pt").exists()
    with pytest.raises(dl.CheckpointError, match="no usable checkpoint"):
        dl.evaluation.best_checkpoint()  # predict never picks a stand-in for the full model


def test_import_digitlib_stays_light():
    heavy = ["ipycanvas", "ipywidgets", "matplotlib", "seaborn", "pandas", "sklearn", "torchvision",
             "albumentations", "torch"]
    code = f"import sys, digitlib, digitlib.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_training_and_prediction_do_not_load_widgets_or_plots():
    heavy = ["ipycanvas", "ipywidgets", "matplotlib", "seaborn", "pandas"]
    code = ("import sys, digitlib as dl; dl.training, dl.loaders, dl.evaluation, dl.checkpoints, dl.preprocess; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
