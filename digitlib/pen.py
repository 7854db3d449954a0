"""The pen: strokes (lists of points) to a picture, as the drawing pad makes it, without any widget.

The pad (``dl.drawing``) draws each new segment with :func:`draw_segment` while the mouse moves;
:func:`rasterize` draws finished strokes the same way, for tests, notebooks and the synthetic
non-digits of ``dl.confidence``, none of which needs a browser or ipywidgets.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

CANVAS_SIZE = 280  # ten screen pixels per MNIST pixel
# A digit drawn 200 px tall shrinks ten times to fit MNIST's 20 px box, so this pen becomes a
# 2.8 px stroke: about as thick as MNIST's (notebook 06 compares their ink).
PEN_WIDTH = 28

Point = tuple[float, float]


def draw_segment(draw: ImageDraw.ImageDraw, start: Point, end: Point, pen_width: int = PEN_WIDTH) -> None:
    """Ink from ``start`` to ``end`` and a round pen tip at ``end``: consecutive segments then join
    smoothly, like a canvas line with round caps and joins. ``start == end`` draws a dot."""
    if start != end:
        draw.line([start, end], fill=0, width=pen_width)
    radius = pen_width / 2
    x, y = end
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=0)


def rasterize(strokes: Sequence[Sequence[Point]], size: int = CANVAS_SIZE, pen_width: int = PEN_WIDTH) -> Image.Image:
    """Strokes (lists of (x, y) points) as a greyscale picture: black ink on white paper."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        previous = stroke[0]
        for point in stroke:
            draw_segment(draw, previous, point, pen_width)
            previous = point
    return image
