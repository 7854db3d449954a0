"""``digitlib.preprocess``: any picture of a digit → an MNIST-like 28x28, and clear errors for the rest."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_unreadable
from PIL import Image, ImageFile

import digitlib as dl
import digitlib.preprocess as preprocessing
from digitlib.checkpoints import load_checkpoint
from digitlib.errors import ImageError
from digitlib.preprocess import MAX_PIXELS, load_image, preprocess, to_mnist


@pytest.fixture(scope="module")
def mnist_test():
    """The official test set: uint8 images (10000, 28, 28) and labels."""
    return dl.data.load_mnist(train=False)


@pytest.fixture(scope="module")
def digit(mnist_test) -> np.ndarray:
    """Test image 0 (a 7), uint8 (28, 28), white ink on black."""
    return mnist_test[0][0].numpy()


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def centre_of_mass(field: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(field.shape)
    return float((field * rows).sum() / field.sum()), float((field * cols).sum() / field.sum())


def ink_box(field: np.ndarray) -> tuple[int, int]:
    """Height and width of the box holding all non-zero pixels."""
    rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def digit_at_side(digit: np.ndarray, side: int) -> Image.Image:
    """The digit cropped to its ink and scaled so its longer side is ``side`` px, on a side x side canvas."""
    image = Image.fromarray(digit)
    crop = image.crop(image.getbbox())
    scale = side / max(crop.size)
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    scaled = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), resample)
    canvas = Image.new("L", (side, side))
    canvas.paste(scaled, ((side - scaled.width) // 2, (side - scaled.height) // 2))
    return canvas


def test_output_is_float32_28x28_in_unit_range(digit):
    field = to_mnist(digit)
    assert field.dtype == np.float32 and field.shape == (28, 28)
    assert field.min() >= 0 and field.max() == pytest.approx(1)


def test_preprocess_normalises_into_a_model_batch(digit):
    mean, std = 0.1307, 0.3081
    x = preprocess(digit, mean, std)
    assert isinstance(x, torch.Tensor) and x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0], (torch.from_numpy(to_mnist(digit)) - mean) / std)


def test_an_mnist_digit_comes_back_almost_unchanged(digit):
    assert correlation(to_mnist(digit), digit / 255) > 0.99


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_a_digit_in_a_corner_is_centred_by_mass_in_a_20px_box(digit, corner):
    big = Image.fromarray(digit).resize((280, 280), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (1200, 900))
    canvas.paste(big, (0, 0) if corner == "top-left" else (1200 - 280, 900 - 280))
    field = to_mnist(canvas)
    row, col = centre_of_mass(field)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1, (row, col)
    assert max(ink_box(field)) == 20


@pytest.mark.parametrize("index", [0, 1])
def test_tiny_and_huge_pictures_give_the_same_digit(mnist_test, index):
    digit = mnist_test[0][index].numpy()
    tiny, huge = to_mnist(digit_at_side(digit, 10)), to_mnist(digit_at_side(digit, 1000))
    assert max(ink_box(tiny)) == max(ink_box(huge)) == 20
    # 10 px hold little detail, so the tiny one is blurrier, but it is the same shape.
    assert correlation(tiny, huge) > 0.85
    assert correlation(huge, to_mnist(digit)) > 0.95


def test_dark_ink_on_white_paper_equals_light_ink_on_black(digit):
    np.testing.assert_allclose(to_mnist(255 - digit), to_mnist(digit), atol=1e-6)
    rgb = Image.fromarray(255 - digit).convert("RGB")
    np.testing.assert_allclose(to_mnist(rgb), to_mnist(digit), atol=1e-6)


def test_transparent_background_uses_alpha_as_ink(digit):
    # Black strokes on a fully transparent black background: only alpha tells them apart.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 3] = digit
    np.testing.assert_allclose(to_mnist(Image.fromarray(rgba, "RGBA")), to_mnist(digit), atol=1e-6)
    grey_alpha = np.stack([np.full_like(digit, 200), digit], axis=-1)  # (H, W, 2): grey + alpha
    np.testing.assert_allclose(to_mnist(grey_alpha), to_mnist(digit), atol=1e-6)


def test_opaque_rgba_is_read_by_colour(digit):
    rgba = np.full((28, 28, 4), 255, dtype=np.uint8)
    rgba[..., :3] = (255 - digit)[..., None]
    np.testing.assert_allclose(to_mnist(rgba), to_mnist(digit), atol=1e-6)


def test_palette_gif(tmp_path, digit):
    # Blue ink on yellow paper, quantised to a palette: a colour GIF, not a grey one.
    ink = Image.fromarray(digit).resize((112, 112), Image.Resampling.BILINEAR)
    paper = Image.new("RGB", ink.size, (250, 230, 120))
    coloured = Image.composite(Image.new("RGB", ink.size, (20, 40, 160)), paper, ink)
    path = tmp_path / "seven.gif"
    coloured.quantize(64).save(path)
    image = load_image(path)
    assert image.mode == "P"
    assert correlation(to_mnist(image), to_mnist(digit)) > 0.95


def test_animated_gif_gives_its_first_frame(tmp_path, mnist_test):
    images = mnist_test[0]
    frames = [Image.fromarray(images[i].numpy()).convert("P") for i in (0, 1)]
    path = tmp_path / "two.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    first = to_mnist(load_image(path))
    assert correlation(first, to_mnist(images[0].numpy())) > correlation(first, to_mnist(images[1].numpy())) + 0.2


def test_jpeg_of_dark_ink_on_white(tmp_path, digit):
    path = tmp_path / "seven.jpg"
    Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR).convert("RGB").save(path, quality=85)
    field = to_mnist(load_image(path))
    assert correlation(field, to_mnist(digit)) > 0.95
    assert abs(centre_of_mass(field)[0] - 14) <= 1 and abs(centre_of_mass(field)[1] - 14) <= 1


def test_phone_photo_orientation_is_applied(tmp_path, digit):
    # Stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view"), like a phone camera.
    stored = Image.fromarray(255 - digit).resize((112, 112)).transpose(Image.Transpose.ROTATE_90).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    assert correlation(to_mnist(load_image(path)), to_mnist(digit)) > 0.95


def test_16_bit_and_float_arrays(digit):
    expected = to_mnist(digit)
    for array in (digit.astype(np.uint16) * 257, digit.astype(np.float32) / 255, digit.astype(np.float64)):
        np.testing.assert_allclose(to_mnist(array), expected, atol=1e-2, err_msg=str(array.dtype))


def test_16_bit_png_file(tmp_path, digit):
    path = tmp_path / "deep.png"
    Image.fromarray((255 - digit).astype(np.uint16) * 257).save(path)
    image = load_image(path)
    assert image.mode.startswith("I")
    np.testing.assert_allclose(to_mnist(image), to_mnist(digit), atol=1e-2)


def test_one_bit_image_is_antialiased(digit):
    bilevel = Image.fromarray(digit).resize((560, 560)).point(lambda v: 255 if v > 127 else 0).convert("1")
    field = to_mnist(bilevel)
    np.testing.assert_allclose(field, to_mnist(bilevel.convert("L")), atol=1e-6)
    assert ((field > 0.1) & (field < 0.9)).sum() > 20  # grey edges from area averaging, not just 0/1
    assert correlation(field, to_mnist(digit)) > 0.8  # thresholding lost MNIST's own grey levels


@pytest.mark.parametrize(
    "blank",
    [np.zeros((28, 28), np.uint8), np.full((50, 80), 255, np.uint8), np.full((30, 30, 3), 128, np.uint8),
     np.zeros((40, 40, 4), np.uint8), np.full((20, 20), 1000, np.uint16)],
    ids=["black", "white", "grey-rgb", "transparent", "flat-16-bit"],
)
def test_blank_image_is_refused(blank):
    with pytest.raises(ImageError, match="blank"):
        to_mnist(blank)


@pytest.mark.parametrize("shape", [(28, 28, 5), (2, 28, 28, 1), (0, 28)])
def test_arrays_that_are_not_images_are_refused(shape):
    with pytest.raises(ImageError, match="image|empty"):
        to_mnist(np.ones(shape, np.uint8))


def write_black_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, written in a fraction of a second.

    PIL's own save takes about 2 s for 20000x20000; compressing the zero rows directly at
    zlib level 1 takes about 0.1 s, and the file stays small (about 0.2 MB).
    """
    rows = bytes(1 + math.ceil(width / 8)) * height  # each row: filter byte 0, then the pixels

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1))
                     + chunk(b"IEND", b""))
    return path


