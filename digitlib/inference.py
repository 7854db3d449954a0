"""Reading one picture: any image of one digit in, what one model or an ensemble makes of it out.

``python -m digitlib predict`` reads image files through :func:`read_image` and the drawing pad reads
its raster through it, so both see the same 28x28 picture (``preprocess.to_mnist``), normalise it the
same way (``data.normalize``, with each model's own training mean and std) and doubt the same
pictures (``confidence.judge``, the not-a-digit rule). An ensemble is the mean of its members'
probabilities, never a vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .confidence import Verdict, judge
from .preprocess import model_input, to_mnist
from .runtime import to_model, torch_threads


@dataclass(frozen=True)
class Reading:
    """What one model or an ensemble made of one picture: all ten probabilities, and the picture it saw."""

    probabilities: np.ndarray  # (10,) float32, the mean of the members' probabilities; sums to 1
    image: np.ndarray  # (28, 28) float32 in [0, 1], white ink on black: to_mnist of the picture
    model: str = ""  # who read it, where the caller names it: the pad's selector value (a model's name or "average")

    @property
    def digit(self) -> int:
        """The most likely digit (the lowest one on a tie)."""
        return int(self.probabilities.argmax())

    @property
    def confidence(self) -> float:
        """The most likely digit's probability."""
        return float(self.probabilities[self.digit])

    @property
    def verdict(self) -> Verdict:
        """Whether this may not be a digit at all (a dot, a dash, a shoe): ``confidence.judge`` of the
        probabilities and the picture, the rule ``predict`` and the pad both apply."""
        return judge(self.probabilities, self.image)

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The ``k`` most likely digits as (digit, probability), most likely first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(digit), float(self.probabilities[digit])) for digit in order]


@torch.inference_mode()
def read_image(members: Sequence[tuple[nn.Module, float, float]], image) -> Reading:
    """What the (model, mean, std) ``members`` make of one picture (any image ``preprocess.to_mnist`` takes).

    The picture is made MNIST-like once; each member reads it normalised with its own training
    constants, on the member's device, and the probabilities (their mean for several) come back on
    the CPU as NumPy. One thread: one 28x28 image is too little work to split, and on a busy CPU a
    second thread only adds waiting for a free core. Raises ``ImageError`` for a picture with no ink.
    """
    if not members:
        raise ValueError("read_image needs at least one (model, mean, std)")
    picture = to_mnist(image)
    with torch_threads(1):
        probabilities = torch.stack(
            [model(to_model(model, model_input(picture, mean, std)))[0].float().exp().cpu()
             for model, mean, std in members]
        )
    return Reading(probabilities.mean(0).numpy(), picture)
