"""digitlib.augment and digitlib.loaders: batches made on the device, seeded, and like albumentations'."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

import digitlib as dl
from digitlib.augment import AugmentConfig, augment, distortion_shift
from digitlib.loaders import DeviceLoader, device_loaders, make_loaders

# Only the named transform, always applied: to check one family's range at a time.
NOTHING = AugmentConfig(affine_p=0.0, distortion_p=0.0, brightness_contrast_p=0.0)
AFFINE_ONLY = {"affine_p": 1.0, "distortion_p": 0.0, "brightness_contrast_p": 0.0}
ROTATION_ONLY = AugmentConfig(max_shift=0.0, scale=(1.0, 1.0), **AFFINE_ONLY)
SHIFT_ONLY = AugmentConfig(max_rotation=0.0, scale=(1.0, 1.0), **AFFINE_ONLY)
BRIGHTNESS_ONLY = AugmentConfig(affine_p=0.0, distortion_p=0.0, brightness_contrast_p=1.0)


def one_epoch(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def to_uint8(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Undo the normalisation of an un-augmented batch: the original uint8 images."""
    return (x.squeeze(1) * std + mean).mul(255).round().to(torch.uint8)


# --- loader: seeds, epochs, coverage -------------------------------------------------------------


def test_same_seed_gives_the_same_batches_and_another_seed_others(small_splits):
    first, _, _ = device_loaders(small_splits, batch_size=128, seed=0)
    again, _, _ = device_loaders(small_splits, batch_size=128, seed=0)
    other, _, _ = device_loaders(small_splits, batch_size=128, seed=1)
    epoch, epoch_again, epoch_other = one_epoch(first), one_epoch(again), one_epoch(other)
    assert same_batches(epoch, epoch_again)
    assert not torch.equal(epoch[0][0], epoch_other[0][0])
    assert not torch.equal(epoch[0][1], epoch_other[0][1])  # a new order, not only new augmentations


def test_an_epoch_depends_only_on_seed_and_epoch_number(small_splits):
    loader, _, _ = device_loaders(small_splits, batch_size=256, seed=3)
    epoch0, epoch1 = one_epoch(loader), one_epoch(loader)  # each pass moves on to the next epoch
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
    loader.set_epoch(1)
    assert same_batches(one_epoch(loader), epoch1)
    loader.set_epoch(1)
    assert same_batches(one_epoch(loader), epoch1)  # twice: set_epoch re-seeds, whatever came before
    resumed, _, _ = device_loaders(small_splits, batch_size=256, seed=3)
    resumed.set_epoch(1)  # a fresh loader, as after resuming a run: no generator state carried over
    assert same_batches(one_epoch(resumed), epoch1)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_image_is_seen_once_an_epoch_with_its_label(small_splits, drop_last):
    s = small_splits
    loader = DeviceLoader(
        s.train_images, s.train_labels, s.mean, s.std, batch_size=128, shuffle=True, drop_last=drop_last, seed=0
    )
    seen = Counter()
    for x, y in loader:
        for image, label in zip(to_uint8(x, s.mean, s.std), y, strict=True):
            seen[image.numpy().tobytes(), int(label)] += 1
    pairs = zip(s.train_images, s.train_labels, strict=True)
    expected = Counter((image.numpy().tobytes(), int(label)) for image, label in pairs)
    if drop_last:
        assert len(loader) == len(s.train_labels) // 128 and sum(seen.values()) == len(loader) * 128
        assert not seen - expected  # only real (image, label) pairs, none twice
    else:
        assert len(loader) == math.ceil(len(s.train_labels) / 128)
        assert seen == expected


def test_batches_are_normalised_channels_last_tensors_on_the_device(small_splits):
    train, val, test = device_loaders(small_splits, batch_size=64, eval_batch_size=500)
    assert (train.batch_size, val.batch_size, test.batch_size) == (64, 500, 500)
    assert len(train) == len(small_splits.train_labels) // 64  # whole batches only, like the DataLoader
    assert len(val) == math.ceil(len(small_splits.val_labels) / 500)
    x, y = next(iter(train))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == (64,) and y.dtype == torch.int64
    pixels = x * small_splits.std + small_splits.mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.max() > 0.99  # not a blank batch