def test_the_black_png_writer_writes_what_pil_reads(tmp_path):
    image = load_image(write_black_png(tmp_path / "small.png", 30, 20))
    assert image.size == (30, 20) and image.mode == "1" and image.getextrema() == (0, 0)


@pytest.mark.parametrize(
    "side",
    [
        math.isqrt(MAX_PIXELS) + 1,  # above our limit, below PIL's: PIL opens it quietly
        math.isqrt(Image.MAX_IMAGE_PIXELS * 3 // 2),  # between PIL's limit and twice it: PIL warns
        20_000,  # above twice PIL's limit: PIL refuses to open it, without saying its size
    ],
    ids=["above-ours", "pil-warns", "pil-refuses"],
)
def test_huge_image_file_is_refused_before_decoding(tmp_path, recwarn, monkeypatch, side):
    assert side * side > MAX_PIXELS
    path = write_black_png(tmp_path / "huge.png", side, side)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(error.value) == (
        f"{path}: {side}x{side} pixels is too large (limit {MAX_PIXELS:,}); crop it to the digit"
    )
    # Decoding 400 megapixels would take seconds and 400 MB; the size is read from the header instead.
    assert decoded == []
    assert not [w for w in recwarn.list if issubclass(w.category, Image.DecompressionBombWarning)]


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file") as error:
        load_image(tmp_path / "nowhere.png")
    assert "nowhere.png" in str(error.value)


def test_an_unreadable_image_is_a_permission_problem(tmp_path, digit, monkeypatch):
    path = tmp_path / "seven.png"
    Image.fromarray(digit).save(path)
    make_unreadable(path, preprocessing, monkeypatch)
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(error.value).startswith(f"{path}: permission denied: make it readable")


def test_a_symbolic_link_loop_is_not_a_missing_file(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(ImageError, match=r"loop\.png is a symbolic link loop"):
        load_image(loop)


def test_a_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="not an image") as error:
        load_image(path)
    assert str(path) in str(error.value) and "PNG" in str(error.value)


def test_truncated_png(tmp_path, digit):
    whole = tmp_path / "whole.png"
    Image.fromarray(digit).resize((200, 200)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageError, match="damaged or truncated") as error:
        load_image(truncated)
    assert str(truncated) in str(error.value)


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(ImageError, match=f"^{tmp_path} is a directory, not a file"):
        load_image(tmp_path)


@pytest.mark.slow
def test_mnist_round_trip_keeps_the_cnns_accuracy(mnist_test, trained_checkpoints):
    """All 10,000 test images through to_mnist score within 0.1 points of the direct path."""
    images, labels = mnist_test
    model, info = load_checkpoint(trained_checkpoints["cnn"])
    mean, std = info["normalization"]["mean"], info["normalization"]["std"]
    round_trip = np.stack([to_mnist(image) for image in images.numpy()])
    direct = dl.data.normalize(images, mean, std)
    through_to_mnist = torch.from_numpy(round_trip).sub(mean).div(std).unsqueeze(1)
    with torch.inference_mode():
        accuracy = {
            name: float(torch.cat([model(batch).argmax(1) for batch in x.split(1000)]).eq(labels).float().mean())
            for name, x in (("direct", direct), ("to_mnist", through_to_mnist))
        }
    print(f"CNN test accuracy: direct {accuracy['direct']:.2%}, through to_mnist {accuracy['to_mnist']:.2%}")
    assert accuracy["direct"] > 0.9
    assert abs(accuracy["direct"] - accuracy["to_mnist"]) <= 0.001
