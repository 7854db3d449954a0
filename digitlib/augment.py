"""Training-time augmentation, twice: the albumentations reference and its batched twin in torch.

``train_augmentation`` is the pipeline as albumentations writes it, one image at a time on the CPU:
the clearest statement of what we do to a training digit, and the place to start for custom
transforms (``--augment albumentations``). ``augment`` does the same to a whole batch at once, on
the device the batch lives on: what training uses by default, because it is many times faster.

In ``augment`` random parameters are drawn per image: an affine transform, then an
elastic or a grid distortion, then brightness/contrast, with the ranges and probabilities of the
albumentations pipeline. The affine and the distortion are folded into one sampling grid, so each
image is resampled once (``F.grid_sample``). Every random number comes from the ``torch.Generator``
passed in: the same generator state gives the same batch, bit for bit (on a CPU, whatever the
number of threads).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .errors import DataError

if TYPE_CHECKING:  # albumentations and OpenCV load only when the reference pipeline is built
    import albumentations as A


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities; the defaults are those of ``train_augmentation``."""

    affine_p: float = 0.9
    max_rotation: float = 15.0  # degrees, either way
    max_shift: float = 0.1  # fraction of the image size, either way
    scale: tuple[float, float] = (0.9, 1.1)  # drawn separately for x and y, as A.Affine does
    distortion_p: float = 0.3  # elastic or grid distortion, half the time each
    elastic_alpha: float = 30.0  # pixels of displacement per unit of smoothed noise
    elastic_sigma: float = 5.0  # pixels: the smoothing of the noise
    grid_steps: int = 5  # cells per axis
    grid_limit: float = 0.3  # each cell is stretched by a factor in 1 ± grid_limit
    brightness_contrast_p: float = 0.3
    max_brightness: float = 0.2  # added, in units of the brightest value
    max_contrast: float = 0.2  # the pixels are multiplied by 1 ± this


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(shape, device=generator.device).uniform_(low, high, generator=generator)


