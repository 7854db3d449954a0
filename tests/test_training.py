"""The training loop: it learns, it is reproducible, it keeps the best epoch, and it resumes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import train_config, use_models_folder
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

import digitlib as dl
from digitlib.checkpoints import load_checkpoint, read_checkpoint
from digitlib.runtime import seed_everything
from digitlib.training import fit, learning_rates, make_optimizer, train_step

QUIET = {"device": "cpu", "progress": False, "log": None}


@pytest.fixture(scope="module")
def tiny_splits():
    """600 training images (480 train / 120 validation) and 200 test images."""
    return dl.data.load_splits(seed=0, train_limit=600, test_limit=200)


@pytest.fixture
def tiny_loaders(tiny_splits):
    seed_everything(0)
    return dl.loaders.make_loaders(tiny_splits, batch_size=64, augment="none")


def weights(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# Dropout is switched off: with it, eval-mode accuracy on the memorised batch depended on how far
# BatchNorm's running averages had caught up with dropout-trained weights, and so flipped with the
# torch version and thread count (61/64 with torch 2.14.1, 64/64 with 2.15). BatchNorm's running
# averages (momentum 0.1) still need the steps: after 20 the ResNet scored 61-63/64 on one thread.
# With 40, seeds 0-2 on one and two threads all reach 64/64 at a mean eval loss of 0.003-0.034.
@pytest.mark.parametrize(("arch", "epochs"), [("cnn", 20), pytest.param("resnet", 40, marks=pytest.mark.slow)])
def test_overfits_one_small_batch(small_splits, arch, epochs):
    seed_everything(0)
    x = dl.data.normalize(small_splits.train_images[:64], small_splits.mean, small_splits.std)
    batch = DataLoader(TensorDataset(x, small_splits.train_labels[:64]), batch_size=64)
    model = dl.models.build_model(arch, dropout=0.0)
    history = fit(model, batch, batch, train_config(epochs, batch), **QUIET)
    assert history["train_loss"][-1] < history["train_loss"][0] / 10
    loss, accuracy = dl.training.test_step(model, batch)
    assert loss < 0.2  # confidently right: guessing costs ln 10 = 2.3
    assert accuracy >= 63 / 64  # memorised, up to one image


@pytest.mark.slow
def test_short_run_beats_chance_by_far(small_splits):
    seed_everything(0)
    train_loader, val_loader, test_loader = dl.loaders.make_loaders(small_splits, 64, augment="none")
    model = dl.models.build_model("cnn")
    history = fit(model, train_loader, val_loader, train_config(1, train_loader), **QUIET)
    assert history["val_accuracy"][0] > 0.85  # chance is 10 %
    assert history["val_loss"][0] < math.log(10) / 4  # guessing uniformly costs ln 10
    assert dl.training.test_step(model, test_loader)[1] > 0.85
    assert set(history) == set(dl.training.HISTORY_KEYS) and history["epoch"] == [1]
    assert history["seconds"][0] > 0


@pytest.mark.slow
@pytest.mark.parametrize(("augment", "num_workers"), [("device", None), ("albumentations", 0), ("albumentations", 1)])
def test_same_seed_gives_the_same_run(augment, num_workers):
    splits = dl.data.load_splits(seed=0, train_limit=300, test_limit=10)  # 4 batches of 60

    def run(seed):
        seed_everything(seed)
        train_loader, val_loader, _ = dl.loaders.make_loaders(
            splits, batch_size=60, augment=augment, num_workers=num_workers, seed=seed
        )
        model = dl.models.build_model("cnn")
        history = fit(model, train_loader, val_loader, train_config(2, train_loader), **QUIET)
        del history["seconds"]
        return history, weights(model)

    first, again, other = run(0), run(0), run(1)
    assert first[0] == again[0]
    assert same_weights(first[1], again[1])
    assert first[0]["train_loss"] != other[0]["train_loss"]


def test_keeps_the_epoch_with_the_best_validation_accuracy(tiny_loaders, tmp_path, monkeypatch):
    train_loader, val_loader, _ = tiny_loaders
    scripted = iter([0.5, 0.9, 0.7])

    def scripted_test_step(*args, **kwargs):
        accuracy = next(scripted)
        return 1 - accuracy, accuracy

    monkeypatch.setattr(dl.training, "test_step", scripted_test_step)
    model = dl.models.build_model("cnn")
    lines, snapshots = [], []

    def log(line):
        lines.append(line)
        snapshots.append(weights(model))

    path = tmp_path / "best.pt"
    history = fit(model, train_loader, val_loader, train_config(3, train_loader), device="cpu", checkpoint=path,
                  progress=False, log=log)
    assert history["val_accuracy"] == [0.5, 0.9, 0.7]
    assert [line.endswith("*") for line in lines] == [True, True, False]
    assert same_weights(weights(model), snapshots[1])
    assert not same_weights(weights(model), snapshots[2])
    loaded, info = load_checkpoint(path)
    assert same_weights(weights(loaded), snapshots[1])
    assert info["best_epoch"] == 2 and info["epochs_completed"] == 3 and info["resume"] is None
    assert info["metrics"] == {"val_loss": pytest.approx(0.1), "val_accuracy": 0.9}


def test_history_follows_the_planned_learning_rates(tiny_loaders):
    train_loader, val_loader, _ = tiny_loaders
    history = fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(2, train_loader), **QUIET)
    steps = len(train_loader)
    rates = learning_rates(train_config(2, train_loader), steps)
    assert history["lr"] == pytest.approx([rates[0], rates[steps]])


def test_learning_rate_schedule_is_one_cycle():
    rates = learning_rates(train_config(10), steps_per_epoch=100)
    assert len(rates) == 1000
    assert max(rates) == pytest.approx(1e-2)
    assert rates.index(max(rates)) == pytest.approx(300, abs=2)  # warm up over 30 % of the steps
    assert rates[0] == pytest.approx(1e-3)  # starts at AdamW's lr, not OneCycleLR's max_lr / 25
    assert rates[-1] < 1e-6
    assert learning_rates(train_config(2, lr=5e-4), steps_per_epoch=10)[0] == pytest.approx(5e-4)


def test_interrupted_fit_keeps_its_best_and_resumes(tiny_loaders, tmp_path):
    train_loader, val_loader, _ = tiny_loaders
    path = tmp_path / "run.pt"
    model = dl.models.build_model("cnn")
    after_epoch_one = {}

    def ctrl_c_after_epoch_one(line):
        after_epoch_one.update(weights(model))
        raise KeyboardInterrupt  # as if Ctrl-C arrived in epoch 2: epoch 1 was saved before it was logged

    with pytest.raises(KeyboardInterrupt):
        fit(model, train_loader, val_loader, train_config(3, train_loader), device="cpu", checkpoint=path,
            progress=False, log=ctrl_c_after_epoch_one)
    saved = read_checkpoint(path)
    assert saved["epochs_completed"] == 1 and saved["resume"]["epoch"] == 1
    assert same_weights(weights(load_checkpoint(path)[0]), after_epoch_one)

    with pytest.raises(
        dl.CheckpointError, match="was started with epochs=3, this run asks for epochs=5: resume it with epochs=3"
    ):
        fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(5, train_loader), checkpoint=path,
            resume=True, **QUIET)

    lines = []
    resumed = fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(3, train_loader), device="cpu",
                  checkpoint=path, resume=True, progress=False, log=lines.append)
    assert lines[0] == f"resuming {path} after epoch 1/3" and len(lines) == 3
    assert resumed["epoch"] == [1, 2, 3]
    assert resumed["val_accuracy"][0] == saved["history"]["val_accuracy"][0]
    steps = len(train_loader)
    # the schedule went on
    assert resumed["lr"] == pytest.approx(learning_rates(train_config(3, train_loader), steps)[::steps])
    finished = read_checkpoint(path)
    assert finished["resume"] is None and finished["epochs_completed"] == 3

    with pytest.raises(dl.CheckpointError, match="finished training \\(3 epochs\\): nothing to resume"):
        fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(3, train_loader), checkpoint=path,
            resume=True, **QUIET)


def test_resume_needs_a_checkpoint(tiny_loaders, tmp_path):
    train_loader, val_loader, _ = tiny_loaders
    with pytest.raises(dl.CheckpointError, match="pass checkpoint=PATH"):
        fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(1, train_loader), resume=True, **QUIET)
    with pytest.raises(dl.CheckpointError, match="no checkpoint at"):
        fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(1, train_loader), resume=True,
            checkpoint=tmp_path / "none.pt", **QUIET)


def test_load_or_train_trains_a_stand_in_once_then_loads(tmp_path, monkeypatch):
    use_models_folder(monkeypatch, tmp_path)
    messages = []
    model, info = dl.zoo.load_or_train("cnn", epochs=1, train_limit=600, device="cpu", log=messages.append)
    standin = tmp_path / "standin" / "cnn.pt"
    assert len(messages) == 1 and "using a small stand-in" in messages[0] and "trained just now" in messages[0]
    assert standin.exists() and info["standin"] is True
    assert not model.training and info["arch"] == "cnn" and info["epochs_completed"] == 1
    again, _ = dl.zoo.load_or_train("cnn", device="cpu", log=messages.append)
    assert "trained earlier" in messages[1]  # loaded, not trained again
    assert same_weights(weights(again), weights(model))

    (tmp_path / "cnn.pt").write_bytes(standin.read_bytes())  # now a "full" model exists: it wins, silently
    _, full_info = dl.zoo.load_or_train("cnn", device="cpu", log=messages.append)
    assert len(messages) == 2 and full_info["arch"] == "cnn"
    with pytest.raises(dl.CheckpointError, match="holds a 'cnn' model"):
        dl.zoo.load_or_train("resnet", tmp_path / "cnn.pt", device="cpu", log=None)


@pytest.mark.parametrize("options", [{}, {"ema_decay": 0.9, "label_smoothing": 0.1}])
def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path, options):
    """Dropout, shuffling, on-device augmentation and the weights' average all continue where they stopped."""
    splits = dl.data.load_splits(seed=0, train_limit=300, test_limit=10)

    def run(path, stop_after=None, resume=False):
        seed_everything(0)
        train_loader, val_loader, _ = dl.loaders.make_loaders(splits, batch_size=60, augment="device", seed=0)
        model = dl.models.build_model("cnn")
        epochs_logged = []

        def log(line):
            epochs_logged.append(line)
            if stop_after is not None and len(epochs_logged) == stop_after:
                raise KeyboardInterrupt

        if not resume:
            seed_everything(123)  # a resumed run must not depend on the global state it starts with
        try:
            fit(model, train_loader, val_loader, train_config(3, train_loader, **options), device="cpu",
                checkpoint=path, resume=resume, progress=False, log=log)
        except KeyboardInterrupt:
            pass
        return read_checkpoint(path)

    whole = run(tmp_path / "whole.pt")
    cut = tmp_path / "cut.pt"
    assert run(cut, stop_after=1)["resume"]["epoch"] == 1  # Ctrl-C once epoch 1 was saved and logged
    seed_everything(999)
    resumed = run(cut, resume=True)
    assert resumed["history"]["train_loss"] == whole["history"]["train_loss"]
    assert resumed["history"]["val_loss"] == whole["history"]["val_loss"]
    assert same_weights(resumed["state_dict"], whole["state_dict"])


