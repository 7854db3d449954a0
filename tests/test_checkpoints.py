"""Checkpoints: a faithful round trip, safe loading, clear errors, and atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

import digitlib as dl
from digitlib.checkpoints import FORMAT, load_checkpoint, read_checkpoint, save_checkpoint, update_checkpoint

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


def test_code_in_a_checkpoint_is_never_run(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "arch": "cnn", "extra": Payload()}, path)
    with pytest.raises(dl.CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


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
    with pytest.raises(dl.CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)  # a folder is not a checkpoint either


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_file(cnn_checkpoint, keep):
    path, _ = cnn_checkpoint
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(dl.CheckpointError, match=r"cnn\.pt is not a readable checkpoint .*truncated"):
        load_checkpoint(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(dl.CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


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
    update_checkpoint(path, arch="vgg")
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
