"""digitlib.plots, notebook 01's figures: each returns its Figure or Axes, drawn from the data given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

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


def test_pixel_histogram_counts_every_pixel(labelled_images):
    images, _ = labelled_images
    ax = dl.plots.pixel_histogram(images)
    counts = ax.patches[0].get_data().values
    assert counts.sum() == images.numel() and counts[0] == 5 * 28 * 28 and counts[20] == 5 * 28 * 28
    assert ax.get_yscale() == "log"


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
    names = {text.get_text(): text.xy for text in ax.texts}
    assert names.keys() == {"3", "8"} and names["8"] == pytest.approx((5.1, 4.95))
    assert ax.get_title() == "map"


def test_augmentation_gallery_shows_the_original_first():
    original = np.zeros((28, 28), np.uint8)
    augmented = np.full((5, 28, 28), 99, np.uint8)
    figure = dl.plots.augmentation_gallery(original, augmented, ncols=3)
    assert len(figure.axes) == 6
    assert figure.axes[0].get_title() == "original" and np.all(_shown(figure.axes[0]) == 0)
    assert all(np.all(_shown(ax) == 99) for ax in figure.axes[1:])
