"""Checkpoints: a faithful round trip, safe loading, clear errors, and atomic writes."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_unreadable
from PIL import Image

import digitlib as dl
import digitlib.checkpoints as checkpoints
from digitlib.checkpoints import (
    FORMAT,
    load_checkpoint,
    normalization,
    read_checkpoint,
    save_checkpoint,
    update_checkpoint,
    versions,
)

NORMALIZATION = {"mean": 0.1307, "std": 0.3081}


def trained_looking(arch: str) -> torch.nn.Module:
    """A fresh model whose BatchNorm running statistics have moved away from their defaults."""
    torch.manual_seed(0)
    model = dl.models.build_model(arch)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 28, 28) * 2 + 1)
    return model.eval()


@pytest.fixture
def cnn_checkpoint(tmp_path):
    model = trained_looking("cnn")
    path = save_checkpoint(tmp_path / "cnn.pt", model, normalization=NORMALIZATION, seed=0)
    return path, model


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    model = trained_looking(arch)
    path = save_checkpoint(tmp_path / f"{arch}.pt", model, normalization=NORMALIZATION)
    loaded, info = load_checkpoint(path, arch=arch)
    assert not loaded.training
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert info["arch"] == arch and info["normalization"] == NORMALIZATION


def test_metadata_fields(tmp_path):
    history = {"epoch": [1], "val_accuracy": [0.5]}
    path = save_checkpoint(tmp_path / "m.pt", dl.models.DigitCNN(dropout=0.3), normalization=NORMALIZATION,
                           history=history, metrics={"val_accuracy": 0.5}, seed=7)
    _, info = load_checkpoint(path)
    assert info["format"] == FORMAT
    assert info["arch_kwargs"] == {"dropout": 0.3}
    assert set(info["versions"]) >= {"digitlib", "torch", "torchvision", "python"}
    assert info["versions"]["torch"] == str(torch.__version__)
    assert info["date"][:4].isdigit() and "T" in info["date"]
    assert info["history"] == history and info["metrics"] == {"val_accuracy": 0.5} and info["seed"] == 7
    assert "state_dict" not in info


def test_state_dict_argument_is_what_gets_saved(tmp_path):
    model, other = dl.models.DigitCNN(), dl.models.DigitCNN()
    path = save_checkpoint(tmp_path / "m.pt", model, state_dict=other.state_dict())
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.classifier[1].weight, other.classifier[1].weight)
    assert not torch.equal(loaded.classifier[1].weight, model.classifier[1].weight)


def test_file_loads_with_plain_weights_only_torch_load(cnn_checkpoint):
    path, _ = cnn_checkpoint
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and isinstance(payload["state_dict"]["features.0.weight"], torch.Tensor)


class Payload:
    """Unpickling this would run print(): exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return print, ("code ran while loading",)