def _tiny_model_and_batches(count=2):
    """A linear classifier of 2x2 images and ``count`` batches of 8, all seeded."""
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.LogSoftmax(dim=1))
    return model, [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))) for _ in range(count)]


def test_ema_follows_the_weights_after_every_step():
    model, batches = _tiny_model_and_batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    train_step(model, batches[:1], optimizer, clip_norm=None, ema=ema)
    first = weights(model)
    assert same_weights(weights(ema.module), first)  # the first update copies the weights
    train_step(model, batches[1:], optimizer, clip_norm=None, ema=ema)
    for name, value in weights(ema.module).items():
        assert torch.allclose(value, 0.9 * first[name] + 0.1 * weights(model)[name])


def test_label_smoothing_mixes_the_loss_with_the_uniform_targets():
    model, batches = _tiny_model_and_batches(1)
    (x, y), = batches
    with torch.no_grad():
        log_probs = model(x)
    plain, uniform = F.nll_loss(log_probs, y).item(), -log_probs.mean().item()
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, _ = train_step(model, batches, frozen, clip_norm=None, label_smoothing=0.2)
    assert loss == pytest.approx(0.8 * plain + 0.2 * uniform, rel=1e-5)
    assert train_step(model, batches, frozen, clip_norm=None)[0] == pytest.approx(plain, rel=1e-5)


