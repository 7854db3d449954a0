"""How far to trust a prediction: calibration, and the rule that refuses what is not a digit (notebook 08).

A softmax always sums to one, so a model asked about a dot, a dash or a shoe still names a digit,
often "sure". Two questions, two tools:

- *Is 90 % really 90 %?* :func:`reliability` bins predictions by confidence and compares each bin's
  confidence with its accuracy (the reliability diagram; its weighted gap is the expected
  calibration error, :func:`expected_calibration_error`). :func:`fit_temperature` finds the one
  number T that divides the logits so the validation split's negative log-likelihood is lowest
  (temperature scaling, Guo et al., 2017): it changes no prediction, only how sure they sound.
- *Is this a digit at all?* :func:`judge` says no when the picture the models saw (28x28, after
  :func:`digitlib.preprocess.to_mnist`) has far more ink than a digit's strokes (a dot becomes a
  filled disk: a perfect "0"), is much wider than tall (a dash, two digits side by side), or when the
  models' top probability is low. Its thresholds are the constants below, chosen by notebook 08 on
  validation digits. :func:`non_digits` makes seeded test pictures of each kind, drawn the way the pad draws.

Models here end in log-softmax. Log-probabilities are logits shifted by a constant per image, so
softmax, temperature scaling and the NLL treat them alike; the energy score needs the raw logits
(:func:`raw_logits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .pen import CANVAS_SIZE, rasterize
from .preprocess import INK_FLOOR, SIZE
from .runtime import to_model

# --- The rejection rule ------------------------------------------------------------------------
# Chosen on validation digits, never on the test set, by notebooks/08_inside_the_model.ipynb in full
# mode (section 5; `OMP_NUM_THREADS=1 jupyter nbconvert --to notebook --execute
# notebooks/08_inside_the_model.ipynb`) with the course's default models: models/cnn.pt (DigitCNN,
# the 6-epoch recipe, seed 0) and models/resnet.pt (DigitResNet, 10 epochs, seed 0), both trained
# with split seed 0. It chose on that split's 12,000 validation digits, passed through
# preprocess.to_mnist as every drawn or loaded picture is, and checked the shape limits on its
# 48,000 training digits too; then it measured the cost once on the 10,000 test digits
# (docs/results.md has the figures). The rule needs no per-model state: temperature scaling caught
# only a few more non-digits at the same budget (section 5 measures it), so a checkpoint needs
# nothing extra and an ensemble is judged on its mean probabilities.

#: More ink than this share of the 28x28 picture is a blob, not pen strokes: a dot scaled to MNIST's
#: 20-pixel box fills about 40 % of it, the inkiest validation digit 32 % (2 of the 48,000 training
#: digits pass 35 %, at 35.5 and 39.8 %).
MAX_INK = 0.35
#: Ink whose bounding box is less tall than this fraction of its width: a dash, or digits side by
#: side. MNIST's digits are taller than wide; 1 of the 12,000 validation digits (and 20 of the 48,000
#: training digits) is flatter than this.
MIN_HEIGHT_TO_WIDTH = 0.55
#: The models' top probability (the mean over an ensemble's members) below which they are unsure:
#: the highest value, in steps of 0.01, that keeps the CNN, the ResNet and their ensemble within the
#: budget on the validation digits, after the shape checks (the highest for each: 0.88, 0.93 and 0.85;
#: the ensemble, less sure where its members disagree, sets it). Notebook 08 prints the value a
#: learner's models give.
MIN_CONFIDENCE = 0.85
#: The share of real digits (the validation digits, when choosing) the rule may reject: what the
#: constants above were chosen for.
DIGIT_REJECTION_BUDGET = 0.01


@dataclass(frozen=True)
class Verdict:
    """Whether to doubt that a picture is a digit, and why (``reason`` is "" when not rejected)."""

    rejected: bool
    reason: str


@dataclass(frozen=True)
class Shape:
    """What the ink of a 28x28 MNIST-like picture looks like, before any model sees it."""

    ink: float  # mean ink over the 28x28 field, 0..1
    height_to_width: float  # of the ink's bounding box


def shape_of(image: np.ndarray) -> Shape:
    """The ink share and bounding-box proportions of one (28, 28) picture in [0, 1], white ink on black."""
    image = np.asarray(image, dtype=np.float32)
    mask = image > INK_FLOOR
    height, width = int(mask.any(axis=1).sum()), int(mask.any(axis=0).sum())
    return Shape(ink=float(image.mean()), height_to_width=height / max(width, 1))


def verdicts(
    probabilities,
    images=None,
    min_confidence: float = MIN_CONFIDENCE,
    max_ink: float = MAX_INK,
    min_height_to_width: float = MIN_HEIGHT_TO_WIDTH,
) -> list[Verdict]:
    """:func:`judge` for a batch: probabilities (N, 10) and, if known, the (N, 28, 28) pictures the models saw.

    The checks run in this order and the first that fails gives the reason: the picture's shape
    (only with ``images``), then the confidence.
    """
    probabilities = torch.as_tensor(probabilities, dtype=torch.float32).reshape(-1, 10)
    confidence, digits = probabilities.max(dim=1)
    shapes = [shape_of(image) for image in images] if images is not None else [None] * len(probabilities)
    if len(shapes) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probability rows but {len(shapes)} images")
    results = []
    for shape, top, digit in zip(shapes, confidence.tolist(), digits.tolist(), strict=True):
        reason = _shape_reason(shape, max_ink, min_height_to_width) if shape is not None else None
        if reason is None and top < min_confidence:
            reason = f"unsure: {top:.0%} for {digit} (below {min_confidence:.0%})"
        results.append(Verdict(reason is not None, reason or ""))
    return results


def _shape_reason(shape: Shape, max_ink: float, min_height_to_width: float) -> str | None:
    """Why the shape alone says "not a digit", or None when it looks like one."""
    if shape.ink > max_ink:
        return f"a blob, not strokes ({shape.ink:.0%} of the picture is ink; digits stay under {max_ink:.0%})"
    if shape.height_to_width < min_height_to_width:
        return "wider than tall: a dash, or more than one digit?"
    return None


def judge(probabilities, image: np.ndarray | None = None, **thresholds: float) -> Verdict:
    """Whether to doubt that a picture is a digit at all.

    ``probabilities``: the ten probabilities the model (or the mean of an ensemble's) gave;
    ``image``: the (28, 28) picture it saw, ``to_mnist``'s output, which lets the shape checks run.
    ``thresholds`` override :data:`MIN_CONFIDENCE`, :data:`MAX_INK` or :data:`MIN_HEIGHT_TO_WIDTH`
    (by their lower-case names), for experiments.
    """
    images = None if image is None else np.asarray(image)[None]
    return verdicts(torch.as_tensor(probabilities)[None], images, **thresholds)[0]


def shape_rejected(images, max_ink: float = MAX_INK, min_height_to_width: float = MIN_HEIGHT_TO_WIDTH) -> np.ndarray:
    """A boolean per picture (N, 28, 28): does the shape check alone reject it?"""
    return np.array([_shape_reason(shape_of(image), max_ink, min_height_to_width) is not None for image in images],
                    dtype=bool)


def confidence_threshold(confidences: np.ndarray, already_rejected: np.ndarray, budget: float) -> float:
    """The highest threshold on the top probability that keeps the share of rejected digits within ``budget``.

    ``confidences`` (N,) are the top probabilities on N real digits, ``already_rejected`` (N,) which of
    them another check rejects anyway. Digits with a confidence strictly below the result are rejected.
    """
    confidences, already_rejected = np.asarray(confidences, dtype=np.float64), np.asarray(already_rejected, bool)
    allowed = int(np.floor(budget * len(confidences))) - int(already_rejected.sum())
    if allowed < 0:
        raise ValueError(f"the other checks already reject {already_rejected.mean():.2%}, over the budget {budget:.2%}")
    remaining = np.sort(confidences[~already_rejected])
    return float(remaining[allowed]) if allowed < len(remaining) else 1.0


# --- Calibration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reliability:
    """Predictions binned by confidence: per bin the mean confidence, the accuracy and the count.

    Empty bins hold NaN confidence and accuracy and a count of 0.
    """

    edges: np.ndarray  # (bins + 1,) from 0 to 1
    confidence: np.ndarray  # (bins,)
    accuracy: np.ndarray  # (bins,)
    counts: np.ndarray  # (bins,)

    @property
    def ece(self) -> float:
        """Expected calibration error: |accuracy - confidence| per bin, weighted by its share of predictions."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gaps * self.counts[filled]).sum() / self.counts.sum())


def reliability(probabilities, labels, bins: int = 15) -> Reliability:
    """Bin the top probability of each prediction into ``bins`` equal-width bins over (0, 1].

    15 bins follow Guo et al. (2017). A bin holds the confidences in (lower, upper].
    """
    probabilities, labels = torch.as_tensor(probabilities, dtype=torch.float64), torch.as_tensor(labels)
    confidence, predictions = probabilities.max(dim=1)
    correct = (predictions == labels).double().numpy()
    confidence_np = confidence.numpy()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence_np, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence_np, minlength=bins) / counts
        accuracy = np.bincount(which, correct, minlength=bins) / counts
    return Reliability(edges, mean_confidence, accuracy, counts)