def test_without_augmentation_batches_are_exactly_the_normalised_images(small_splits):
    s = small_splits
    _, val, _ = device_loaders(s, eval_batch_size=1000)
    loader = DeviceLoader(s.val_images, s.val_labels, s.mean, s.std, batch_size=100, shuffle=False, augment=False)
    assert torch.equal(torch.cat([x for x, _ in val]), dl.data.normalize(s.val_images, s.mean, s.std))
    assert torch.equal(torch.cat([x for x, _ in loader]), dl.data.normalize(s.val_images, s.mean, s.std))
    assert torch.equal(torch.cat([y for _, y in loader]), s.val_labels)


def test_make_loaders_builds_the_pipeline_asked_for(small_splits):
    device, _, _ = make_loaders(small_splits, 64, augment="device")
    plain, _, _ = make_loaders(small_splits, 64, augment="none")
    per_image, _, _ = make_loaders(small_splits, 64, augment="albumentations", num_workers=0)
    assert isinstance(device, DeviceLoader) and device.augment
    assert isinstance(plain, DeviceLoader) and not plain.augment
    assert isinstance(per_image, torch.utils.data.DataLoader) and per_image.dataset.transform is not None
    assert len(device) == len(plain) == len(per_image)  # whole batches only, the same count
    with pytest.raises(dl.DataError, match="unknown input pipeline"):
        make_loaders(small_splits, augment="kornia")


def test_mismatched_images_and_labels_are_refused(small_splits):
    with pytest.raises(dl.DataError, match="one label per image"):
        DeviceLoader(small_splits.val_images, small_splits.val_labels[:-1], 0.1, 0.3)


# --- augment: contract and parameter ranges --------------------------------------------------------


def test_augment_returns_images_in_range_and_accepts_uint8_or_float(small_splits):
    images = small_splits.train_images[:64]
    from_uint8 = augment(images, torch.Generator().manual_seed(0))
    from_float = augment(images.float().div(255).unsqueeze(1), torch.Generator().manual_seed(0))
    assert from_uint8.shape == (64, 1, 28, 28) and from_uint8.dtype == torch.float32
    assert from_uint8.min() >= 0 and from_uint8.max() <= 1
    assert torch.equal(from_uint8, from_float)
    with pytest.raises(dl.DataError, match="uint8 images"):
        augment(images.float(), torch.Generator())  # float without the channel axis


def test_with_every_transform_off_the_images_come_back_unchanged(small_splits):
    images = small_splits.train_images[:64]
    out = augment(images, torch.Generator().manual_seed(0), NOTHING)
    # Sampling each pixel at its own centre returns it; 1e-5 allows for float rounding of the grid.
    assert torch.allclose(out.squeeze(1), images.float() / 255, atol=1e-5)


