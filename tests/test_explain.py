"""Filters, feature maps and Captum attributions of the small trained checkpoints."""

from __future__ import annotations

import pytest
import torch

import digitlib as dl
from digitlib import explain
from digitlib.checkpoints import load_checkpoint, normalization

FEATURE_SHAPES = {
    "cnn": {"conv1 + ReLU": (32, 28, 28), "conv2 + ReLU": (64, 14, 14)},
    "resnet": {"stem": (32, 14, 14), "stage 1": (32, 14, 14), "stage 2": (64, 7, 7), "stage 3": (128, 4, 4)},
}


@pytest.fixture(scope="module", params=["cnn", "resnet"])
def loaded(request, trained_checkpoints):
    """(arch, model, mean, std) for each small trained checkpoint."""
    model, info = load_checkpoint(trained_checkpoints[request.param])
    return (request.param, model, *normalization(info, request.param))


@pytest.fixture(scope="module")
def digits():
    images, labels = dl.data.load_mnist(train=False)
    return images[:3], labels[:3]


def test_filters_and_feature_maps_have_the_layers_shapes(loaded, digits):
    arch, model, mean, std = loaded
    filters = explain.first_layer_filters(model)
    assert tuple(filters.shape) == {"cnn": (32, 5, 5), "resnet": (32, 3, 3)}[arch]
    maps = explain.feature_maps(model, dl.data.normalize(digits[0][:1], mean, std))
    assert {name: tuple(output.shape) for name, output in maps.items()} == FEATURE_SHAPES[arch]
    assert all((output >= 0).all() for output in maps.values())  # every one of them follows a ReLU


def test_logits_are_what_log_softmax_turns_into_the_output(loaded, digits):
    _, model, mean, std = loaded
    x = dl.data.normalize(digits[0], mean, std)
    with torch.no_grad():
        torch.testing.assert_close(explain.Logits(model)(x).log_softmax(1), model(x), atol=1e-5, rtol=0)


def test_saliency_is_a_non_negative_map_of_the_image(loaded, digits):
    _, model, mean, std = loaded
    x = dl.data.normalize(digits[0][:1], mean, std)
    result = explain.saliency(model, x, int(digits[1][0]))
    assert result.shape == (28, 28) and (result >= 0).all() and result.max() > 0


def test_integrated_gradients_add_up_to_the_logit_change(loaded, digits):
    # Completeness: the attributions sum to logit(image) - logit(blank). With 64 steps the numerical
    # integral missed by 0.1 % (CNN) and 1.1 % (ResNet) of a change of 15-20 on the full models; 5 % of
    # the change (plus 0.05 for a change near 0) leaves room for other weights and machines.
    _, model, mean, std = loaded
    images, labels = digits
    for index in range(len(labels)):
        x = dl.data.normalize(images[index : index + 1], mean, std)
        result = explain.integrated_gradients(model, x, int(labels[index]), explain.blank_baseline(x, mean, std))
        total = float(result.attributions.sum())
        assert result.attributions.shape == (28, 28)
        assert abs(total - result.logit_change) <= 0.05 * abs(result.logit_change) + 0.05, (total, result)
        assert result.delta == pytest.approx(total - result.logit_change, abs=1e-3)
        assert result.logit_change > 0  # a digit's own class gains evidence from its ink


def test_grad_cam_is_non_negative_upsampled_and_leaves_the_model_alone(loaded, digits):
    arch, model, mean, std = loaded
    images, labels = digits
    x = dl.data.normalize(images, mean, std)
    with torch.no_grad():
        before = model(x)
    maps = [explain.grad_cam(model, x[i : i + 1], int(labels[i])) for i in range(len(labels))]
    assert all(cam.shape == (28, 28) and (cam >= 0).all() for cam in maps)
    assert any(cam.max() > 0 for cam in maps)  # some evidence somewhere, not an all-zero map
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # explained on a copy: same weights, same in-place ReLUs
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))


def test_grad_cam_refuses_a_layer_from_another_model(loaded, digits):
    _, model, mean, std = loaded
    x = dl.data.normalize(digits[0][:1], mean, std)
    with pytest.raises(ValueError, match="not part of"):
        explain.grad_cam(model, x, 0, layer=torch.nn.Conv2d(1, 1, 3))
