"""A drawing pad for a notebook cell or a Voilà page: draw a digit, watch the models read it.

The pad keeps every stroke as a list of points in Python and rasterises them itself with PIL,
segment by segment as they arrive, instead of reading pixels back from the browser (that lags,
and hangs some front ends). The browser canvas only mirrors the strokes for the eye. Every
prediction goes through ``dl.inference.read_image``, the predict CLI's code path, and is an
``inference.Reading``.

``pen_down``, ``pen_move``, ``pen_up`` and ``clear`` are what the mouse calls; tests and notebook 06
call them too, so the whole path runs without a browser::

    pad = dl.drawing.DrawingPad(dl.drawing.load_models())
    pad                                  # shows it
    pad.draw_strokes([[(140, 40), (140, 240)]]).digit   # 1
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Callable, NamedTuple

import ipycanvas.canvas
import ipywidgets as widgets
import numpy as np
from ipycanvas import Canvas, hold_canvas
from PIL import Image, ImageDraw
from torch import nn

from .inference import Reading, read_image
from .pen import CANVAS_SIZE, PEN_WIDTH, Point, draw_segment
from .preprocess import SIZE

PREDICT_EVERY = 0.12  # seconds between predictions while the pen moves; pen-up always predicts
PAPER, INK = "white", "black"
AVERAGE = "average"  # selector value: mean of all models' probabilities
LABELS = {"cnn": "CNN", "resnet": "ResNet"}


class PadModel(NamedTuple):
    """A trained model, the normalisation it was trained with, and whether it is only a small stand-in."""

    model: nn.Module
    mean: float
    std: float
    standin: bool = False


def load_models(
    archs: Sequence[str] = ("cnn", "resnet"), log: Callable[[str], None] | None = print, **train_kwargs
) -> dict[str, PadModel]:
    """{"CNN": PadModel, "ResNet": PadModel}: each from ``dl.zoo.load_or_train`` (loads
    ``models_dir()/<arch>.pt``, or trains a small model there first and says so through ``log``)."""
    from .checkpoints import normalization
    from .zoo import load_or_train

    models = {}
    for arch in archs:
        model, info = load_or_train(arch, log=log, **train_kwargs)
        mean, std = normalization(info, f"the {arch} checkpoint")
        models[LABELS.get(arch, arch)] = PadModel(model, mean, std, bool(info.get("standin")))
    return models


def _png(image: np.ndarray, scale: int) -> bytes:
    """A float image in [0, 1] as PNG bytes, each pixel blown up to ``scale`` x ``scale``."""
    pixels = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    pixels.resize((image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST).save(buffer, "png")
    return buffer.getvalue()


class DrawingPad:
    """A canvas to draw a digit on, a Clear button, a model selector, and what the models read.

    ``models`` maps a name to ``(model, mean, std)`` (e.g. ``load_models()``); with more than one,
    the selector also offers their average. Display the pad by making it a cell's last expression.
    """

    def __init__(
        self,
        models: Mapping[str, PadModel | tuple[nn.Module, float, float]],
        pen_width: int = PEN_WIDTH,
        size: int = CANVAS_SIZE,
        predict_every: float = PREDICT_EVERY,
    ):
        if not models:
            raise ValueError("DrawingPad needs at least one model, e.g. DrawingPad(dl.drawing.load_models())")
        self.models = {name: PadModel(*entry) for name, entry in models.items()}
        for entry in self.models.values():
            entry.model.eval()
        self.pen_width, self.size, self.predict_every = pen_width, size, predict_every
        self.strokes: list[list[Point]] = []
        self.raster = Image.new("L", (size, size), 255)  # what the models read: the strokes, drawn by PIL
        self._pen = ImageDraw.Draw(self.raster)
        self.prediction: Reading | None = None
        self._pen_is_down = False
        self._client_ready = False  # no drawing commands before a browser listens (see _on_client_ready)
        self._last_prediction = -math.inf

        self.canvas = Canvas(
            width=size, height=size,
            layout=widgets.Layout(width=f"{size}px", height=f"{size}px", border="1px solid #888"),
        )
        options = [(name, name) for name in self.models]
        if len(self.models) > 1:
            options.append(("both (average)" if len(self.models) == 2 else "all (average)", AVERAGE))
        self.model_selector = widgets.ToggleButtons(
            options=options, value=options[-1][1], style={"button_width": "auto"}
        )
        self.clear_button = widgets.Button(description="Clear", icon="eraser", layout=widgets.Layout(width="80px"))
        self.digit_label = widgets.HTML(layout=widgets.Layout(height="110px")).add_class("digitlib-prediction")
        self.detail_label = widgets.HTML()
        self.image_view = widgets.Image(format="png", layout=widgets.Layout(width="112px", height="112px"))
        self.bars = [
            widgets.FloatProgress(min=0, max=1, description=str(digit), layout=widgets.Layout(width="190px"),
                                  style={"description_width": "1.2em"})
            for digit in range(10)
        ]
        self.percentages = [widgets.Label(layout=widgets.Layout(width="3.5em")) for _ in range(10)]
        self.widget = widgets.HBox(
            [
                widgets.VBox([self.canvas, widgets.HBox([self.clear_button, self.model_selector])]),
                widgets.VBox(
                    [
                        widgets.HBox([
                            widgets.VBox([self.digit_label, self.detail_label], layout=widgets.Layout(width="140px")),
                            widgets.VBox([widgets.HTML("<small>what the model saw</small>"), self.image_view]),
                        ]),
                        *(widgets.HBox([bar, label]) for bar, label in zip(self.bars, self.percentages, strict=True)),
                    ],
                    layout=widgets.Layout(margin="0 0 0 16px"),
                ),
            ]
        )
        self.canvas.on_client_ready(self._on_client_ready)
        self.canvas.on_mouse_down(self.pen_down)
        self.canvas.on_mouse_move(self.pen_move)
        self.canvas.on_mouse_up(self.pen_up)
        self.canvas.on_mouse_out(self._pen_left)
        self.canvas.on_touch_start(lambda touches: self.pen_down(*touches[0]))
        self.canvas.on_touch_move(lambda touches: self.pen_move(*touches[0]))
        self.canvas.on_touch_end(lambda touches: self._pen_left(*self._last_point()))
        self.clear_button.on_click(lambda _: self.clear())
        self.model_selector.observe(lambda _: self.predict(), names="value")
        self._show(None)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # The pen -------------------------------------------------------------------------------
    def pen_down(self, x: float, y: float) -> Point:
        """Start a stroke at (x, y), clipped to the canvas; returns the clipped point."""
        point = self._clip(x, y)
        self.strokes.append([point])
        self._pen_is_down = True
        draw_segment(self._pen, point, point, self.pen_width)
        if self._client_ready:
            with hold_canvas():
                self.canvas.fill_circle(*point, self.pen_width / 2)
        return point

    def pen_move(self, x: float, y: float) -> Reading | None:
        """Continue the stroke to (x, y). Returns a prediction when one was due (at most one every
        ``predict_every`` seconds), else None; moves with the pen up do nothing."""
        if not self._pen_is_down:
            return None
        self._extend(self._clip(x, y))
        if time.monotonic() - self._last_prediction >= self.predict_every:
            return self.predict()
        return None

    def pen_up(self, x: float, y: float) -> Reading | None:
        """End the stroke at (x, y) and read the drawing: the prediction, or None if the pad is empty."""
        if not self._pen_is_down:
            return self.prediction
        self._extend(self._clip(x, y))
        self._pen_is_down = False
        return self.predict()

    def clear(self) -> None:
        """Wipe the strokes, the raster, the canvas and the prediction."""
        self.strokes = []
        self._pen_is_down = False
        self.raster.paste(255, (0, 0, self.size, self.size))
        if self._client_ready:
            with hold_canvas():
                self._paint_paper()
        self.predict()

    def draw_strokes(self, strokes: Sequence[Sequence[Point]]) -> Reading | None:
        """Draw ``strokes`` (lists of (x, y) points) as the mouse would; returns the last prediction."""
        prediction = self.prediction
        for stroke in strokes:
            self.pen_down(*stroke[0])
            for point in stroke[1:-1]:
                self.pen_move(*point)
            prediction = self.pen_up(*stroke[-1])
        return prediction

    # Reading the drawing -----------------------------------------------------------------------
    def predict(self) -> Reading | None:
        """Read the drawing now with the selected model (or the average), show it, and return it;
        None for an empty pad, which then says "draw a digit"."""
        self._last_prediction = time.monotonic()
        self.prediction = self._read() if self.strokes else None
        self._show(self.prediction)
        return self.prediction

    def _read(self) -> Reading:
        """The raster read by the selected model, or by all of them (the mean of their probabilities)."""
        choice = self.model_selector.value
        names = list(self.models) if choice == AVERAGE else [choice]
        members = [(entry.model, entry.mean, entry.std) for entry in (self.models[name] for name in names)]
        return dataclasses.replace(read_image(members, self.raster), model=choice)

    # Screen ------------------------------------------------------------------------------------
    def _show(self, prediction: Reading | None) -> None:
        if prediction is None:
            self.digit_label.value = '<div style="color:#888;font-size:1.6em;padding-top:1.5em">draw a digit</div>'
            self.detail_label.value = ""
            image, probabilities = np.zeros((SIZE, SIZE), np.float32), np.zeros(10)
        else:
            verdict = prediction.verdict
            # A doubtful reading stays visible, greyed and questioned, instead of a confident wrong answer.
            doubt = ('<span style="font-size:56px">?</span>', "color:#aaa;") if verdict.rejected else ("", "")
            self.digit_label.value = (
                f'<div style="font-size:88px;font-weight:bold;line-height:100px;{doubt[1]}">'
                f"<span>{prediction.digit}</span>{doubt[0]}</div>"
            )
            self.detail_label.value = (
                f"<b>not sure this is a digit</b><br><small>{verdict.reason}</small>" if verdict.rejected
                else f"{prediction.confidence:.0%} sure"
            )
            image, probabilities = prediction.image, prediction.probabilities
        self.image_view.value = _png(image, scale=4)
        top = int(probabilities.argmax()) if prediction is not None else -1
        for digit, (bar, label) in enumerate(zip(self.bars, self.percentages, strict=True)):
            bar.value = float(probabilities[digit])
            bar.bar_style = "success" if digit == top else ""
            label.value = f"{probabilities[digit]:.0%}" if prediction is not None else ""

    def _on_client_ready(self) -> None:
        """A browser shows the canvas: set the pen, paint the paper and redraw the strokes so far.

        Nothing is drawn before this: ipycanvas sends commands through one shared manager that
        names the target canvas only when it changes. A command sent while a notebook executes
        under Voilà (no browser yet) uses up that "switch to this canvas", and the page's manager
        then throws on every stroke (ipycanvas 0.14 / Voilà 0.5); a reloaded JupyterLab page too.
        Forgetting the current canvas makes the next batch name it again.
        """
        self._client_ready = True
        ipycanvas.canvas._CANVAS_MANAGER._current_canvas = None
        with hold_canvas():
            self.canvas.line_width = self.pen_width
            self.canvas.line_cap = "round"
            self.canvas.line_join = "round"
            self.canvas.stroke_style = INK
            self._paint_paper()
            for stroke in self.strokes:
                if len(stroke) > 1:
                    self.canvas.stroke_lines(stroke)
                self.canvas.fill_circle(*stroke[0], self.pen_width / 2)

    def _paint_paper(self) -> None:
        self.canvas.clear()
        self.canvas.fill_style = PAPER
        self.canvas.fill_rect(0, 0, self.size, self.size)
        self.canvas.fill_style = INK  # pen-down dots

    def _extend(self, point: Point) -> None:
        """Add ``point`` to the current stroke: one new segment on the raster and on screen."""
        stroke = self.strokes[-1]
        previous = stroke[-1]
        if point == previous:
            return
        stroke.append(point)
        draw_segment(self._pen, previous, point, self.pen_width)
        if self._client_ready:
            with hold_canvas():
                self.canvas.stroke_line(*previous, *point)

    def _pen_left(self, x: float, y: float) -> None:
        """The pen left the canvas (or the finger lifted): end the stroke where it left."""
        if self._pen_is_down:
            self.pen_up(x, y)

    def _last_point(self) -> Point:
        return self.strokes[-1][-1] if self.strokes else (0.0, 0.0)

    def _clip(self, x: float, y: float) -> Point:
        return (min(max(float(x), 0.0), float(self.size)), min(max(float(y), 0.0), float(self.size)))


APP_TITLE = "Handwritten digits"
APP_EXPLANATION = (
    "Draw a digit from 0 to 9 with the mouse: the models read it as you draw. The bars are their ten "
    "probabilities, the small picture is the 28×28 image they saw."
)


def standin_notice(models: Mapping[str, PadModel]) -> str:
    """One line naming the models that are small stand-ins and how to train the real ones ('' if none is)."""
    standins = [name for name, entry in models.items() if entry.standin]
    if not standins:
        return ""
    return (f"{' and '.join(standins)}: small stand-in{'s' if len(standins) > 1 else ''} trained on a few "
            "thousand images, which misread more drawings. Train the real models with `make models`, then "
            "reload this page.")


def app(models: Mapping[str, PadModel | tuple[nn.Module, float, float]]) -> widgets.VBox:
    """The drawing pad as a page of its own, what ``make app`` serves: a title, one line saying what
    to do, a line saying which models are stand-ins (if any are), and the pad (the same ``DrawingPad``
    as notebook 06, laid out to fit a 1280×800 window)."""
    pad = DrawingPad(models)  # its widgets' callbacks keep it alive as long as the page
    pad.canvas.layout.margin = "0 0 6px"  # air between the pad and its buttons
    notice = standin_notice(pad.models)
    notice_html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(notice))  # `make models` as code
    notice_html = f'<div class="digitlib-standin" style="color:#a15c00">{notice_html}</div>' if notice else ""
    header = widgets.HTML(
        f'<h2 style="margin:0 0 4px">{APP_TITLE}</h2><div style="color:#555">{APP_EXPLANATION}</div>{notice_html}',
        layout=widgets.Layout(margin="0 0 12px"),
    )
    return widgets.VBox([header, pad.widget], layout=widgets.Layout(padding="8px")).add_class("digitlib-app")
