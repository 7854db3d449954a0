"""Turn any picture of one digit into what the models were trained on, the way MNIST was made.

MNIST's digits were size-normalised to fit a 20x20 box (keeping their aspect ratio, with
anti-aliasing) and then centred by centre of mass in a 28x28 field. ``to_mnist`` does the same
to a photo, a scan or a drawing; each step is its own small function so notebook 06 can show it.
The predict CLI and the drawing pad both read a picture through ``inference.read_image``, which makes
it MNIST-like here: one code path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import normalize
from .errors import ImageError

BOX = 20  # MNIST's digits fit a 20x20 box...
SIZE = 28  # ...centred in 28x28
MAX_PIXELS = 50_000_000  # refuse anything larger: decoding it alone would take seconds and GBs
WORK_SIDE = 1024  # larger pictures are shrunk to this first; a digit needs no more
INK_FLOOR = 0.05  # ink weaker than this (relative to the strongest) is paper noise


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file (PNG, JPEG, BMP, GIF, ...), refusing missing, unreadable or huge files.

    A photo's EXIF orientation is applied, so a phone picture comes out the way it was taken;
    an animated GIF gives its first frame. The size is read from the header and checked before
    anything is decoded.
    """
    path = Path(path)
    try:
        file = open(path, "rb")
    except OSError as error:
        from .checkpoint_checks import unreadable_file_message

        raise ImageError(unreadable_file_message(path, "image", error)) from None
    with file:
        try:
            with warnings.catch_warnings():
                # PIL warns between its limit and twice it: the check below refuses those itself.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file)
        except Image.DecompressionBombError:
            raise ImageError(_too_large(path, _header_size(file))) from None
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image PIL can read; use PNG, JPEG, BMP or GIF") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(f"{path}: the image is damaged or truncated ({error})") from None
        with image:
            width, height = image.size
            if width * height > _pixel_limit():
                raise ImageError(_too_large(path, (width, height)))
            try:
                image.seek(0)  # first frame of an animated GIF
                image.load()
                return ImageOps.exif_transpose(image)
            except (OSError, SyntaxError, ValueError) as error:
                raise ImageError(f"{path}: the image is damaged or truncated ({error})") from None


def _pixel_limit() -> int:
    """Our limit, or PIL's refusal threshold if someone lowered it below ours."""
    if Image.MAX_IMAGE_PIXELS is None:
        return MAX_PIXELS
    return min(MAX_PIXELS, 2 * Image.MAX_IMAGE_PIXELS)


def _too_large(path: Path, size: tuple[int, int] | None) -> str:
    limit = _pixel_limit()
    if size is None:
        return f"{path}: the image is too large (over {limit:,} pixels); crop it to the digit"
    width, height = size
    return f"{path}: {width}x{height} pixels is too large (limit {limit:,}); crop it to the digit"


def _header_size(file: IO[bytes]) -> tuple[int, int] | None:
    """The size in the header of an image PIL refused to open as too large, or None if unknown.

    ``Image.open`` finds the size, then raises DecompressionBombError without telling it. This
    finds the plugin the way ``Image.open`` does and asks it, which reads the header only; a
    plugin that checks sizes itself (GIF) still refuses, and then the size stays unknown.
    """
    Image.init()
    file.seek(0)
    prefix = file.read(16)
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a string is a "maybe" that Image.open skips too
            continue
        file.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                header = factory(file, "")
        except Exception:  # this plugin does not read the file, or refuses it: try the next one
            continue
        return header.size
    return None


