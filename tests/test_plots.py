"""digitlib.plots: each figure returns its Figure or Axes, drawn from the data given and laid out to be read."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import itertools  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import digitlib as dl  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def labelled_images():
    """Five images of each digit, every pixel of an image equal to 20 × its label: easy to trace."""
    labels = torch.arange(10).repeat_interleave(5)
    images = (labels * 20).to(torch.uint8)[:, None, None].expand(-1, 28, 28).clone()
    return images, labels


def _shown(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def _drawn(figure):
    """Draw ``figure`` (text sizes and legend positions exist only then) and return its renderer."""
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def test_image_grid_lays_out_titles_and_scales(labelled_images):
    images, _ = labelled_images
    figure = dl.plots.image_grid(images[:5], titles=list("abcde"), ncols=3)
    assert isinstance(figure, plt.Figure) and len(figure.axes) == 6
    assert [ax.get_title() for ax in figure.axes[:5]] == list("abcde")
    assert not figure.axes[5].axison and not figure.axes[5].images            # the spare cell stays empty
    assert all(ax.images[0].get_clim() == (0, 255) for ax in figure.axes[:5])  # uint8: one shared scale

    floats = dl.plots.image_grid(torch.rand(3, 1, 28, 28), ncols=10)             # (N, 1, H, W) works too
    assert len(floats.axes) == 3 and _shown(floats.axes[0]).shape == (28, 28)
    with pytest.raises(ValueError, match="3 images but 2 titles"):
        dl.plots.image_grid(torch.rand(3, 28, 28), titles=["a", "b"])


def test_sample_grid_puts_each_class_on_its_own_row(labelled_images):
    images, labels = labelled_images
    figure = dl.plots.sample_grid(images, labels, per_class=3, seed=0)
    assert len(figure.axes) == 30
    for index, ax in enumerate(figure.axes):
        digit = index // 3
        assert np.all(_shown(ax) == digit * 20), f"cell {index} shows another class"
    assert [figure.axes[row * 3].get_ylabel() for row in range(10)] == [str(digit) for digit in range(10)]


def test_class_balance_draws_each_splits_shares():
    train = torch.tensor([0] * 30 + [1] * 70)
    test = torch.tensor([0] * 5 + [1] * 5)
    ax = dl.plots.class_balance({"train": train, "test": test})
    heights = [list(container.datavalues) for container in ax.containers]
    assert heights[0][:2] == pytest.approx([30, 70]) and heights[1][:2] == pytest.approx([50, 50])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["train (100)", "test (10)"]


def test_class_balance_legend_covers_no_bar():
    # Balanced classes: every bar reaches the same height, so no corner inside the axes is free.
    labels = torch.arange(10).repeat(50)
    ax = dl.plots.class_balance({"train": labels, "validation": labels, "test": labels})
    renderer = _drawn(ax.figure)
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [bar for container in ax.containers for bar in container]
    assert len(bars) == 30
    assert not any(legend.overlaps(bar.get_window_extent(renderer)) for bar in bars)


def test_pixel_histogram_counts_every_pixel(labelled_images):
    images, _ = labelled_images          # a tenth of them (the 0s) are background only
    ax = dl.plots.pixel_histogram(images, bin_width=8)
    ink, zero = ax.patches[0], ax.patches[1]   # the steps for 1..255, then the bar for 0
    per_level, edges = ink.get_data().values, ink.get_data().edges
    assert edges[0] == 1 and edges[-1] == 256 and np.diff(edges).max() == 8
    # Pixels per grey level times the levels in each bin gives back every pixel.
    assert (per_level * np.diff(edges)).sum() + zero.get_height() == images.numel()
    assert zero.get_height() == 5 * 28 * 28          # the five images of 0s are background only
    # Level 20 (the 1s) lies in the bin 17..24: 5 images spread over its 8 levels.
    assert per_level[np.searchsorted(edges, 20, side="right") - 1] == pytest.approx(5 * 28 * 28 / 8)
    assert ax.get_yscale() == "log"
    assert ax.get_xlim()[0] < zero.get_x() < zero.get_x() + zero.get_width() < edges[0]  # off the y axis
    assert any("10.0% of all pixels" in text.get_text() for text in ax.texts)          # 5 of 50 images


def test_pixel_histogram_keeps_a_single_level_spike_small():
    # 1,000 pixels at every level 1..255, and 8 times as many at 128: binned, the spike is diluted.
    images = np.repeat(np.arange(1, 256, dtype=np.uint8), 1000)
    images = np.concatenate([images, np.full(7000, 128, np.uint8)]).reshape(1, -1)
    per_level = dl.plots.pixel_histogram(images, bin_width=8).patches[0].get_data().values
    assert per_level.max() / np.median(per_level) < 2       # unbinned it would be 8
def test_ink_by_class_draws_one_violin_per_digit(labelled_images):
    images, labels = labelled_images
    figure, ax = plt.subplots()
    assert dl.plots.ink_by_class(images, labels, ax=ax) is ax
    assert [tick.get_text() for tick in ax.get_xticklabels()] == [str(digit) for digit in range(10)]


def test_mean_digits_share_one_colour_scale(labelled_images):
    images, labels = labelled_images
    class_means = torch.stack([images[labels == digit].double().mean(dim=0) for digit in range(10)])
    figure = dl.plots.mean_digits(class_means)
    assert [ax.get_title() for ax in figure.axes] == [str(digit) for digit in range(10)]
    assert {ax.images[0].get_clim() for ax in figure.axes} == {(0, 180.0)}


def test_embedding_scatter_plots_the_points_and_names_each_cluster():
    points = np.array([[0.0, 0.0], [0.2, 0.1], [5.0, 5.0], [5.2, 4.9]])
    labels = np.array([3, 3, 8, 8])
    ax = dl.plots.embedding_scatter(points, labels, title="map")
    np.testing.assert_allclose(ax.collections[0].get_offsets(), points)
    names = {text.get_text(): text for text in ax.texts}
    assert names.keys() == {"3", "8"} and names["8"].xy == pytest.approx((5.1, 4.95))
    # Far apart, each label sits on its median, with no line to it.
    assert names["8"].get_position() == pytest.approx((5.1, 4.95)) and names["8"].arrow_patch is None
    assert ax.get_title() == "map"


def test_embedding_scatter_labels_do_not_overlap_and_stay_on_top():
    # Four clusters whose medians nearly coincide (like 4, 7 and 9 in PCA) and one far away.
    rng = np.random.default_rng(0)
    centres = {4: (0.0, 0.0), 7: (0.05, 0.02), 9: (0.02, 0.06), 5: (0.04, 0.04), 1: (10.0, 10.0)}
    labels = np.repeat(list(centres), 50)
    points = np.concatenate([rng.normal(centre, 1.0, size=(50, 2)) for centre in centres.values()])
    ax = dl.plots.embedding_scatter(points, labels)
    renderer = _drawn(ax.figure)
    # Text's own extent: an Annotation's would include the line to its median.
    boxes = {text.get_text(): Text.get_window_extent(text, renderer) for text in ax.texts}
    assert sorted(boxes) == ["1", "4", "5", "7", "9"]
    for first, second in itertools.combinations(boxes, 2):
        assert not boxes[first].overlaps(boxes[second]), (first, second)
    assert all(ax.bbox.contains(*box.p0) and ax.bbox.contains(*box.p1) for box in boxes.values())
    assert all(text.get_zorder() > ax.collections[0].get_zorder() for text in ax.texts)
    assert all(text.get_path_effects() for text in ax.texts)                # the white outline
    moved = {text.get_text() for text in ax.texts if text.arrow_patch is not None}
    assert "1" not in moved and len(moved) >= 3     # 4 labels on one spot: at least 3 had to move


def test_spread_labels_moves_only_what_is_crowded():
    anchors = np.array([[50.0, 50.0], [50.0, 50.0], [52.0, 49.0], [200.0, 200.0]])
    placed = dl.plots.spread_labels(anchors, min_distance=20, bounds=(0, 0, 300, 300))
    distances = np.hypot(*(placed[:, None] - placed[None]).transpose(2, 0, 1))
    assert distances[np.triu_indices(4, 1)].min() >= 20 - 1e-6
    assert placed[3] == pytest.approx(anchors[3])                           # alone: stays put
    assert np.abs(placed[:3] - anchors[:3]).max() < 40                      # crowded: moved a little
    np.testing.assert_array_equal(placed, dl.plots.spread_labels(anchors, 20, (0, 0, 300, 300)))  # repeatable
    corner = dl.plots.spread_labels(np.array([[-10.0, 5.0]]), 20, bounds=(0, 0, 300, 300))
    assert corner[0] == pytest.approx((0.0, 5.0))                          # kept inside the bounds


def test_per_class_bars_end_at_100_percent_and_share_a_range():
    strong = np.array([0.99, 1.0, 0.97, 0.98, 0.995, 0.99, 0.96, 0.98, 0.97, 0.99])
    weak = np.array([0.98, 0.99, 0.9, 0.95, 0.97, 0.93, 0.96, 0.95, 0.6, 0.85])
    shared = dl.plots.per_class_range(strong, weak)
    assert shared[1] == 1.0 and 0 <= shared[0] < 0.6
    figure, axes = plt.subplots(1, 2, sharey=True)
    for ax, values in zip(axes, (strong, weak), strict=True):
        dl.plots.per_class_bars(values, ax=ax, reference=float(values.mean()), ylim=shared)
    assert axes[0].get_ylim() == axes[1].get_ylim() == pytest.approx(shared)   # no tick past 100 %
    # On its own, a panel starts below its weakest class and still stops at 100 %.
    low, high = dl.plots.per_class_bars(strong).get_ylim()
    assert high == 1.0 and 0.9 < low < strong.min()
    bar_labels = [text.get_text() for text in axes[1].texts]
    assert "60.0%" in bar_labels and "100.0%" in [text.get_text() for text in axes[0].texts]


def test_per_class_bars_counts_are_not_capped():
    ax = dl.plots.per_class_bars([120, 80, 100], percent=False)
    low, high = ax.get_ylim()
    assert low < 80 and 120 < high < 130          # a little above the largest value, not at 1.0


def _confusion(normalised: bool) -> np.ndarray:
    counts = np.diag([97, 100, 95])
    counts[0, 2], counts[2, 1] = 3, 5              # two mistakes; the other off-diagonal cells are 0
    return counts / counts.sum(axis=1, keepdims=True) if normalised else counts


def test_confusion_heatmap_draws_the_diagonal_apart_and_leaves_zeros_blank():
    ax = dl.plots.confusion_heatmap(_confusion(normalised=True))
    mistakes, diagonal = ax.collections                       # two meshes: mistakes, then the diagonal
    assert mistakes.get_cmap().name != diagonal.get_cmap().name
    assert np.ma.getmaskarray(mistakes.get_array()).sum() == 3 + 4    # the diagonal and the 4 zeros
    assert mistakes.get_clim()[1] == pytest.approx(0.05)     # the scale ends at the largest mistake
    assert sorted(text.get_text() for text in ax.texts) == ["100.0%", "3.0%", "5.0%", "95.0%", "97.0%"]

    counts = dl.plots.confusion_heatmap(_confusion(normalised=False))
    assert sorted(text.get_text() for text in counts.texts) == ["100", "3", "5", "95", "97"]


def test_misclassified_gallery_shows_white_digits_on_black():
    import pandas as pd

    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 12:16] = 255                             # a white stroke on black
    mistakes = pd.DataFrame({"index": [2, 0], "true": [4, 7], "predicted": [9, 1], "probability": [0.9, 0.6],
                             "second": [4, 7], "second_probability": [0.1, 0.3]})
    figure = dl.plots.misclassified_gallery(images, mistakes, ncols=3)
    shown = [ax for ax in figure.axes if ax.images]
    assert len(shown) == 2 and shown[0].get_title().startswith("4 → 9")
    image = shown[0].images[0]
    assert image.get_cmap().name == "gray" and image.get_clim() == (0, 255)
    rgba = image.to_rgba(np.array([[0, 255]], np.uint8))[0]
    assert rgba[0, :3].max() < 0.05 and rgba[1, :3].min() > 0.95   # background black, ink white


def test_preprocessing_grid_writes_each_panels_value_range():
    ink = np.zeros((28, 28))
    ink[8:20, 12:16] = 1.0
    steps = {7: {"drawing": np.full((280, 280), 255, np.uint8), "centre of mass": ink,
                 "normalised": (ink - 0.13) / 0.31}}
    figure = dl.plots.preprocessing_grid(steps)
    assert [ax.get_title() for ax in figure.axes] == ["drawing\n280×280", "centre of mass\n28×28", "normalised\n28×28"]
    assert [ax.get_xlabel() for ax in figure.axes] == ["values 255 to 255", "values 0.00 to 1.00",
                                                       "values -0.42 to 2.81"]


def test_image_strip_separates_and_names_its_groups():
    seven = np.eye(28)
    ax = dl.plots.image_strip({"drawn": {"8 px": seven, "28 px": seven, "48 px": seven}, "MNIST": {"#0": seven}},
                              gap=0.6)
    lefts = [image.get_extent()[0] for image in ax.images]
    steps = np.diff(lefts)
    assert len(lefts) == 4 and steps[2] > steps[0] + 0.4       # the gap between groups is visibly wider
    texts = {text.get_text(): text.get_position() for text in ax.texts}
    assert {"drawn", "MNIST", "8 px", "28 px", "48 px", "#0"} == texts.keys()
    assert texts["MNIST"][0] == pytest.approx(lefts[3] + 0.5)  # centred over its own image
    assert all(image.get_clim() == (0.0, 1.0) for image in ax.images)


def test_augmentation_gallery_shows_the_original_first():
    original = np.zeros((28, 28), np.uint8)
    augmented = np.full((5, 28, 28), 99, np.uint8)
    figure = dl.plots.augmentation_gallery(original, augmented, ncols=3)
    assert len(figure.axes) == 6
    assert figure.axes[0].get_title() == "original" and np.all(_shown(figure.axes[0]) == 0)
    assert all(np.all(_shown(ax) == 99) for ax in figure.axes[1:])


def test_pad_still_shows_the_drawing_what_the_model_saw_and_the_ten_probabilities():
    from types import SimpleNamespace

    from PIL import Image

    raster = Image.new("L", (280, 280), 255)
    raster.paste(0, (130, 40, 150, 240))  # a 1
    probabilities = np.full(10, 0.01)
    probabilities[1] = 0.91
    seen = np.zeros((28, 28), np.float32)
    seen[4:24, 13:15] = 1.0
    prediction = dl.inference.Reading(probabilities, seen, "CNN")
    figure = dl.plots.pad_still(SimpleNamespace(raster=raster, prediction=prediction), note="CNN")
    drawing_ax, seen_ax, bars_ax = figure.axes
    assert _shown(drawing_ax).shape == (280, 280) and _shown(drawing_ax)[100, 140] == 0
    np.testing.assert_array_equal(_shown(seen_ax), seen)
    widths = [bar.get_width() for bar in bars_ax.patches]
    np.testing.assert_allclose(widths, probabilities)
    top = bars_ax.patches[1].get_facecolor()
    assert all(bar.get_facecolor() != top for index, bar in enumerate(bars_ax.patches) if index != 1)
    assert bars_ax.get_title() == "reads 1 (91% sure)"

    empty = dl.plots.pad_still(SimpleNamespace(raster=Image.new("L", (280, 280), 255), prediction=None))
    assert empty.axes[2].get_title() == "draw a digit" and not _shown(empty.axes[1]).any()
