"""Measuring trained models (notebook 05 and ``python -m digitlib evaluate``; ``predict`` picks its model here).

Everything starts from one pass over the test set, :func:`predict_proba`; the metrics, the
confusion matrix, the report and the gallery of mistakes are computed from its output, so a
model is run once however many views of its errors we take.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .runtime import batch_to, model_device, pick_device

if TYPE_CHECKING:  # pandas and scikit-learn load only when a table or a report is asked for
    import pandas as pd

CLASSES = tuple(range(10))


@torch.no_grad()
def predict_proba(
    model: nn.Module, loader, device: str | torch.device | None = None, shifts: Sequence[tuple[int, int]] = ((0, 0),)
):
    """Class probabilities (N, 10) and true labels (N,) for every batch of ``loader``, on the CPU.

    Runs on ``device`` (the model is moved there), by default where the model already is. Each
    probability is the mean over the images moved by ``shifts`` (rows, columns) pixels: by default
    the image itself; :data:`SMALL_SHIFTS` averages it with its four 1-pixel neighbours (test-time
    augmentation; the row or column that wraps around is background in MNIST's 4-pixel margin).
    """
    device = pick_device(device) if device is not None else model_device(model)
    model.to(device).eval()
    probabilities, labels = [], []
    for x, y in loader:
        x, _ = batch_to(x, y, device)
        views = [model(torch.roll(x, shift, dims=(2, 3)) if shift != (0, 0) else x).float().exp() for shift in shifts]
        probabilities.append(torch.stack(views).mean(dim=0).cpu())
        labels.append(y.cpu())
    return torch.cat(probabilities), torch.cat(labels)


#: The image and its four 1-pixel shifts, for :func:`predict_proba`'s test-time averaging.
SMALL_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def make_test_loader(images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, batch_size: int = 1000):
    """Batches of uint8 test ``images``, normalised with a checkpoint's training ``mean`` and ``std``."""
    from .loaders import DeviceLoader

    return DeviceLoader(images, labels, mean, std, batch_size)


def classification_metrics(probabilities, labels) -> dict:
    """Headline numbers from predicted probabilities (N, 10) and true labels (N,).

    ``loss`` is the mean negative log-likelihood, the quantity training minimised (a probability
    that underflowed to 0 counts as the smallest float32, so one hopeless mistake cannot make it
    infinite).
    """
    probabilities, labels = torch.as_tensor(probabilities), torch.as_tensor(labels)
    predictions = probabilities.argmax(dim=1)
    true_class = probabilities.gather(1, labels.view(-1, 1)).squeeze(1)
    correct = int((predictions == labels).sum())
    return {
        "n": len(labels),
        "correct": correct,
        "accuracy": correct / len(labels),
        "loss": float(-true_class.clamp_min(torch.finfo(torch.float32).tiny).log().mean()),
        "per_class_accuracy": per_class_accuracy(labels, predictions),
    }


def per_class_accuracy(labels, predictions, num_classes: int = 10) -> np.ndarray:
    """Accuracy on each true class: the confusion matrix's diagonal over its row sums."""
    matrix = confusion_matrix(labels, predictions, num_classes=num_classes)
    return matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)


def confusion_matrix(labels, predictions, normalize: str | None = None, num_classes: int = 10) -> np.ndarray:
    """scikit-learn's confusion matrix: row = true class, column = prediction.

    ``normalize="true"`` divides each row by its count, so a row shows where that class's images went.
    """
    from sklearn import metrics as sk_metrics

    return sk_metrics.confusion_matrix(
        np.asarray(labels), np.asarray(predictions), labels=range(num_classes), normalize=normalize
    )


def classification_report(labels, predictions, output_dict: bool = False, classes: Sequence[str] | None = None):
    """scikit-learn's precision/recall/F1 per class, as text (``output_dict=False``) or a dict.

    ``classes`` names the ten classes (``data.class_names("fashion")`` for Fashion-MNIST); digits by default.
    """
    from sklearn import metrics as sk_metrics

    names = [str(digit) for digit in CLASSES] if classes is None else list(classes)
    if len(names) != len(CLASSES):
        raise ValueError(f"classes names {len(names)} classes; the models have {len(CLASSES)}")
    return sk_metrics.classification_report(
        np.asarray(labels), np.asarray(predictions), labels=list(CLASSES),
        target_names=names, digits=4, output_dict=output_dict, zero_division=0,
    )


def most_confused(matrix: np.ndarray, top: int = 5) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells of a confusion matrix as (true, predicted, count).

    Only pairs that happened (count > 0); ties keep the order (true, predicted).
    """
    matrix = np.asarray(matrix)
    off_diagonal = [
        (true, predicted, int(matrix[true, predicted]))
        for true in range(matrix.shape[0]) for predicted in range(matrix.shape[1])
        if true != predicted and matrix[true, predicted] > 0
    ]
    return sorted(off_diagonal, key=lambda pair: -pair[2])[:top]


def misclassified(probabilities, labels) -> pd.DataFrame:
    """One row per mistake, most confident first.

    Columns: ``index`` (into the test set), ``true``, ``predicted`` and its ``probability``, the
    runner-up digit ``second`` and ``second_probability``, and the probability given to the
    true digit, ``true_probability``.
    """
    import pandas as pd

    probabilities, labels = torch.as_tensor(probabilities), torch.as_tensor(labels)
    top2 = probabilities.topk(2, dim=1)
    wrong = torch.nonzero(top2.indices[:, 0] != labels).squeeze(1)
    table = pd.DataFrame({
        "index": wrong.numpy(),
        "true": labels[wrong].numpy(),
        "predicted": top2.indices[wrong, 0].numpy(),
        "probability": top2.values[wrong, 0].numpy(),
        "second": top2.indices[wrong, 1].numpy(),
        "second_probability": top2.values[wrong, 1].numpy(),
        "true_probability": probabilities[wrong, labels[wrong]].numpy(),
    })
    return table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def average_probabilities(*probabilities) -> torch.Tensor:
    """A small ensemble: the mean of several models' probabilities for the same images."""
    return torch.stack([torch.as_tensor(p) for p in probabilities]).mean(dim=0)


def majority_vote(*probabilities) -> torch.Tensor:
    """Each image's most voted class among several models' predictions (N,).

    Every model votes for its most likely class; a tie goes to the tied class with the highest mean
    probability (adding half the mean probability, at most 0.5, can break ties but never outvote).
    """
    stacked = torch.stack([torch.as_tensor(p) for p in probabilities])  # (models, N, classes)
    votes = F.one_hot(stacked.argmax(dim=2), stacked.shape[2]).sum(dim=0).float()
    return (votes + stacked.mean(dim=0) / 2).argmax(dim=1)


# --- A drawing for timing and testing the one-picture path (inference.read_image) ----------------


def as_drawing(image, side: int = 280) -> Image.Image:
    """An MNIST digit (28, 28) as a user would give it: dark ink on white, RGB, ``side`` pixels wide.

    A realistic input for timing the whole path, and for testing that preprocessing undoes it.
    """
    grey = Image.fromarray(255 - np.asarray(image, dtype=np.uint8))
    return grey.resize((side, side), Image.Resampling.BILINEAR).convert("RGB")


# --- Which checkpoint to use -------------------------------------------------------------------


def file_size_mb(path: str | os.PathLike) -> float:
    """A file's size in megabytes (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6