class Shell:
    """Unpickling this would run a shell command through os.system, as a hostile file would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_code_in_a_checkpoint_is_never_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "arch": "cnn", "extra": Payload()}, path)
    with pytest.raises(dl.CheckpointError, match=r"refused for safety \(.*GLOBAL \S*print"):
        read_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_hostile_checkpoint_is_refused_for_safety_and_says_why(tmp_path, zip_format):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"format": FORMAT, "arch": "cnn", "state_dict": {}, "x": Shell(f"touch {marker}")}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(dl.CheckpointError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert not marker.exists()
    assert message.startswith(f"{path} is refused for safety") and "\n" not in message
    # The reason torch gives, with the global it refused (posix.system, or nt.system on Windows)...
    assert f"GLOBAL {os.system.__module__}.system" in message
    # ...without its advice, which is wrong here: loading with weights_only=False would run the command.
    assert "weights_only" not in message and "file an issue" not in message


def seeded_bytes(size: int) -> bytes:
    """Noise that does not start like a torch file (the seed is fixed, so it never does by chance)."""
    data = random.Random(0).randbytes(size)
    assert not data.startswith((b"PK", b"\x80"))
    return data


def png_bytes(tmp_path) -> bytes:
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    return (tmp_path / "digit.png").read_bytes()


@pytest.mark.parametrize(
    "make",
    [lambda tmp: seeded_bytes(4096), lambda tmp: b"garbage, not a checkpoint\n", png_bytes,
     lambda tmp: pickle.dumps(Shell(f"touch {tmp / 'ran'}"))],
    ids=["random-bytes", "text", "png", "plain-pickle"],
)
def test_files_that_are_not_pytorch_checkpoints(tmp_path, make):
    path = tmp_path / "model.pt"
    path.write_bytes(make(tmp_path))
    with pytest.raises(dl.CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a PyTorch checkpoint (") and "train again" in message
    assert "\n" not in message and "file an issue" not in message
    assert not (tmp_path / "ran").exists()  # a plain pickle is never unpickled


def test_an_empty_file_is_a_truncated_checkpoint(tmp_path):
    path = tmp_path / "cnn.pt"
    path.touch()
    with pytest.raises(dl.CheckpointError, match=r"cnn\.pt is empty \(0 bytes\), a truncated checkpoint"):
        load_checkpoint(path)


def test_gpu_checkpoint_loads_on_the_cpu(tmp_path, monkeypatch):
    model = trained_looking("cnn")
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as patch:
        # Record every tensor as living on cuda:0, as a checkpoint written on a GPU does.
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(path, model)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what loading without map_location would do
    loaded, _ = load_checkpoint(path, device="cpu")
    assert loaded.classifier[1].weight.device.type == "cpu"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_missing_file(tmp_path):
    with pytest.raises(dl.CheckpointError, match=r"no checkpoint at .*missing\.pt.*digitlib train"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(dl.CheckpointError, match=f"^{tmp_path} is a directory, not a file"):
        load_checkpoint(tmp_path)


def test_a_symbolic_link_loop(tmp_path):
    loop = tmp_path / "cnn.pt"
    loop.symlink_to(loop)
    with pytest.raises(dl.CheckpointError, match=r"cnn\.pt is a symbolic link loop"):
        load_checkpoint(loop)


def test_a_dangling_symbolic_link(tmp_path):
    link = tmp_path / "cnn.pt"
    link.symlink_to(tmp_path / "gone.pt")
    with pytest.raises(dl.CheckpointError, match=r"cnn\.pt is a symbolic link to .*gone\.pt, which does not exist"):
        load_checkpoint(link)


def test_an_unreadable_checkpoint_is_a_permission_problem(cnn_checkpoint, monkeypatch):
    path, _ = cnn_checkpoint
    make_unreadable(path, checkpoints, monkeypatch)
    with pytest.raises(dl.CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: permission denied: make it readable")
    assert "truncated" not in str(caught.value)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(cnn_checkpoint, keep):
    path, _ = cnn_checkpoint
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(dl.CheckpointError, match=r"cnn\.pt is a damaged or truncated PyTorch checkpoint \(") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("content", [torch.zeros(3), {"state_dict": {}}, [1, 2]], ids=["tensor", "dict", "list"])
def test_plain_torch_files_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "plain.pt"
    torch.save(content, path)
    with pytest.raises(dl.CheckpointError, match="not a digitlib checkpoint"):
        load_checkpoint(path)


def test_wrong_architecture_asked(cnn_checkpoint):
    path, _ = cnn_checkpoint
    with pytest.raises(dl.CheckpointError, match="holds a 'cnn' model, not the 'resnet'"):
        load_checkpoint(path, arch="resnet")


def test_unknown_architecture(cnn_checkpoint):
    path, _ = cnn_checkpoint
    with pytest.raises(dl.CheckpointError, match="unknown architecture 'vgg'"):
        update_checkpoint(path, arch="vgg")  # never written by digitlib...
    rewrite(path, arch="vgg")  # ...only by hand
    with pytest.raises(dl.CheckpointError, match="unknown architecture 'vgg'"):
        load_checkpoint(path)


def test_weights_that_do_not_fit(cnn_checkpoint):
    path, _ = cnn_checkpoint
    update_checkpoint(path, arch="resnet", arch_kwargs={})  # CNN weights under a ResNet label
    with pytest.raises(dl.CheckpointError, match="weights do not fit a 'resnet' model") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_missing_weight(cnn_checkpoint):
    path, model = cnn_checkpoint
    state = model.state_dict()
    del state["classifier.4.bias"]
    save_checkpoint(path, model, state_dict=state)
    with pytest.raises(dl.CheckpointError, match="weights do not fit a 'cnn' model.*classifier.4.bias"):
        load_checkpoint(path)


def test_update_keeps_everything_else(cnn_checkpoint):
    path, model = cnn_checkpoint
    update_checkpoint(path, metrics={"test_accuracy": 0.99})
    loaded, info = load_checkpoint(path)
    assert info["metrics"] == {"test_accuracy": 0.99} and info["normalization"] == NORMALIZATION
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("failure", [OSError("No space left on device"), KeyboardInterrupt()])
def test_failed_save_leaves_the_old_checkpoint_whole(cnn_checkpoint, monkeypatch, failure):
    path, model = cnn_checkpoint
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(payload, file, *args, **kwargs):
        real_save({"half": torch.zeros(1000)}, file)  # some bytes reach the temporary file
        raise failure

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(type(failure)):
        save_checkpoint(path, dl.models.DigitCNN(), seed=1)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    loaded, info = load_checkpoint(path)
    assert info["seed"] == 0


def test_saved_file_is_readable_by_others(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", dl.models.DigitCNN())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def rewrite(path: Path, **fields) -> None:
    """Replace fields in a checkpoint file directly, as someone crafting one would (no digitlib checks)."""
    payload = torch.load(path, weights_only=True)
    payload.update(fields)
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arch_kwargs": {"bogus": 1}}, r"arch_kwargs \{'bogus': 1\} do not build a 'cnn' model \(TypeError"),
        ({"arch_kwargs": [0.5]}, r"arch_kwargs is \[0\.5\], not a dict of settings"),
        ({"arch_kwargs": {"dropout": "half"}}, r"arch_kwargs \{'dropout': 'half'\} do not build a 'cnn' model"),
        ({"arch": ["cnn"]}, r"unknown architecture \['cnn'\]"),
        ({"state_dict": [1, 2]}, r"state_dict is not a dict of weights \(list\)"),
        ({"state_dict": {"features.0.weight": 1.0}}, r"state_dict entry 'features\.0\.weight' is not a tensor"),
    ],
    ids=["unknown-kwarg", "kwargs-not-a-dict", "kwarg-of-wrong-type", "arch-not-a-name", "state-not-a-dict",
         "weight-not-a-tensor"],
)
def test_crafted_checkpoints_are_one_clear_error(cnn_checkpoint, fields, message):
    path, _ = cnn_checkpoint
    rewrite(path, **fields)
    with pytest.raises(dl.CheckpointError, match=message) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_settings_that_do_not_fit_the_weights_allocate_nothing(tmp_path, monkeypatch):
    # Settings are checked against the saved weights' shapes on the meta device (shapes, no memory),
    # so a crafted widths=[10**5, ...] could not make loading allocate terabytes. Spy on every model
    # built: none may be real. (Moderate widths here, so a regression is a failure, not an OOM.)
    path = save_checkpoint(tmp_path / "resnet.pt", dl.models.DigitResNet())
    rewrite(path, arch_kwargs={"widths": [64, 128, 256], "dropout": 0.5})
    built_on = []

    def spy(*args, **kwargs):
        model = dl.models.build_model(*args, **kwargs)
        built_on.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(dl.checkpoint_checks, "build_model", spy)
    with pytest.raises(dl.CheckpointError, match=r"weights do not fit a 'resnet' model \(wrong shape: stem\.0\.weight"):
        load_checkpoint(path)
    assert built_on == ["meta"]


def test_non_finite_weights_are_refused(cnn_checkpoint):
    path, model = cnn_checkpoint
    state = model.state_dict()
    state["classifier.4.bias"] = torch.full_like(state["classifier.4.bias"], float("nan"))
    rewrite(path, state_dict=state)
    with pytest.raises(dl.CheckpointError, match=r"non-finite weights .*'classifier\.4\.bias'.*Train it again"):
        load_checkpoint(path)


def test_normalization_is_read_as_two_floats(cnn_checkpoint):
    path, _ = cnn_checkpoint
    _, info = load_checkpoint(path)
    mean, std = normalization(info, path)
    assert (mean, std) == (NORMALIZATION["mean"], NORMALIZATION["std"])
    assert normalization(info, path).std == NORMALIZATION["std"]
    assert normalization({"normalization": {"mean": torch.tensor(0.5), "std": 1}}, path) == (0.5, 1.0)


@pytest.mark.parametrize("recorded", [None, {}, {"mean": 0.1}, [0.1, 0.3]], ids=["absent", "empty", "no-std", "list"])
def test_a_checkpoint_without_normalization(tmp_path, recorded):
    path = save_checkpoint(tmp_path / "cnn.pt", dl.models.DigitCNN())
    message = r"cnn\.pt does not record its training normalisation \(mean, std\)"
    if recorded is None:  # a notebook's model saved without metadata: it loads, and says what it lacks when asked
        _, info = load_checkpoint(path)
        with pytest.raises(dl.CheckpointError, match=message):
            normalization(info, path)
    else:  # recorded, but not as digitlib records it: refused where it is read
        rewrite(path, normalization=recorded)
        with pytest.raises(dl.CheckpointError, match=message):
            load_checkpoint(path)


@pytest.mark.parametrize(
    ("mean", "std"),
    [(0.1307, 0.0), (0.1307, -0.3), (float("nan"), 0.3), (0.1, float("inf")), ("0.1", 0.3), (0.1, None)],
    ids=["std-zero", "std-negative", "mean-nan", "std-inf", "mean-text", "std-none"],
)
def test_unusable_normalization_is_refused(tmp_path, mean, std):
    path = tmp_path / "cnn.pt"
    message = r"cnn\.pt records an unusable normalisation .*std above 0"
    with pytest.raises(dl.CheckpointError, match=message):
        save_checkpoint(path, dl.models.DigitCNN(), normalization={"mean": mean, "std": std})
    assert not path.exists()  # never written...
    save_checkpoint(path, dl.models.DigitCNN(), normalization=NORMALIZATION)
    rewrite(path, normalization={"mean": mean, "std": std})  # ...only crafted
    with pytest.raises(dl.CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(dl.CheckpointError, match=message):
        normalization({"normalization": {"mean": mean, "std": std}}, path)


class NotebookNet(torch.nn.Module):
    """A learner's own network, unknown to digitlib."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, hidden), torch.nn.ReLU(),
                                          torch.nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)


