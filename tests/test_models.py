"""The two seed networks: outputs, parameter counts and the shape after every layer."""

from __future__ import annotations

import pytest
import torch
import torchinfo
from torch import nn

import digitlib as dl

PARAMETERS = {"cnn": 3_274_634, "resnet": 696_042}


def layer_shapes(model: nn.Module, batch: int = 2) -> list[tuple[str, list[int]]]:
    """(layer class, output shape) of every innermost layer, in the order torchinfo runs them."""
    summary = torchinfo.summary(model, input_size=(batch, 1, 28, 28), verbose=0, depth=10)
    return [(layer.class_name, layer.output_size) for layer in summary.summary_list if layer.is_leaf_layer]


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_outputs_are_log_probabilities(arch):
    torch.manual_seed(0)
    model = dl.models.build_model(arch).eval()
    with torch.no_grad():
        log_probs = model(torch.randn(5, 1, 28, 28))
    assert log_probs.shape == (5, 10)
    assert log_probs.dtype == torch.float32
    assert (log_probs <= 0).all()
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(5))


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_parameter_counts(arch):
    assert dl.models.count_parameters(dl.models.build_model(arch)) == PARAMETERS[arch]


def test_cnn_parameters_by_hand():
    # conv 5x5 1→32, conv 5x5 32→64, linear 3136→1024, linear 1024→10, each with a bias.
    by_hand = (25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 1024 + 1024) + (1024 * 10 + 10)
    assert by_hand == PARAMETERS["cnn"]


def test_cnn_shape_after_every_layer():
    assert layer_shapes(dl.models.DigitCNN()) == [
        ("Conv2d", [2, 32, 28, 28]),  # 5x5 with padding 2 keeps 28x28
        ("ReLU", [2, 32, 28, 28]),
        ("MaxPool2d", [2, 32, 14, 14]),
        ("Conv2d", [2, 64, 14, 14]),
        ("ReLU", [2, 64, 14, 14]),
        ("MaxPool2d", [2, 64, 7, 7]),
        ("Flatten", [2, 3136]),
        ("Linear", [2, 1024]),
        ("ReLU", [2, 1024]),
        ("Dropout", [2, 1024]),
        ("Linear", [2, 10]),
    ]
    assert dl.models.DigitCNN().classifier[3].p == 0.5


def test_resnet_shape_through_stem_and_stages():
    model = dl.models.DigitResNet()
    x = torch.zeros(2, 1, 28, 28)
    shapes = []
    with torch.no_grad():
        x = model.stem(x)
        shapes.append(list(x.shape))
        for stage in model.stages:
            x = stage(x)
            shapes.append(list(x.shape))
    assert shapes == [[2, 32, 14, 14], [2, 32, 14, 14], [2, 64, 7, 7], [2, 128, 4, 4]]
    assert layer_shapes(model)[-4:] == [
        ("AdaptiveAvgPool2d", [2, 128, 1, 1]), ("Flatten", [2, 128]), ("Dropout", [2, 128]), ("Linear", [2, 10])
    ]
    assert model.head[-1].in_features == 128 and model.head[-2].p == 0.5


def test_projection_shortcuts_only_where_the_shape_changes():
    model = dl.models.DigitResNet()
    blocks = {name: block for name, block in model.named_modules() if isinstance(block, dl.models.BasicBlock)}
    assert len(blocks) == 6
    projected = sorted(name for name, block in blocks.items() if not isinstance(block.shortcut, nn.Identity))
    assert projected == ["stages.1.0", "stages.2.0"]
    for name in projected:
        conv, norm = blocks[name].shortcut
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(norm, nn.BatchNorm2d)


def test_basic_block_adds_the_input_back():
    block = dl.models.BasicBlock(8, 8).eval()
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
    x = torch.randn(3, 8, 6, 6)
    # Zero convolutions leave only the skip connection: relu(x).
    torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_config_rebuilds_the_same_architecture(arch):
    model = dl.models.build_model(arch)
    rebuilt = dl.models.build_model(arch, **model.config)
    assert dl.models.architecture_of(rebuilt) == arch
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="'vgg'.*cnn, resnet"):
        dl.models.build_model("vgg")
    with pytest.raises(ValueError, match="Linear"):
        dl.models.architecture_of(nn.Linear(1, 1))