def affine_theta(n: int, size: tuple[int, int], config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices, as ``F.affine_grid`` takes them: each maps an output position to where it is read.

    A.Affine rotates and scales about the image centre, then shifts by a whole number of pixels
    (it truncates the shift toward zero). Sampling needs the inverse: undo the shift, rotate back,
    divide by the scales.
    """
    height, width = size
    applied = torch.rand(n, generator=generator, device=generator.device) < config.affine_p
    angle = torch.deg2rad(_uniform((n,), -config.max_rotation, config.max_rotation, generator))
    scale = _uniform((n, 2), *config.scale, generator)  # x, y
    shift = _uniform((n, 2), -config.max_shift, config.max_shift, generator) * _xy(width, height, generator.device)
    cos, sin = angle.cos(), angle.sin()
    inverse = torch.stack([cos, sin, -sin, cos], 1).view(n, 2, 2) / scale[:, :, None]  # pixel units
    offset = -(inverse @ shift.trunc().unsqueeze(-1))  # (n, 2, 1)
    # affine_grid's units run from -1 to 1 across the image: pixels divided by half the image size.
    half = _xy(width / 2, height / 2, generator.device)
    theta = torch.cat([inverse * half / half[:, None], offset / half[:, None]], -1)
    return torch.where(applied[:, None, None], theta, torch.eye(2, 3, device=generator.device))


# Constants are made once per size and device (functools.cache): shared, so never modify them in place.
@functools.cache
def _xy(x: float, y: float, device: torch.device) -> torch.Tensor:
    return torch.tensor([x, y], device=device)


@functools.cache
def blur_matrix(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(size, size): a 1-D gaussian blur with replicated borders (cv2.BORDER_REPLICATE) as a matrix.

    ``B @ field @ B.T`` blurs a (size, size) field along both axes: one batched matmul.
    """
    radius = math.ceil(4 * sigma)  # where cv2.GaussianBlur cuts a float image's kernel
    offsets = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-(offsets.float() ** 2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    sources = (torch.arange(size, device=device)[:, None] + offsets).clamp(0, size - 1)
    return torch.zeros(size, size, device=device).scatter_add_(1, sources, kernel.expand(size, -1))


def elastic_shift(n: int, size: tuple[int, int], config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, H, W) displacements in pixels, x then y, as A.ElasticTransform draws them.

    Gaussian noise scaled so its largest value is 1, blurred with ``elastic_sigma``, times ``elastic_alpha``.
    """
    height, width = size
    noise = torch.randn((n, 2, height, width), generator=generator, device=generator.device)
    noise = noise / noise.abs().amax((1, 2, 3), keepdim=True)
    blur_y = blur_matrix(height, config.elastic_sigma, generator.device)
    blur_x = blur_matrix(width, config.elastic_sigma, generator.device)
    return config.elastic_alpha * (blur_y @ noise @ blur_x.T)


def _grid_shift_1d(n: int, size: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    # Stretch each cell by 1 ± limit, rescale so the cells still span the axis (the edges stay put), and
    # interpolate the displacement of the cell edges linearly in between: (n, size) pixels.
    steps = config.grid_steps
    stretch = 1 + _uniform((n, steps), -config.grid_limit, config.grid_limit, generator)
    stretch = stretch * (steps / stretch.sum(1, keepdim=True))
    edges = F.pad(stretch.cumsum(1), (1, 0)) - torch.arange(steps + 1, device=generator.device)
    edges = edges * ((size - 1) / steps)
    return F.interpolate(edges.unsqueeze(1), size=size, mode="linear", align_corners=True).squeeze(1)


def grid_shift(n: int, size: tuple[int, int], config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, H, W) displacements in pixels, as A.GridDistortion draws them: x moves with x, y with y."""
    height, width = size
    shift_x = _grid_shift_1d(n, width, config, generator)[:, None, :].expand(n, height, width)
    shift_y = _grid_shift_1d(n, height, config, generator)[:, :, None].expand(n, height, width)
    return torch.stack([shift_x, shift_y], 1)


def distortion_shift(
    n: int, size: tuple[int, int], config: AugmentConfig, generator: torch.Generator, pick_out: bool | None = None
) -> torch.Tensor:
    """(n, 2, H, W) pixels: elastic with probability p/2, grid with p/2, else zero (A.OneOf, p).

    Most images get no distortion, and an elastic field costs 1,568 random numbers: ``pick_out``
    makes fields only for the images that get one. That is the default on a CPU only: on a GPU,
    picking those images out would make the CPU wait for the GPU, so fields are made for every
    image and the chosen ones kept (fixed shapes, no waiting).
    """
    if pick_out is None:
        pick_out = generator.device.type == "cpu"
    choice = torch.rand(n, generator=generator, device=generator.device)
    use_elastic = choice < config.distortion_p / 2
    use_grid = (choice >= config.distortion_p / 2) & (choice < config.distortion_p)
    if pick_out:
        shift = torch.zeros((n, 2, *size), device=generator.device)
        elastic, grid = use_elastic.nonzero().flatten(), use_grid.nonzero().flatten()
        shift[elastic] = elastic_shift(len(elastic), size, config, generator)
        shift[grid] = grid_shift(len(grid), size, config, generator)
        return shift
    elastic = elastic_shift(n, size, config, generator) * use_elastic[:, None, None, None]
    return torch.where(use_grid[:, None, None, None], grid_shift(n, size, config, generator), elastic)


def brightness_contrast(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``clip(x * (1 ± contrast) ± brightness)`` on a random share of the images, in [0, 1]."""
    n = len(images)
    applied = (torch.rand(n, generator=generator, device=generator.device) < config.brightness_contrast_p)
    contrast = _uniform((n,), 1 - config.max_contrast, 1 + config.max_contrast, generator)
    brightness = _uniform((n,), -config.max_brightness, config.max_brightness, generator)
    contrast = torch.where(applied, contrast, 1.0).view(n, 1, 1, 1)
    brightness = torch.where(applied, brightness, 0.0).view(n, 1, 1, 1)
    return torch.addcmul(brightness, images, contrast).clamp_(0, 1)


@functools.cache
def pixel_centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(2, H, W): x and y of each pixel's centre where grid_sample (align_corners=False) looks for it.

    Coordinates run from -1 (the outer edge of the first pixel) to 1 (that of the last).
    """
    x = (torch.arange(width, device=device) * 2 + 1) / width - 1
    y = (torch.arange(height, device=device) * 2 + 1) / height - 1
    return torch.stack(torch.meshgrid(x, y, indexing="xy"))


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) → float (N, 1, H, W) in [0, 1]; float (N, 1, H, W) passes through."""
    if images.dtype == torch.uint8 and images.dim() == 3:
        return images.unsqueeze(1).float().div_(255)
    if images.is_floating_point() and images.dim() == 4 and images.shape[1] == 1:
        return images.float()
    raise DataError(
        f"cannot augment a {images.dtype} tensor of shape {tuple(images.shape)}: "
        "pass uint8 images (N, H, W) or float images (N, 1, H, W) in [0, 1]."
    )


def augment(images: torch.Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> torch.Tensor:
    """Augment a batch: float (N, 1, H, W) in [0, 1], on the images' device.

    ``generator`` must live on that device too and supplies every random number: the same
    generator state gives the same images.
    """
    config = config or AugmentConfig()
    if generator.device.type != images.device.type:
        raise DataError(
            f"the generator is on {generator.device} but the images on {images.device}: "
            "make the generator with torch.Generator(device=images.device)."
        )
    x = as_float_images(images)
    n, _, height, width = x.shape
    theta = affine_theta(n, (height, width), config, generator)
    shift = distortion_shift(n, (height, width), config, generator)
    # The distortion moves the points at which the affine's output is read; the affine then maps
    # those points into the input. One grid for both, and a single resampling.
    pixels_to_units = _xy(2 / width, 2 / height, x.device).view(2, 1, 1)
    points = torch.addcmul(pixel_centres(height, width, x.device), shift, pixels_to_units)  # centres + shift
    grid = torch.baddbmm(theta[:, :, 2:], theta[:, :, :2], points.view(n, 2, -1))  # A @ points + b
    grid = grid.view(n, 2, height, width).permute(0, 2, 3, 1)  # grid_sample wants (n, H, W, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return brightness_contrast(x, config, generator)


# --- The reference: albumentations, one image at a time -------------------------------------------


def train_augmentation(seed: int | None = None) -> A.Compose:
    """The training pipeline: small rotations, shift/scale, elastic or grid distortion, brightness.

    No 90-degree rotations or flips: a 6 turned over is a 9. Works on uint8 (28, 28) arrays.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # else albumentations asks PyPI for news on import
    import albumentations as A
    import cv2

    black = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}
    return A.Compose(
        [
            A.Affine(rotate=(-15, 15), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), p=0.9, **black),
            A.OneOf(
                [
                    A.ElasticTransform(alpha=30, sigma=5, **black),
                    A.GridDistortion(num_steps=5, distort_limit=0.3, **black),
                ],
                p=0.3,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.3),
        ],
        seed=seed,
    )