def as_image(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from a PIL image or an array (H, W), (H, W, 1|2|3|4): grey, grey+alpha, RGB, RGBA.

    Float arrays may hold [0, 1] or [0, 255]; 16-bit arrays are scaled to 8 bits.
    """
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4):
        raise ImageError(f"an array of shape {array.shape} is not an image: expected (H, W) or (H, W, 2|3|4)")
    if array.size == 0:
        raise ImageError("the image is empty (0 pixels)")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind == "f":
        array = np.nan_to_num(array.astype(np.float32))
        array = np.clip(array * (255 if array.max() <= 1 else 1), 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = (array.astype(np.float32) / (257 if array.max() > 255 else 1)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def ink_map(image: Image.Image | np.ndarray) -> np.ndarray:
    """Ink strength in [0, 1] (1 = full ink) from any image, whatever its colours or polarity.

    A transparent background means the alpha channel is the ink. Otherwise the image is turned
    to grey and its border decides the polarity: a light border means dark ink on light paper.
    The paper's level is subtracted and the strongest ink scaled to 1.
    """
    image = as_image(image)
    if image.width == 0 or image.height == 0:
        raise ImageError("the image is empty (0 pixels)")
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")  # resizing would otherwise pick nearest pixels
    if max(image.size) > WORK_SIDE:
        image = image.copy()
        image.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    if image.mode in ("RGBA", "RGBa", "LA", "La"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255
        if alpha.min() < 0.5:  # a transparent background: the opaque strokes are the ink
            return alpha
    grey = _grey(image)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    paper = float(np.median(border))
    ink = grey - paper if paper < 0.5 else paper - grey
    peak = float(ink.max())
    if peak <= 0:
        return np.zeros_like(grey)
    return np.clip(ink / peak, 0, 1)


def _grey(image: Image.Image) -> np.ndarray:
    """Brightness in [0, 1]. 16-bit and float images are read as they are: converting them to
    8-bit "L" would clip everything above 255 to white."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535
    if image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        return array / next((full for full in (1, 255, 65535) if array.max() <= full), float(array.max()))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The smallest box holding all ink above the noise floor. Raises ImageError if there is none."""
    mask = ink > INK_FLOOR
    if not mask.any():
        raise ImageError("the image is blank: no digit found (it needs strokes darker or lighter than the paper)")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.where(crop > INK_FLOOR, crop, 0).astype(np.float32)


def fit_box(crop: np.ndarray, box: int = BOX) -> np.ndarray:
    """Scale so the longer side is ``box`` pixels, keeping the aspect ratio.

    Shrinking uses an area filter (each output pixel averages the input pixels it covers),
    which anti-aliases like MNIST; growing a tiny image uses bilinear interpolation.
    """
    import cv2  # slow to import: only pictures need it (predict does, for every one)

    height, width = crop.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (w, h)
    if size == (width, height):
        return crop
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.clip(cv2.resize(crop, size, interpolation=interpolation), 0, 1)


def center_by_mass(digit: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Place ``digit`` in a ``size`` x ``size`` field so its centre of mass is the field's centre."""
    height, width = digit.shape
    total = float(digit.sum())
    rows, cols = np.arange(height), np.arange(width)
    centre_row = float(digit.sum(axis=1) @ rows) / total
    centre_col = float(digit.sum(axis=0) @ cols) / total
    top = int(round(size / 2 - centre_row))  # MNIST puts the centre of mass at (14, 14)
    left = int(round(size / 2 - centre_col))
    # Keep the whole digit inside the field even when its mass is far off-centre.
    top = min(max(top, 0), size - height)
    left = min(max(left, 0), size - width)
    field = np.zeros((size, size), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field


def to_mnist(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any image of one digit → float32 (28, 28) in [0, 1], white ink on black, like MNIST."""
    return center_by_mass(fit_box(crop_to_ink(ink_map(image))))


def model_input(picture: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """An MNIST-like picture (28, 28) in [0, 1], ``to_mnist``'s output, as a model takes it: normalised with
    ``data.normalize`` and shaped (1, 1, 28, 28). Several models can read one picture each with their own
    mean and std without making it MNIST-like again."""
    return normalize(torch.from_numpy(picture), mean, std).reshape(1, 1, SIZE, SIZE)


def preprocess(image: Image.Image | np.ndarray, mean: float, std: float) -> torch.Tensor:
    """``to_mnist`` plus the training normalisation: a (1, 1, 28, 28) float tensor for a model."""
    return model_input(to_mnist(image), mean, std)
