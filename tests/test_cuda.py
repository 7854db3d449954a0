"""On a CUDA GPU (``make test-gpu``): training, loading and the library's analysis functions keep
models and inputs on one device, and hand results back on the CPU. Skipped where there is no GPU."""

from __future__ import annotations

import pytest
import torch
from helpers import train_config

import digitlib as dl
from digitlib import confidence, evaluation, explain, inference, runtime

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make test-gpu)")]


@pytest.fixture(scope="module")
def trained_on_cuda(tmp_path_factory):
    splits = dl.data.load_splits(seed=0, train_limit=2000, test_limit=500)
    runtime.seed_everything(0)
    train_loader, val_loader, test_loader = dl.loaders.make_loaders(splits, 64, augment="device", device="cuda")
    path = tmp_path_factory.mktemp("cuda") / "cnn.pt"
    model = dl.models.build_model("cnn").to("cuda")
    history = dl.training.fit(model, train_loader, val_loader, train_config(2, train_loader), device="cuda",
                              checkpoint=path, metadata={"normalization": {"mean": splits.mean, "std": splits.std}},
                              progress=False, log=None)
    return model, history, path, splits, test_loader


def test_fit_trains_on_cuda_with_autocast(trained_on_cuda):
    model, history, path, _, test_loader = trained_on_cuda
    assert runtime.model_device(model).type == "cuda"
    assert history["val_accuracy"][-1] > 0.9
    saved = dl.checkpoints.read_checkpoint(path)
    assert saved["training"]["precision"] in ("bfloat16", "float16") and saved["training"]["device"].startswith("cuda")
    probabilities, labels = evaluation.predict_proba(model, test_loader)
    assert probabilities.device.type == labels.device.type == "cpu"  # ready for NumPy


def test_a_cuda_checkpoint_loads_anywhere(trained_on_cuda):
    _, _, path, _, _ = trained_on_cuda
    on_cpu, _ = dl.checkpoints.load_checkpoint(path, "cpu")
    on_cuda, _ = dl.checkpoints.load_checkpoint(path, "cuda")
    assert runtime.model_device(on_cpu).type == "cpu" and runtime.model_device(on_cuda).type == "cuda"


def test_analysis_functions_take_cpu_inputs_for_a_cuda_model(trained_on_cuda):
    model, _, _, splits, _ = trained_on_cuda
    x = dl.data.normalize(splits.test_images[:4], splits.mean, splits.std)  # on the CPU
    logits = confidence.raw_logits(model, x)
    assert logits.device.type == "cpu" and logits.shape == (4, 10)
    maps = explain.feature_maps(model, x[:1])
    assert all(output.device.type == "cpu" for output in maps.values())
    target = int(logits[0].argmax())
    for attribution in (explain.saliency(model, x[:1], target), explain.grad_cam(model, x[:1], target),
                        explain.integrated_gradients(model, x[:1], target, explain.blank_baseline(x[:1], 0, 1),
                                                     steps=8).attributions):
        assert attribution.device.type == "cpu" and attribution.shape == (28, 28)
    reading = inference.read_image([(model, splits.mean, splits.std)], splits.test_images[0].numpy())
    assert abs(float(reading.probabilities.sum()) - 1) < 1e-4


def test_timing_copies_a_cuda_model_to_the_cpu_and_leaves_it_on_the_gpu(trained_on_cuda):
    model, _, _, splits, _ = trained_on_cuda
    x = dl.data.normalize(splits.test_images[:100], splits.mean, splits.std)
    dl.bench.batch_throughput(model, x, batch_size=50, repeats=1)
    assert runtime.model_device(model).type == "cuda"