def test_the_gpu_way_of_drawing_distortions_matches_the_cpu_way():
    # On a GPU every image gets a field and the chosen are kept (pick_out=False); on a CPU only the
    # chosen get one. The same first draw picks the same images; the fields then differ, but not in size.
    config, size = AugmentConfig(), (28, 28)
    picked = distortion_shift(2000, size, config, torch.Generator().manual_seed(0), pick_out=True)
    kept = distortion_shift(2000, size, config, torch.Generator().manual_seed(0), pick_out=False)
    distorted = picked.abs().amax((1, 2, 3)) > 0
    assert torch.equal(distorted, kept.abs().amax((1, 2, 3)) > 0)
    assert 0.25 < distorted.float().mean() < 0.35  # p = 0.3; 2,000 draws: ±0.01 std
    # Mean displacement over all images 0.18-0.19 px (0.6 px in a distorted one); seeds move it by ±3 %.
    assert picked.abs().mean() == pytest.approx(kept.abs().mean().item(), rel=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_are_made_on_the_gpu_and_repeat_with_the_seed(small_splits):
    first, _, _ = device_loaders(small_splits, batch_size=128, device="cuda", seed=0)
    again, _, _ = device_loaders(small_splits, batch_size=128, device="cuda", seed=0)
    x, y = next(iter(first))
    assert x.device.type == "cuda" and y.device.type == "cuda" and x.dtype == torch.float32
    assert same_batches(one_epoch(first), one_epoch(again))
    pixels = x * small_splits.std + small_splits.mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def centre_of_mass(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of each (N, 1, H, W) image's centre of mass, in pixels."""
    images = images.squeeze(1).double()
    coordinates = torch.arange(images.shape[-1], dtype=torch.float64)
    mass = images.sum((1, 2))
    return (images.sum(1) * coordinates).sum(1) / mass, (images.sum(2) * coordinates).sum(1) / mass


def test_rotation_stays_within_its_range():
    # A 2 × 2 dot 11 px above the centre of rotation, (13.5, 13.5): its angle about the centre after
    # rotation must stay within ±15°. Bilinear resampling moves the centre of mass of such a dot by
    # under 0.1 px (0.5° at 11 px): hence the 1° allowance.
    dots = torch.zeros(500, 28, 28, dtype=torch.uint8)
    dots[:, 2:4, 13:15] = 255
    x, y = centre_of_mass(augment(dots, torch.Generator().manual_seed(0), ROTATION_ONLY))
    angles = torch.rad2deg(torch.atan2(x - 13.5, 13.5 - y))
    assert angles.abs().max() <= 15 + 1
    assert angles.max() > 13 and angles.min() < -13  # and it uses that range (500 draws: P(fail) < 1e-14)


def test_shift_is_whole_pixels_within_ten_percent():
    # A.Affine shifts by int(fraction * 28): whole pixels from -2 to 2 (10 % of 28 is 2.8).
    dots = torch.zeros(500, 28, 28, dtype=torch.uint8)
    dots[:, 13:15, 13:15] = 255
    x, y = centre_of_mass(augment(dots, torch.Generator().manual_seed(0), SHIFT_ONLY))
    shifts = torch.cat([x - 13.5, y - 13.5])
    assert torch.allclose(shifts, shifts.round(), atol=1e-4)
    assert set(shifts.round().int().tolist()) == {-2, -1, 0, 1, 2}


def test_brightness_and_contrast_stay_within_their_range():
    # 0.5 grey times a contrast in [0.8, 1.2] plus a brightness in [-0.2, 0.2]: from 0.2 to 0.8.
    grey = torch.full((500, 28, 28), 128, dtype=torch.uint8)
    out = augment(grey, torch.Generator().manual_seed(0), BRIGHTNESS_ONLY)[:, 0, 0, 0]
    low, high = 128 / 255 * 0.8 - 0.2, 128 / 255 * 1.2 + 0.2
    assert out.min() >= low - 1e-6 and out.max() <= high + 1e-6
    assert out.min() < low + 0.05 and out.max() > high - 0.05


# --- likeness to the albumentations pipeline -------------------------------------------------------


@dataclass
class ImageStatistics:
    mean_image: torch.Tensor  # (28, 28)
    ink: float  # mean total brightness of an image, in pixels at full white
    centre_spread: tuple[float, float]  # std of the centre of mass, x and y, in pixels
    rotation_spread: float  # std of the change in stroke orientation, degrees, elongated digits only
    size_spread: float  # robust std of the log change in the ink's radius of gyration
    lifted_background: float  # share of images whose corner is brightened


def orientation(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal-axis angle (degrees) and elongation (axis ratio squared) of each image's ink."""
    images = images.squeeze(1).double()
    x, y = centre_of_mass(images.unsqueeze(1))
    coordinates = torch.arange(28, dtype=torch.float64)
    dx, dy = coordinates - x[:, None, None], coordinates[:, None] - y[:, None, None]
    mass = images.sum((1, 2))
    xx, yy, xy = ((images * a * b).sum((1, 2)) / mass for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    spread = ((xx - yy) ** 2 + 4 * xy**2).sqrt()
    return torch.rad2deg(0.5 * torch.atan2(2 * xy, xx - yy)), (xx + yy + spread) / (xx + yy - spread)


def radius_of_gyration(images: torch.Tensor) -> torch.Tensor:
    """RMS distance of each image's ink (pixels over 0.5: the background lift stays below) from its centre."""
    ink = (images > 0.5).double()
    x, y = centre_of_mass(ink)
    coordinates = torch.arange(28, dtype=torch.float64)
    squared = (coordinates - x[:, None, None]) ** 2 + (coordinates[:, None] - y[:, None, None]) ** 2
    return ((ink.squeeze(1) * squared).sum((1, 2)) / ink.sum((1, 2, 3))).sqrt()


def robust_std(values: torch.Tensor) -> float:
    """Interquartile range / 1.349: the std of a normal sample, blind to a few wild values."""
    values = values[values.isfinite()]  # an image dimmed below 0.5 everywhere has no ink to measure
    low, high = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype))
    return ((high - low) / 1.349).item()


def statistics(augmented: torch.Tensor, originals: torch.Tensor) -> ImageStatistics:
    x, y = centre_of_mass(augmented)
    angle, _ = orientation(augmented)
    original_angle, elongation = orientation(originals)
    elongated = elongation > 3  # about half of the digits (1, 7, 9...): a round 0 has no clear axis
    turn = ((angle - original_angle + 90) % 180 - 90)[elongated]
    return ImageStatistics(
        mean_image=augmented.squeeze(1).mean(0),
        ink=augmented.sum((1, 2, 3)).mean().item(),
        centre_spread=(x.std().item(), y.std().item()),
        rotation_spread=turn.std().item(),
        size_spread=robust_std(torch.log(radius_of_gyration(augmented) / radius_of_gyration(originals))),
        lifted_background=(augmented[:, 0, :3, :3].mean((1, 2)) > 0.02).double().mean().item(),
    )


@pytest.fixture(scope="module")
def likeness_images(small_splits):
    """2,000 training images as uint8, and as float (N, 1, 28, 28)."""
    images = small_splits.train_images[:2000]
    return images, images.float().div(255).unsqueeze(1)


@pytest.fixture(scope="module")
def albumentations_statistics(likeness_images) -> ImageStatistics:
    """The statistics of ``augment.train_augmentation`` applied image by image (about a second)."""
    images, originals = likeness_images
    pipeline = dl.augment.train_augmentation(seed=0)
    augmented = [torch.from_numpy(pipeline(image=image.numpy())["image"]) for image in images]
    return statistics(torch.stack(augmented).float().div(255).unsqueeze(1), originals)


def assert_alike(ours: ImageStatistics, theirs: ImageStatistics) -> None:
    # Tolerances, from 5 seeds of each pipeline on these 2,000 images (ours, then albumentations'),
    # and what a changed pipeline of ours gives (the last test checks that each of these fails):
    # - mean images: mean absolute difference from albumentations' 0.0051-0.0062; between two of its
    #   own seeds 0.0036-0.0043. No augmentation 0.026, no affine 0.015, no brightness/contrast 0.013,
    #   its probability doubled 0.013, shift range doubled 0.026.
    assert (ours.mean_image - theirs.mean_image).abs().mean() < 0.010
    # - ink: 110.5-111.9 against 110.3-112.2 (a seed moves it by ~1 %: brightness lifts 15 % of the
    #   backgrounds). No augmentation or no brightness/contrast: 103 (-7 %); its probability doubled: +7 %.
    assert ours.ink == pytest.approx(theirs.ink, rel=0.05)
    # - centre-of-mass spread: 1.15-1.19 px against 1.18-1.21 (within 4 %). No augmentation 0.29,
    #   no affine 0.42, shift range doubled 2.5.
    for ours_spread, their_spread in zip(ours.centre_spread, theirs.centre_spread, strict=True):
        assert ours_spread == pytest.approx(their_spread, rel=0.15)
    # - rotation spread: 8.5-8.7° against 8.5-9.1°. Rotation range doubled: 16.5° (albumentations
    #   16.7°); no rotation: 2.9° (the distortions alone).
    assert ours.rotation_spread == pytest.approx(theirs.rotation_spread, rel=0.2)
    # - size spread: 0.048-0.051 against 0.050-0.053. Scale range doubled: 0.088; no scaling: 0.019.
    #   (The distortions hardly move any of these: without them the size spread is 0.044.)
    assert ours.size_spread == pytest.approx(theirs.size_spread, rel=0.2)
    # - lifted backgrounds: 0.130-0.147 against 0.126-0.139 (expected 0.3 × 0.5 × 0.9 = 0.135, ±0.008
    #   from sampling 2,000 images). No brightness/contrast: 0; its probability doubled: 0.26.
    assert ours.lifted_background == pytest.approx(theirs.lifted_background, abs=0.05)


def test_on_device_augmentation_is_statistically_like_albumentations(likeness_images, albumentations_statistics):
    images, originals = likeness_images
    ours = statistics(augment(images, torch.Generator().manual_seed(0)), originals)
    assert_alike(ours, albumentations_statistics)


@pytest.mark.parametrize(
    "changed",
    [
        NOTHING,
        AugmentConfig(max_rotation=30.0),
        AugmentConfig(max_shift=0.2),
        AugmentConfig(scale=(0.8, 1.2)),
        AugmentConfig(brightness_contrast_p=0.0),
        AugmentConfig(brightness_contrast_p=0.6),
    ],
    ids=[
        "no augmentation", "rotation doubled", "shift doubled", "scale doubled", "no brightness", "brightness p doubled"
    ],
)
def test_the_likeness_test_tells_a_changed_pipeline_apart(likeness_images, albumentations_statistics, changed):
    images, originals = likeness_images
    ours = statistics(augment(images, torch.Generator().manual_seed(0), changed), originals)
    with pytest.raises(AssertionError):
        assert_alike(ours, albumentations_statistics)
