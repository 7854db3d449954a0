"""The drawing pad without a browser: strokes in, predictions out, through its public methods."""

from __future__ import annotations

import shutil

import ipycanvas.canvas
import numpy as np
import pytest

import digitlib as dl
from digitlib.drawing import AVERAGE, DrawingPad, PadModel


def ellipse(cx, cy, rx, ry, points=40):
    """A closed loop drawn clockwise from the top, as a hand draws a 0."""
    angles = np.linspace(0, 2 * np.pi, points)
    return [(cx + rx * np.sin(a), cy - ry * np.cos(a)) for a in angles]


# Digits as a mouse would draw them on the 280x280 pad: lists of strokes, each a list of (x, y).
STROKES = {
    1: [[(150, 40), (146, 140), (140, 245)]],
    7: [[(75, 55), (205, 55), (170, 130), (130, 245)]],
    0: [ellipse(140, 140, 65, 100)],
}


@pytest.fixture(scope="module")
def models(trained_checkpoints):
    loaded = {}
    for name, arch in (("CNN", "cnn"), ("ResNet", "resnet")):
        model, info = dl.checkpoints.load_checkpoint(trained_checkpoints[arch], device="cpu")
        loaded[name] = PadModel(model, info["normalization"]["mean"], info["normalization"]["std"])
    return loaded


@pytest.fixture
def pad(models):
    return DrawingPad(models)


@pytest.mark.parametrize("choice", ["CNN", "ResNet", AVERAGE])
@pytest.mark.parametrize("digit", sorted(STROKES))
def test_drawn_digits_are_read(pad, digit, choice):
    pad.model_selector.value = choice
    prediction = pad.draw_strokes(STROKES[digit])
    assert prediction.digit == digit, f"read a drawn {digit} as {prediction.digit}: {prediction.probabilities.round(2)}"
    assert prediction.model == choice
    assert prediction.probabilities.shape == (10,) and prediction.probabilities.sum() == pytest.approx(1, abs=1e-4)
    assert f">{digit}<" in pad.digit_label.value
    assert pad.bars[digit].value == pytest.approx(prediction.confidence)


def test_empty_pad_predicts_nothing(pad):
    assert pad.predict() is None
    assert pad.pen_up(100, 100) is None  # a pen-up without a pen-down draws nothing
    assert pad.pen_move(100, 100) is None  # nor does hovering
    assert pad.strokes == [] and pad.prediction is None
    assert "draw a digit" in pad.digit_label.value
    assert all(bar.value == 0 for bar in pad.bars)


def test_clear_resets_everything(pad):
    assert pad.draw_strokes(STROKES[7]) is not None
    assert pad.clear() is None
    assert pad.strokes == [] and pad.prediction is None and pad.predict() is None
    assert np.asarray(pad.raster).min() == 255  # white paper again
    assert "draw a digit" in pad.digit_label.value
    assert pad.draw_strokes(STROKES[1]).digit == 1  # and the pad still works


def test_strokes_off_the_canvas_are_clipped(pad):
    start = pad.pen_down(-40, 140)
    pad.pen_move(600, 150)
    prediction = pad.pen_up(140, -1e6)
    assert start == (0.0, 140.0)
    assert pad.strokes == [[(0.0, 140.0), (280.0, 150.0), (140.0, 0.0)]]
    assert prediction is not None
    ink = np.asarray(pad.raster) < 128
    assert ink[:, 0].any() and ink[:, -1].any() and ink[0].any()  # the ink runs to the edges


def test_the_model_sees_to_mnist_of_the_pads_raster(pad):
    prediction = pad.draw_strokes(STROKES[7])
    np.testing.assert_allclose(prediction.image, dl.preprocess.to_mnist(pad.raster), atol=1e-6)
    # The raster built segment by segment is the one the finished strokes make.
    np.testing.assert_array_equal(np.asarray(pad.raster), np.asarray(dl.pen.rasterize(pad.strokes)))


def test_average_is_the_mean_of_the_models(pad):
    pad.draw_strokes(STROKES[0])
    each = []
    for name in ("CNN", "ResNet"):
        pad.model_selector.value = name  # switching the model reads the drawing again
        assert pad.prediction.model == name
        each.append(pad.prediction.probabilities)
    pad.model_selector.value = AVERAGE
    np.testing.assert_allclose(pad.prediction.probabilities, np.mean(each, axis=0), atol=1e-6)


def test_predictions_while_drawing_are_throttled(models):
    pad = DrawingPad(models, predict_every=60)
    pad.pen_down(140, 40)
    moves = [pad.pen_move(140, y) for y in range(45, 240, 5)]
    assert sum(move is not None for move in moves) == 1  # the first move, then none for a minute
    assert pad.pen_up(140, 240).digit == 1  # pen-up always reads

    eager = DrawingPad(models, predict_every=0)
    eager.pen_down(140, 40)
    assert all(eager.pen_move(140, y) is not None for y in range(45, 240, 50))


@pytest.fixture
def sent_commands(monkeypatch):
    """Every batch of drawing commands the pad sends to the browser."""
    batches = []
    manager = ipycanvas.canvas._CANVAS_MANAGER
    monkeypatch.setattr(manager, "_send_custom", lambda command, buffers=[]: batches.append(command))
    return batches


def test_the_canvas_is_drawn_on_only_once_a_browser_is_ready(pad, sent_commands):
    pad.draw_strokes(STROKES[1])
    pad.clear()
    assert sent_commands == []  # a notebook executing under Voila: nothing to draw on yet

    pad.pen_down(140, 40)
    pad.canvas._handle_frontend_event(None, {"event": "client_ready"}, [])
    assert len(sent_commands) == 1  # styles, paper and the stroke so far, in one batch
    assert sent_commands[0][0][0] == ipycanvas.canvas.COMMANDS["switchCanvas"]
    for y in (100, 160, 240):
        pad.pen_move(140, y)
    assert len(sent_commands) == 4  # one small batch per new segment
    assert pad.pen_up(140, 240).digit == 1


def test_the_app_says_when_it_serves_stand_ins(models):
    assert dl.drawing.standin_notice(models) == ""
    header = dl.drawing.app(models).children[0].value
    assert "stand-in" not in header
    standin = {"CNN": models["CNN"]._replace(standin=True), "ResNet": models["ResNet"]}
    notice = dl.drawing.standin_notice(standin)
    assert notice.startswith("CNN: small stand-in trained on") and "`make models`" in notice
    header = dl.drawing.app(standin).children[0].value
    assert "CNN: small stand-in" in header and "<code>make models</code>" in header


def test_load_models_marks_stand_ins(monkeypatch, tmp_path, trained_checkpoints):
    """A missing model is trained as a small stand-in and flagged; a trained one is not."""
    monkeypatch.setenv("DIGITLIB_MODELS", str(tmp_path))
    shutil.copy(trained_checkpoints["cnn"], tmp_path / "cnn.pt")
    loaded = dl.drawing.load_models(("cnn", "resnet"), log=None, quick=False, epochs=1, train_limit=300)
    assert [entry.standin for entry in loaded.values()] == [False, True]
    assert (tmp_path / "standin" / "resnet.pt").exists() and not (tmp_path / "resnet.pt").exists()
