"""Timing: where an epoch's time goes, time to accuracy, and inference latency and throughput."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import digitlib as dl
from digitlib import bench, config, evaluation, training
from digitlib.checkpoints import load_checkpoint, normalization


@pytest.fixture(scope="module")
def cnn(trained_checkpoints):
    model, info = load_checkpoint(trained_checkpoints["cnn"])
    mean, std = normalization(info, trained_checkpoints["cnn"])
    return model, mean, std


@pytest.mark.parametrize("augment", ["device", "albumentations", "none"])
def test_epoch_breakdown_times_each_part(small_splits, augment):
    timing = bench.epoch_breakdown("cnn", small_splits, batch_size=32, augment=augment, batches=4, device="cpu",
                                   threads=1)
    assert (timing.model, timing.pipeline, timing.batches, timing.threads) == ("cnn", augment, 4, 1)
    assert timing.data_s > 0 and timing.forward_backward_s > 0 and timing.optimizer_s > 0
    assert timing.total_s == pytest.approx(timing.data_s + timing.forward_backward_s + timing.optimizer_s)
    assert timing.epoch_s == pytest.approx(len(small_splits.train_labels) / timing.images_per_s)


def test_epoch_breakdown_times_the_step_fit_takes(small_splits, monkeypatch):
    """bench and fit share ``training.train_batch``: swapped for a recording copy, both call it, with the
    settings ``train`` uses for the architecture (its full run's, and fit's clipping)."""
    calls = []

    def recorded(model, x, y, optimizer, settings, **state):
        calls.append((settings, state))
        return real(model, x, y, optimizer, settings, **state)

    real = training.train_batch
    monkeypatch.setattr(training, "train_batch", recorded)
    smoothed = dataclasses.replace(config.FULL_RUNS["cnn"], label_smoothing=0.1, ema_decay=0.9)
    monkeypatch.setitem(config.FULL_RUNS, "cnn", smoothed)
    timing = bench.epoch_breakdown("cnn", small_splits, batch_size=32, augment="none", batches=2, device="cpu",
                                   amp=False, threads=1)
    assert len(calls) == 3 + timing.batches  # the warm-up steps, then the timed ones
    settings, state = calls[0]
    assert settings == training.StepSettings(None, training.CLIP_NORM, 0.1)
    assert state["scheduler"] is not None and state["ema"] is not None and state["scaler"] is None
    calls.clear()
    batches = list(itertools.islice(dl.loaders.make_loaders(small_splits, 32, augment="none")[0], 2))
    model = dl.models.build_model("cnn")
    training.train_step(model, batches, training.make_optimizer(model, 2, config.run_config("cnn"))[0])
    assert len(calls) == 2 and calls[0][0] == training.StepSettings()


def test_time_to_accuracy_reports_each_epoch(small_splits):
    result = bench.time_to_accuracy(small_splits, target=0.5, epochs=2, batch_size=64, device="cpu")
    assert len(result.val_accuracy_per_epoch) == len(result.seconds_per_epoch) == 2
    first = next(i for i, a in enumerate(result.val_accuracy_per_epoch) if a >= 0.5)  # 2,400 images: > 90 %
    assert result.seconds_to_target == pytest.approx(sum(result.seconds_per_epoch[: first + 1]))
    unreachable = bench.time_to_accuracy(small_splits, target=1.0, epochs=1, batch_size=64, device="cpu")
    assert unreachable.seconds_to_target is None


def test_single_image_latency(cnn, small_splits):
    model, mean, std = cnn
    threads = torch.get_num_threads()
    latency = bench.single_image_latency(
        model, evaluation.as_drawing(small_splits.test_images[0]), mean, std, repeats=30, warmup=5
    )
    print(f"one 280x280 drawing: {latency['median_ms']:.2f} ms median "
          f"(preprocess {latency['preprocess_ms']:.2f} + forward {latency['forward_ms']:.2f}), "
          f"p90 {latency['p90_ms']:.2f}")
    assert latency["repeats"] == 30 and latency["threads"] == 1
    assert 0 < latency["median_ms"] <= latency["p90_ms"]
    assert latency["preprocess_ms"] > 0 and latency["forward_ms"] > 0
    # No speed limit (machines and their load differ); a session rebuilt on every call, or a hang, takes seconds.
    assert latency["median_ms"] < 1000
    assert torch.get_num_threads() == threads  # timing with one thread does not leave it set


def test_batch_throughput(cnn, small_splits):
    model, mean, std = cnn
    images = small_splits.test_images[:200].float().div(255).sub(mean).div(std).unsqueeze(1)
    result = bench.batch_throughput(model, images, batch_size=100, repeats=1)
    assert result["images"] == 200 and result["batch_size"] == 100
    assert result["images_per_s"] == pytest.approx(200 / result["seconds"]) and result["images_per_s"] > 0