def test_a_model_digitlib_does_not_know_is_saved_and_loads_into_its_class(tmp_path):
    torch.manual_seed(0)
    model = NotebookNet()
    path = save_checkpoint(tmp_path / "mine.pt", model, normalization=NORMALIZATION)
    payload = read_checkpoint(path)
    assert payload["arch"] is None and payload["arch_class"] == "NotebookNet"
    with pytest.raises(dl.CheckpointError, match=r"holds the weights of a NotebookNet .*model=NotebookNet\(\.\.\.\)"):
        load_checkpoint(path)

    fresh = NotebookNet().train()
    loaded, info = load_checkpoint(path, model=fresh)
    assert loaded is fresh and not loaded.training and info["normalization"] == NORMALIZATION
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # What the error message suggests works too.
    by_hand = NotebookNet()
    by_hand.load_state_dict(read_checkpoint(path)["state_dict"])
    with torch.no_grad():
        assert torch.equal(by_hand(x), model(x))


def test_a_given_model_must_fit_the_weights(tmp_path):
    path = save_checkpoint(tmp_path / "mine.pt", NotebookNet(hidden=32))
    with pytest.raises(dl.CheckpointError, match=r"weights do not fit a NotebookNet model \(wrong shape: layers\.1"):
        load_checkpoint(path, model=NotebookNet(hidden=64))
    with pytest.raises(dl.CheckpointError, match=r"weights do not fit a DigitCNN model \(missing: .* and \d+ more"):
        load_checkpoint(path, model=dl.models.DigitCNN())


