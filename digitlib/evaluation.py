"""Measuring trained models: predictions, per-class accuracy and more (notebook 04)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from .training import _to_device, pick_device


@torch.no_grad()
def predict_proba(model: nn.Module, loader, device: str | torch.device | None = None):
    """Class probabilities (N, 10) and true labels (N,) for every batch of ``loader``, on the CPU."""
    device = pick_device(device)
    model.to(device).eval()
    probabilities, labels = [], []
    for x, y in loader:
        x, _ = _to_device(x, y, device)
        probabilities.append(model(x).float().exp().cpu())
        labels.append(y)
    return torch.cat(probabilities), torch.cat(labels)


def per_class_accuracy(labels, predictions, num_classes: int = 10) -> np.ndarray:
    """Accuracy on each true class: the confusion matrix's diagonal over its row sums."""
    matrix = confusion_matrix(np.asarray(labels), np.asarray(predictions), labels=range(num_classes))
    return matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
