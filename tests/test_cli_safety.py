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
from helpers import run, train_config, use_models_folder

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
        with pytest.raises(dl.TrainingError, match="must be a finite"):
            dl.training.fit(model, batch, batch, train_config(1, batch, **bad), device="cpu", progress=False,
                            log=None)


class NaNModel(torch.nn.Module):
    """Learns nothing and answers NaN: what a diverged network does."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.full((len(x), 10), float("nan")) * self.weight


def test_a_loss_that_stops_being_a_number_stops_training(tmp_path):
    batch = [(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))] * 2
    with pytest.raises(dl.TrainingError, match="the training loss became nan in epoch 1"):
        dl.training.fit(NaNModel(), batch, batch, train_config(3, batch), device="cpu",
                        checkpoint=tmp_path / "nan.pt", progress=False, log=None)
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
    use_models_folder(monkeypatch, tmp_path)
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
        dl.training.fit(dl.models.build_model("cnn"), train, val, train_config(3, train), device="cpu",
                        checkpoint=path, metadata=metadata, progress=False, log=stop_in_epoch_two)
    dl.training.fit(dl.models.build_model("cnn"), train, val, train_config(3, train), device="cpu", checkpoint=path,
                    resume=True, progress=False, log=None)  # no metadata passed: it comes from the checkpoint
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
    use_models_folder(monkeypatch, tmp_path)
    status, out, err = run(["evaluate", "--limit", "100", "--repeats", "0", "--device", "cpu"], capsys)
    assert status == 0
    assert err.startswith(f"warning: skipped {tmp_path / 'cnn.pt'}: ") and len(err.splitlines()) == 1
    assert out.startswith(f"{tmp_path / 'resnet.pt'}: resnet")


def test_stand_in_models_never_take_the_full_models_name(tmp_path, monkeypatch):
    use_models_folder(monkeypatch, tmp_path)
    messages = []
    _, info = dl.zoo.load_or_train("cnn", epochs=1, train_limit=600, device="cpu", log=messages.append)
    assert info["standin"] is True and "stand-in" in messages[0]
    assert (tmp_path / "standin" / "cnn.pt").exists() and not (tmp_path / "cnn.pt").exists()
    with pytest.raises(dl.CheckpointError, match="no usable checkpoint"):
        dl.zoo.best_checkpoint()  # predict never picks a stand-in for the full model


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


# --- Issue 23: destinations are regular files or new paths ---------------------------------------


def special_file(kind: str, path: Path) -> tuple[Path, object]:
    """A FIFO, a socket or a folder made at ``path``, or /dev/null itself: (its path, what to close after).

    /dev/null is only ever looked at: a passing test has not touched it, a failing one would have
    replaced it only as root (the bug this guards against), so each test also checks it is unchanged.
    """
    import socket

    if kind == "devnull":
        return Path(os.devnull), None
    if kind == "fifo":
        os.mkfifo(path)
        return path, None
    if kind == "folder":
        path.mkdir()
        return path, None
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return path, server


def signature(path: Path) -> tuple:
    """What a replacement would change: the inode, its type and its device number."""
    info = os.stat(path)
    return info.st_ino, info.st_mode, info.st_rdev


KIND_WORDS = {"fifo": "is a FIFO (named pipe), not a regular file", "socket": "is a socket, not a regular file",
              "devnull": "is a character device, not a regular file", "folder": "is a folder, not a regular file"}


@pytest.mark.parametrize("kind", KIND_WORDS)
@pytest.mark.parametrize("command", ["train", "export"])
def test_out_refuses_anything_but_a_regular_file(tmp_path, capsys, monkeypatch, tiny_checkpoint, command, kind):
    out, to_close = special_file(kind, tmp_path / "o.onnx")
    before = signature(out)
    monkeypatch.setattr(dl.data, "load_splits", lambda *a, **k: pytest.fail("loaded data before checking --out"))
    monkeypatch.setattr(dl.checkpoints, "load_checkpoint", lambda *a, **k: pytest.fail("exported before checking"))
    argv = [*TINY, "--out", out, "--force"] if command == "train" else [
        "export", "--model", tiny_checkpoint, "--out", out, "--force"]
    try:
        status, stdout, err = run(argv, capsys)
    finally:
        if to_close is not None:
            to_close.close()
    assert one_line_error(status, err, f"{out} {KIND_WORDS[kind]}") and stdout == ""
    assert signature(out) == before


@pytest.mark.parametrize("kind", ["fifo", "socket", "devnull", "folder"])
def test_models_refuses_a_set_path_that_is_not_a_regular_file(tmp_path, capsys, monkeypatch, kind):
    use_models_folder(monkeypatch, tmp_path)
    (tmp_path / "quick").mkdir()
    where = tmp_path / "quick" / "cnn.pt"
    if kind == "devnull":
        where.symlink_to(os.devnull)  # a link to a device is that device
    else:
        special_file(kind, where)
    monkeypatch.setattr(dl.data, "load_splits", lambda *a, **k: pytest.fail("loaded data before checking"))
    status, _, err = run(["models", "--models", "cnn", "--epochs", "1", "--limit", "300"], capsys)
    assert one_line_error(status, err, str(where), KIND_WORDS[kind].split(",")[0])
    assert kind == "folder" or not where.is_file()


def test_a_fifo_is_not_read_as_a_checkpoint_or_an_onnx_file(tmp_path, capsys):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "model.onnx")
    signal.alarm(60)  # opening a FIFO waits for a writer: a regression hangs here, and fails after a minute
    try:
        for path in (fifo, tmp_path / "model.onnx"):
            status, _, err = run(["evaluate", "--model", path, "--repeats", "0"], capsys)
            assert one_line_error(status, err, f"{path} is a FIFO (named pipe), not a")
    finally:
        signal.alarm(0)


# --- Issue 23: quick runs never take the real names; "already trained" means with these settings --


def test_reduced_runs_are_quick_runs():
    cnn_epochs = dl.config.FULL_RUNS["cnn"].epochs
    assert cnn_epochs < dl.config.FULL_RUNS["resnet"].epochs
    # the CNN's full run, not the ResNet's
    paths = dl.config.model_set_paths(["cnn", "resnet"], 2, "mnist", None, cnn_epochs)
    root = dl.config.dataset_models_dir("mnist")
    assert paths == {("cnn", 0): root / "cnn.pt", ("cnn", 1): root / "seeds" / "cnn-seed1.pt",
                     ("resnet", 0): root / "quick" / "resnet.pt",
                     ("resnet", 1): root / "quick" / "seeds" / "resnet-seed1.pt"}
    assert dl.config.model_set_paths(["cnn"], 1, "mnist", 2000)[("cnn", 0)] == root / "quick" / "cnn.pt"
    assert dl.config.model_set_paths(["cnn"], 1, "mnist", None, 5)[("cnn", 0)] == root / "quick" / "cnn.pt"


def test_a_model_set_checkpoint_trained_otherwise_is_neither_skipped_nor_replaced(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch, capsys):
    use_models_folder(monkeypatch, tmp_path)
    full = tmp_path / "cnn.pt"
    full.write_bytes(tiny_checkpoint.read_bytes())  # a quick run under the full model's name (the old bug)
    monkeypatch.setattr(dl.data, "load_splits", lambda *a, **k: pytest.fail("trained something"))
    status, out, err = run(["models", "--models", "cnn"], capsys)
    assert one_line_error(status, err, f"{full} was trained with train_limit=600, epochs=2, not the "
                          "train_limit=None, epochs=6 this run asks for: move it away")
    assert out == "" and full.read_bytes() == tiny_checkpoint.read_bytes()
    quick = tmp_path / "quick" / "cnn.pt"
    quick.parent.mkdir()
    full.rename(quick)
    status, out, err = run(["models", "--models", "cnn", "--limit", "600", "--epochs", "2"], capsys)
    assert status == 0 and out == f"{quick}: already trained with these settings, skipped\n", err
    status, _, err = run(["models", "--models", "cnn", "--limit", "600", "--epochs", "3"], capsys)
    assert one_line_error(status, err, f"{quick} was trained with epochs=2, not the epochs=3")


# --- Issue 23: interruptions are reported as they are --------------------------------------------


def ctrl_c_during(module, name: str, monkeypatch, when=lambda *args, **fields: True) -> None:
    """Make ``module.name`` receive a real SIGINT while it runs (when ``when(*args, **fields)``)."""
    real = getattr(module, name)

    def interrupted(*args, **fields):
        if when(*args, **fields):
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **fields)

    monkeypatch.setattr(module, name, interrupted)


def test_ctrl_c_during_the_final_save_says_training_finished(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cnn.pt"
    ctrl_c_during(dl.runstate, "save_checkpoint", monkeypatch, when=lambda *a, **fields: fields["resume"] is None)
    status, _, err = run([*TINY, "--out", out], capsys)
    assert one_line_error(status, err.strip(), f"interrupted: training had finished and {out} is saved, but its "
                          "test accuracy was not measured: nothing to resume; measure it with `python -m digitlib "
                          f"evaluate --model {out}`")
    assert status == 130 and "--resume" not in err
    assert read_checkpoint(out)["resume"] is None
    status, _, err = run([*TINY, "--out", out, "--resume"], capsys)
    assert one_line_error(status, err, "finished training (2 epochs): nothing to resume")


def test_ctrl_c_during_the_final_metrics_update_is_held_until_it_is_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cnn.pt"
    ctrl_c_during(dl.checkpoints, "update_checkpoint", monkeypatch)
    status, _, err = run([*TINY, "--out", out], capsys)
    assert status == 130 and one_line_error(status, err.strip(), f"interrupted: training had finished and {out} is "
                                            "saved with its test metrics: nothing to resume")
    assert 0 < read_checkpoint(out)["metrics"]["test_accuracy"] <= 1


# --- Issue 23: a resume state is checked before training continues -------------------------------


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory) -> Path:
    """A TINY run of 3 epochs stopped by Ctrl-C after its first epoch was saved: it holds a resume state."""
    path = tmp_path_factory.mktemp("interrupted") / "run.pt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dl.cli, "_print_now", lambda line: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main([*TINY, "--epochs", "3", "--out", str(path)]) == 130
    return path


def _damage(payload: dict, change: str) -> None:
    """Damage a resume state ``payload`` in the way ``change`` names, as a crafted or corrupted file would be."""
    state = payload["resume"]
    first_weight = next(iter(state["model"]))
    if change == "model-not-a-dict":
        state["model"] = [1, 2]
    elif change == "history-missing":
        del payload["history"]
    elif change == "training-a-list":
        payload["training"] = [3]
    elif change == "epoch-text":
        state["epoch"] = "1"
    elif change == "epoch-negative":
        state["epoch"] = -1
    elif change == "epoch-past-the-end":
        state["epoch"] = 3
    elif change == "history-empty":
        payload["history"] = {key: [] for key in payload["history"]}
    elif change == "rng-garbage":
        state["rng"]["torch"] = torch.full_like(state["rng"]["torch"], 7)
    elif change == "rng-short":
        state["rng"]["torch"] = state["rng"]["torch"][:100]
    elif change == "nan-weights":
        state["model"][first_weight] = torch.full_like(state["model"][first_weight], float("nan"))
    elif change == "nan-optimizer":
        moment = state["optimizer"]["state"][0]["exp_avg"]
        state["optimizer"]["state"][0]["exp_avg"] = torch.full_like(moment, float("inf"))
    elif change == "optimizer-shape":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    elif change == "scheduler-garbage":
        state["scheduler"] = {"last_epoch": "soon"}


DAMAGE = {
    "model-not-a-dict": "resume.model is not a dict of weights (list)",
    "history-missing": "history missing",
    "training-a-list": "records training = [3], not a dict",
    "epoch-text": "resume.epoch is '1', not the 1 epochs its history holds",
    "epoch-negative": "resume.epoch is -1, not the 1 epochs its history holds, from 1 to 3 - 1",
    "epoch-past-the-end": "resume.epoch is 3, not the 1 epochs",
    "history-empty": "resume.epoch is 1, not the 0 epochs its history holds",
    "rng-garbage": "resume.rng.torch is not a random-number state",
    "rng-short": "resume.rng.torch is not a random-number state",
    "nan-weights": "NaN or infinity in resume.model.",
    "nan-optimizer": "NaN or infinity in resume.optimizer.state.0.exp_avg",
    "optimizer-shape": "its optimizer's exp_avg has shape [3] for a weight of",
    "scheduler-garbage": "resume.scheduler does not have the entries this run's has",
}


@pytest.mark.parametrize("change", DAMAGE)
def test_a_damaged_resume_state_is_one_line_naming_what_is_wrong(interrupted_run, tmp_path, capsys, change):
    path = tmp_path / "run.pt"
    payload = torch.load(interrupted_run, weights_only=True)
    _damage(payload, change)
    torch.save(payload, path)
    status, out, err = run([*TINY, "--epochs", "3", "--out", path, "--resume"], capsys)
    assert one_line_error(status, err, str(path), DAMAGE[change]), err
    assert "learning rate" not in err and "epoch   2/3" not in out


def test_resuming_with_another_architecture_names_it(interrupted_run, capsys):
    status, _, err = run([*TINY, "--epochs", "3", "--out", interrupted_run, "--resume", "--model", "resnet"], capsys)
    assert one_line_error(status, err, "was started with a 'cnn' model, this run trains a 'resnet'", "--model cnn")
    assert "max_lr" not in err


# --- Issue 23: recorded metrics are believed only once checked -----------------------------------


def test_a_crafted_checkpoint_is_skipped_when_choosing_and_refused_when_named(tiny_checkpoint, tmp_path,
                                                                               monkeypatch, capsys):
    from PIL import Image

    use_models_folder(monkeypatch, tmp_path)
    good = tmp_path / "cnn.pt"
    good.write_bytes(tiny_checkpoint.read_bytes())
    payload = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**payload, "metrics": {"test_accuracy": 1.5}}, tmp_path / "boastful.pt")  # would win, at 150 %
    torch.save({**payload, "metrics": "excellent"}, tmp_path / "chatty.pt")  # crashed predict even unchosen
    image = tmp_path / "digit.png"
    Image.fromarray(dl.data.load_mnist(train=False)[0][0].numpy()).save(image)
    status, out, err = run(["predict", image], capsys)
    assert status == 0 and out.startswith(f"model {good} (cnn, test accuracy "), err
    assert err.splitlines() == [
        f"warning: skipped {tmp_path / 'boastful.pt'}: {tmp_path / 'boastful.pt'} records metrics.test_accuracy = "
        "1.5, not a number from 0 to 1: the file is damaged or was not written by digitlib; train it again",
        f"warning: skipped {tmp_path / 'chatty.pt'}: {tmp_path / 'chatty.pt'} records metrics = 'excellent', not a "
        "dict: the file is damaged or was not written by digitlib; train it again",
    ]
    for command in (["predict", image], ["evaluate", "--repeats", "0"]):
        status, out, err = run([*command, "--model", tmp_path / "boastful.pt"], capsys)
        assert one_line_error(status, err, "boastful.pt records metrics.test_accuracy = 1.5") and "150" not in out
