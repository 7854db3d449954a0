"""``digitlib.inference``: one picture read by one model or an ensemble, the path ``predict`` and the pad share."""

from __future__ import annotations

import numpy as np
import pytest

from digitlib import evaluation, inference
from digitlib.checkpoints import load_checkpoint, normalization
from digitlib.errors import ImageError


@pytest.fixture(scope="module")
def cnn(trained_checkpoints):
    model, info = load_checkpoint(trained_checkpoints["cnn"])
    return model, *normalization(info, "cnn")


def test_read_image_on_a_drawing(cnn, small_splits):
    model, mean, std = cnn
    loader = evaluation.make_test_loader(small_splits.test_images, small_splits.test_labels, mean, std)
    probabilities, labels = evaluation.predict_proba(model, loader, "cpu")
    index = int(probabilities.max(dim=1).values.argmax())  # the image the model is surest of
    top = inference.read_image([(model, mean, std)], evaluation.as_drawing(small_splits.test_images[index])).top(3)
    assert len(top) == 3 and len({digit for digit, _ in top}) == 3
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True) and sum(p for _, p in top) <= 1 + 1e-6
    assert top[0][0] == labels[index]


def test_an_ensemble_of_one_model_twice_reads_as_the_model(cnn, small_splits):
    model, mean, std = cnn
    drawing = evaluation.as_drawing(small_splits.test_images[3])
    single = inference.read_image([(model, mean, std)], drawing).top(3)
    ensemble = inference.read_image([(model, mean, std), (model, mean, std)], drawing).top(3)
    assert [d for d, _ in single] == [d for d, _ in ensemble]
    assert [p for _, p in single] == pytest.approx([p for _, p in ensemble], abs=1e-6)


def test_a_reading_says_its_digit_confidence_and_verdict():
    probabilities = np.full(10, 0.01, np.float32)
    probabilities[4] = 0.91
    seen = np.zeros((28, 28), np.float32)
    seen[4:24, 10:18] = 1.0  # taller than wide, a digit's share of ink
    reading = inference.Reading(probabilities, seen)
    assert (reading.digit, reading.confidence, reading.model) == (4, pytest.approx(0.91), "")
    assert reading.top(2) == [(4, pytest.approx(0.91)), (0, pytest.approx(0.01))]  # a tie keeps the lower digit
    assert not reading.verdict.rejected
    unsure = inference.Reading(np.full(10, 0.1, np.float32), seen, "CNN")
    assert unsure.verdict.rejected and unsure.verdict.reason.startswith("unsure") and unsure.model == "CNN"


def test_read_image_refuses_no_members_and_blank_pictures(cnn):
    with pytest.raises(ValueError, match="at least one"):
        inference.read_image([], np.ones((28, 28), np.float32))
    with pytest.raises(ImageError, match="blank"):
        inference.read_image([cnn], np.zeros((28, 28), np.float32))