def expected_calibration_error(probabilities, labels, bins: int = 15) -> float:
    """ECE of predictions (N, 10) against labels (N,): see :class:`Reliability`."""
    return reliability(probabilities, labels, bins).ece


def calibrated(logits, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities from logits (or log-probabilities) divided by ``temperature``."""
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32) / temperature, dim=1)


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean NLL of ``labels`` under softmax(logits / temperature): what temperature scaling minimises."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return float(F.cross_entropy(logits / temperature, torch.as_tensor(labels)))


def fit_temperature(logits, labels, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T that minimises the NLL of ``labels`` under softmax(logits / T).

    Fit it on held-out data (the validation split), never the test set. The NLL is convex in 1/T,
    so a bounded one-dimensional search finds its one minimum.
    """
    from scipy.optimize import minimize_scalar  # scikit-learn's dependency: always installed with it

    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels)

    def nll(inverse_temperature: float) -> float:
        return float(F.cross_entropy(logits * inverse_temperature, labels))

    low, high = bounds
    result = minimize_scalar(nll, bounds=(1 / high, 1 / low), method="bounded", options={"xatol": 1e-6})
    return float(1 / result.x)


# --- Scores for telling digits from other things --------------------------------------------


def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a model: its output is the raw logits, before log-softmax."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take logits from")
    return linears[-1]