def test_digitlibs_own_model_loads_into_a_given_instance(cnn_checkpoint):
    path, model = cnn_checkpoint
    loaded, _ = load_checkpoint(path, model=dl.models.DigitCNN())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_torchvision_and_cv2_load_only_when_needed():
    """Importing these modules stays light; the checkpoint still records torchvision's version."""
    code = ("import sys, digitlib.checkpoints, digitlib.preprocess; "
            "print(sorted(m for m in ('torchvision', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    import torchvision

    assert versions()["torchvision"] == str(torchvision.__version__)


# --- Issue 23: every recorded field is checked where it is read ----------------------------------

NAN = float("nan")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metrics": {"test_accuracy": 1.5}}, "records metrics.test_accuracy = 1.5, not a number from 0 to 1"),
        ({"metrics": {"val_accuracy": -0.1}}, "records metrics.val_accuracy = -0.1, not a number from 0 to 1"),
        ({"metrics": {"val_loss": NAN}}, "records metrics.val_loss = nan, not a finite number of 0 or more"),
        ({"metrics": {"test_accuracy": "99%"}}, "records metrics.test_accuracy = '99%', not a number from 0 to 1"),
        ({"metrics": {"test_images": 2.5}}, "records metrics.test_images = 2.5, not a whole number of 1 or more"),
        ({"metrics": "excellent"}, "records metrics = 'excellent', not a dict"),
        ({"metrics": [0.99]}, r"records metrics = \[0\.99\], not a dict"),
        ({"history": {"val_accuracy": "high"}}, "records history.val_accuracy = 'high', not a list of numbers"),
        ({"history": {"epoch": [1, 2], "val_loss": [0.1]}}, r"records a history of \[1, 2\] epochs, not of one length"),
        ({"training": ["epochs", 3]}, r"records training = \['epochs', 3\], not a dict"),
        ({"training": {"epochs": 0}}, "records training.epochs = 0, not a whole number of 1 or more"),
        ({"training": {"max_lr": NAN}}, "records training.max_lr = nan, not a finite positive number"),
        ({"data": {"train_limit": -5}}, "records data.train_limit = -5, not None or a whole number"),
        ({"data": {"dataset": "cifar"}}, "unknown dataset"),
        ({"seed": "zero"}, "records seed = 'zero', not a whole number"),
        ({"epochs_completed": "3"}, "records epochs_completed = '3', not a whole number of 0 or more"),
        ({"epochs_completed": 2, "best_epoch": 5}, r"records best_epoch = 5, not at most epochs_completed \(2\)"),
        ({"standin": "yes"}, "records standin = 'yes', not True or False"),
        ({"resume": [1]}, r"records resume = \[1\], not None or a dict"),
    ],
    ids=["accuracy-150", "accuracy-negative", "loss-nan", "accuracy-text", "images-fraction", "metrics-text",
         "metrics-list", "history-text", "history-ragged", "training-list", "epochs-zero", "max-lr-nan",
         "limit-negative", "dataset-unknown", "seed-text", "epochs-text", "best-after-last", "standin-text",
         "resume-list"],
)
def test_recorded_fields_are_checked_where_they_are_read(cnn_checkpoint, fields, message):
    path, _ = cnn_checkpoint
    rewrite(path, **fields)
    for read in (read_checkpoint, load_checkpoint):
        with pytest.raises(dl.CheckpointError, match=message) as caught:
            read(path)
        assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_fields_that_would_be_refused_are_never_written(cnn_checkpoint):
    path, model = cnn_checkpoint
    before = path.read_bytes()
    with pytest.raises(dl.CheckpointError, match="metrics.test_accuracy = 1.5"):
        update_checkpoint(path, metrics={"test_accuracy": 1.5})
    with pytest.raises(dl.CheckpointError, match="metrics = 'good'"):
        save_checkpoint(path, model, metrics="good")
    assert path.read_bytes() == before


def test_the_callers_own_fields_are_left_alone(tmp_path):
    path = save_checkpoint(tmp_path / "cnn.pt", dl.models.DigitCNN(), temperature=1.37, notes=["any", {"thing": 1}])
    assert read_checkpoint(path)["notes"] == ["any", {"thing": 1}]
