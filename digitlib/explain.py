"""What a network looks at (notebook 08): its first-layer filters, its feature maps, and attributions.

Attributions answer "which pixels made the model say 7?" for one image, with Captum:

- :func:`saliency`: the gradient of the class's logit with respect to each pixel (how much a
  small change there would move it);
- :func:`integrated_gradients`: the gradient averaged along the straight path from a baseline
  (a blank picture: no ink) to the image, times the difference. Its attributions add up to the
  logit's change from baseline to image (*completeness*); the returned ``delta`` is how far the
  numerical integral misses that;
- :func:`grad_cam`: a convolution layer's feature maps weighted by their mean gradient, ReLU'd, and
  upsampled to 28x28: coarse, but it shows *where*, not which pixel.

All three explain the raw logits (before log-softmax), so one class's evidence is not mixed with
the others'. Each function takes the image on any device, runs it where the model is, and returns
CPU tensors. Captum is imported inside the functions: ``import digitlib`` stays light.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .confidence import raw_logits
from .data import normalize
from .models import DigitCNN, DigitResNet
from .runtime import to_model


class Logits(nn.Module):
    """``model`` without its final log-softmax: returns the raw logits, for Captum."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return raw_logits(self.model, x, batch_size=len(x))


def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """The first convolution's kernels as (out_channels, height, width) for a one-channel input."""
    conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    return conv.weight.detach().cpu()[:, 0]


def feature_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose outputs notebook 08 shows, in order, by a readable name.

    DigitCNN: after each convolution's ReLU (28x28, then 14x14). DigitResNet: the stem (after its
    max-pool, 14x14) and each stage (14x14, 7x7, 4x4).
    """
    if isinstance(model, DigitCNN):
        return {"conv1 + ReLU": model.features[1], "conv2 + ReLU": model.features[4]}
    if isinstance(model, DigitResNet):
        stages = {f"stage {index + 1}": stage for index, stage in enumerate(model.stages)}
        return {"stem": model.stem, **stages}
    raise ValueError(f"no feature layers known for {type(model).__name__}: pass a DigitCNN or DigitResNet")


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{layer name: its output for one normalised image x (1, 1, 28, 28), as (channels, height, width)}."""
    model.eval()
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda module, inputs, output, name=name: outputs.__setitem__(name, output[0]))
        for name, layer in feature_layers(model).items()
    ]
    try:
        model(to_model(model, x))
    finally:
        for handle in handles:
            handle.remove()
    return {name: output.detach().cpu().clone() for name, output in outputs.items()}


def grad_cam_layer(model: nn.Module) -> nn.Module:
    """The layer :func:`grad_cam` uses by default: the last 7x7 feature maps.

    DigitCNN: its second max-pool, what the classifier reads. Its head flattens the maps and weighs
    every position separately; Grad-CAM's weights average each map's gradient over positions, which
    discards that. (For a head that pools globally, as the ResNet's, the weights are the linear
    layer's own and Grad-CAM is CAM: Selvaraju et al., 2017, section 3.1.) DigitResNet: its second
    stage; the last stage is 4x4, too coarse to point at a stroke.
    """
    if isinstance(model, DigitCNN):
        return model.features[5]
    if isinstance(model, DigitResNet):
        return model.stages[1]
    raise ValueError(f"no Grad-CAM layer known for {type(model).__name__}: pass layer=")


def blank_baseline(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """A picture with no ink, normalised like ``x``: Integrated Gradients' reference point."""
    return normalize(torch.zeros_like(x), mean, std)


@dataclass(frozen=True)
class IntegratedGradients:
    """Integrated Gradients for one image and class."""

    attributions: torch.Tensor  # (28, 28): each pixel's share of the logit's change
    delta: float  # completeness error: attributions' sum minus (logit(image) - logit(baseline))
    logit_change: float  # logit(image) - logit(baseline), what the attributions should add up to


def saliency(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """|d logit[target] / d pixel| for one normalised image x (1, 1, 28, 28), as (28, 28)."""
    from captum.attr import Saliency

    model.eval()
    x = to_model(model, x).clone().requires_grad_(True)
    return Saliency(Logits(model)).attribute(x, target=target, abs=True)[0, 0].detach().cpu()


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, target: int, baseline: torch.Tensor, steps: int = 64
) -> IntegratedGradients:
    """Integrated Gradients of logit[target] for one image x (1, 1, 28, 28) from ``baseline``
    (see :func:`blank_baseline`), with ``steps`` Gauss-Legendre points along the path."""
    from captum.attr import IntegratedGradients as CaptumIG

    model.eval()
    x, baseline = to_model(model, x), to_model(model, baseline)
    logits = Logits(model)
    attributions, delta = CaptumIG(logits).attribute(
        x, baselines=baseline, target=target, n_steps=steps, return_convergence_delta=True
    )
    with torch.no_grad():
        change = float(logits(x)[0, target] - logits(baseline)[0, target])
    return IntegratedGradients(attributions[0, 0].detach().cpu(), float(delta[0]), change)


def grad_cam(model: nn.Module, x: torch.Tensor, target: int, layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM of logit[target] for one image x (1, 1, 28, 28) at ``layer`` (default
    :func:`grad_cam_layer`), ReLU'd and upsampled bilinearly to the image's size: (28, 28), >= 0."""
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    layer = layer if layer is not None else grad_cam_layer(model)
    name = next((name for name, module in model.named_modules() if module is layer), None)
    if name is None:
        raise ValueError(f"layer {type(layer).__name__} is not part of the {type(model).__name__} given")
    # An in-place ReLU right after the layer would overwrite the activations Grad-CAM weighs (and
    # zero their gradients): explain a copy whose ReLU modules keep their input.
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    x = to_model(model, x)
    cam = LayerGradCam(Logits(model), model.get_submodule(name)).attribute(x, target=target, relu_attributions=True)
    upsampled = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return F.relu(upsampled)[0, 0].cpu()  # bilinear weights are convex, so this only clears -0.0 and rounding