def raw_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The logits (N, 10) before the model's log-softmax, caught from its last linear layer.

    ``x`` may be on another device than the model: it is moved there a batch at a time, and the logits
    come back on ``x``'s device. Gradients flow when the caller enables them (Captum needs them).
    """
    captured: list[torch.Tensor] = []
    handle = final_linear(model).register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        for start in range(0, len(x), batch_size):
            model(to_model(model, x[start : start + batch_size]))
    finally:
        handle.remove()
    return torch.cat(captured).to(x.device)


def energy(logits, temperature: float = 1.0) -> torch.Tensor:
    """The energy score -T·logsumexp(logits / T) (Liu et al., 2020): lower means more like the training data.

    Needs raw logits (:func:`raw_logits`): for log-probabilities it is always 0.
    """
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


# --- Things that are not digits --------------------------------------------------------------

#: Kinds :func:`non_digits` makes. Fashion-MNIST's clothes (``dl.data.load_dataset("fashion")``) are the
#: notebook's sixth kind.
NON_DIGIT_KINDS = ("dot", "dash", "scribble", "noise", "two digits")



def non_digits(kind: str, count: int, seed: int = 0, digits: np.ndarray | None = None) -> list[Image.Image]:
    """``count`` seeded pictures that are not one digit, as a user might hand them to ``predict`` or the pad.

    Kinds (:data:`NON_DIGIT_KINDS`), drawn with the pad's pen (``dl.pen.rasterize``, black on
    white 280x280) unless said otherwise:

    - ``"dot"``: one tap of the pen, 8-40 px wide;
    - ``"dash"``: one straight stroke, 60-220 px long, within 20° of horizontal;
    - ``"scribble"``: a stray mark, 2-5 short random segments in a small area;
    - ``"noise"``: random black pixels over the whole picture, 2-50 % of them;
    - ``"two digits"``: two of ``digits`` (uint8 (N, 28, 28), white on black, e.g. MNIST test digits)
      side by side, 0-7 px apart, as one 28-pixel-high picture.

    Pass each through ``dl.preprocess.to_mnist`` (or ``preprocess``), as any input is.
    """
    rng = np.random.default_rng(seed)
    if kind == "two digits":
        if digits is None:
            raise ValueError("non_digits('two digits') needs digits: e.g. MNIST test images (N, 28, 28)")
        return [_two_digits(rng, np.asarray(digits)) for _ in range(count)]
    makers = {"dot": _dot, "dash": _dash, "scribble": _scribble, "noise": _noise}
    if kind not in makers:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(NON_DIGIT_KINDS)}")
    return [makers[kind](rng) for _ in range(count)]


def _strokes(strokes: Sequence[Sequence[tuple[float, float]]], pen_width: int) -> Image.Image:
    return rasterize(strokes, size=CANVAS_SIZE, pen_width=pen_width)


def _dot(rng: np.random.Generator) -> Image.Image:
    x, y = rng.uniform(60, 220, size=2)
    return _strokes([[(x, y)]], int(rng.integers(8, 41)))


def _dash(rng: np.random.Generator) -> Image.Image:
    length, angle = rng.uniform(60, 220), np.deg2rad(rng.uniform(-20, 20))
    cx, cy = rng.uniform(100, 180, size=2)
    dx, dy = length / 2 * np.cos(angle), length / 2 * np.sin(angle)
    return _strokes([[(cx - dx, cy - dy), (cx + dx, cy + dy)]], int(rng.integers(10, 37)))


def _scribble(rng: np.random.Generator) -> Image.Image:
    point = rng.uniform(100, 180, size=2)
    points = [(float(point[0]), float(point[1]))]
    for _ in range(int(rng.integers(2, 6))):
        point = point + rng.normal(0, 15, size=2)
        points.append((float(point[0]), float(point[1])))
    return _strokes([points], int(rng.integers(8, 31)))


def _noise(rng: np.random.Generator) -> Image.Image:
    density = rng.uniform(0.02, 0.5)
    return Image.fromarray(np.where(rng.random((CANVAS_SIZE, CANVAS_SIZE)) < density, 0, 255).astype(np.uint8))


def _two_digits(rng: np.random.Generator, digits: np.ndarray) -> Image.Image:
    first, second = rng.integers(0, len(digits), size=2)
    gap = np.zeros((SIZE, int(rng.integers(0, 8))), dtype=np.uint8)
    return Image.fromarray(np.concatenate([digits[first], gap, digits[second]], axis=1).astype(np.uint8))