def test_fit_validates_and_keeps_the_average(tiny_loaders, tmp_path):
    train_loader, val_loader, _ = tiny_loaders
    model = dl.models.build_model("cnn")
    history = fit(model, train_loader, val_loader, train_config(2, train_loader, ema_decay=0.5),
                  checkpoint=tmp_path / "ema.pt", **QUIET)
    assert len(history["raw_val_accuracy"]) == 2  # the raw weights, measured beside the average
    saved = read_checkpoint(tmp_path / "ema.pt")
    assert saved["training"]["ema_decay"] == 0.5 and saved["history"]["raw_val_accuracy"] == history["raw_val_accuracy"]
    assert dl.training.test_step(model, val_loader)[1] == pytest.approx(max(history["val_accuracy"]), abs=0.01)
    assert "raw_val_accuracy" not in fit(dl.models.build_model("cnn"), train_loader, val_loader,
                                         train_config(1, train_loader), **QUIET)


@pytest.mark.parametrize(("setting", "message"), [
    ({"label_smoothing": 1.0}, "label_smoothing must be from 0 to below 1"),
    ({"ema_decay": 1.0}, "ema_decay must be between 0 and 1"),
])
def test_bad_smoothing_or_decay_is_refused_before_training(tiny_loaders, setting, message):
    train_loader, val_loader, _ = tiny_loaders
    with pytest.raises(dl.training.TrainingError, match=message):
        fit(dl.models.build_model("cnn"), train_loader, val_loader, train_config(1, train_loader, **setting), **QUIET)


def test_adamw_is_fused_where_torch_has_the_kernel_and_computes_the_same_update(monkeypatch):
    model, batches = _tiny_model_and_batches()
    fused, _ = make_optimizer(model, 2, train_config(1))
    assert fused.param_groups[0]["fused"] is True  # the CPU has a fused kernel
    other, _ = _tiny_model_and_batches()
    monkeypatch.setattr(dl.training, "FUSED_ADAMW_DEVICES", ())  # as on a device without one
    unfused, _ = make_optimizer(other, 2, train_config(1))
    assert not unfused.param_groups[0]["fused"]
    for net, optimizer in ((model, fused), (other, unfused)):
        train_step(net, batches, optimizer, clip_norm=None)
    for name, value in weights(model).items():
        assert torch.allclose(value, weights(other)[name], atol=1e-6)
