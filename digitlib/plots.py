"""Figures the notebooks share. Each function returns what it drew: the Axes (new or given), or the
Figure for a grid of images, so notebooks and tests can assert on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import seaborn as sns

from .config import figures_dir


def save_figure(figure: plt.Figure, name: str) -> Path:
    """Save ``figure`` as ``<figures_dir>/<name>.png`` (build/figures by default); returns the path."""
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


# --- class names -----------------------------------------------------------------------------------
# Every function that labels classes takes ``classes``: the names in label order, e.g.
# ``dl.data.class_names("fashion")``. Without it the labels themselves are shown, as digits.


def _name(classes: Sequence[str] | None, label) -> str:
    """How label ``label`` is written: ``classes[label]``, or the label itself."""
    return str(label) if classes is None else str(classes[int(label)])


def _kind(classes: Sequence[str] | None) -> str:
    """What to call a class on an axis: "digit" for digits (no names, or names "0".."9"), else "class"."""
    return "digit" if classes is None or all(str(name).isdigit() for name in classes) else "class"


def _long(classes: Sequence[str] | None) -> bool:
    """Names too long to sit side by side under bars or columns without turning them."""
    return classes is not None and max(len(str(name)) for name in classes) > 3


def _turn_xticks(ax: plt.Axes, classes: Sequence[str] | None) -> None:
    if _long(classes):
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")


# --- notebook 01: looking at the data ----------------------------------------------------------


def _as_array(image) -> np.ndarray:
    """A torch tensor or array-like image as a 2-D numpy array (a leading channel of 1 dropped)."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return array.squeeze(0) if array.ndim == 3 and array.shape[0] == 1 else array


def image_grid(images, titles=None, ncols: int = 10, cmap: str = "gray", size: float = 1.1, **imshow) -> plt.Figure:
    """Small images in rows of ``ncols``, each with an optional title; returns the Figure.

    ``images`` is a sequence of (28, 28) arrays or tensors (a (N, 28, 28) or (N, 1, 28, 28) tensor
    works too). uint8 images share the 0..255 scale; other dtypes are scaled per image unless
    ``vmin``/``vmax`` are given. Axes keep no ticks but can still take a ``set_ylabel``.
    """
    images = [_as_array(image) for image in images]
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, -(-len(images) // ncols))
    row_height = size + (0.3 if titles is not None else 0)  # room for a title above each image
    figure, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, row_height * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(images):
            ax.set_axis_off()
            continue
        image = images[index]
        scale = {"vmin": 0, "vmax": 255} if image.dtype == np.uint8 else {}
        ax.imshow(image, cmap=cmap, **{**scale, **imshow})
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
    figure.tight_layout(pad=0.3)
    return figure


def sample_grid(images, labels, per_class: int = 8, seed: int = 0, classes: Sequence[str] | None = None) -> plt.Figure:
    """``per_class`` random examples of every class, one row per class, named by ``classes``; returns the Figure."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    chosen = [rng.choice(np.flatnonzero(labels == label), per_class, replace=False) for label in present]
    figure = image_grid([images[int(i)] for i in np.concatenate(chosen)], ncols=per_class)
    for row, label in enumerate(present):
        figure.axes[row * per_class].set_ylabel(_name(classes, label), rotation=0, labelpad=10, ha="right",
                                                fontsize=10 if _long(classes) else 12, va="center")
    return figure


def class_balance(labels_by_split: dict, ax: plt.Axes | None = None, classes: Sequence[str] | None = None) -> plt.Axes:
    """Share of each class (%) in every split, as grouped bars; returns the Axes.

    ``labels_by_split`` maps a split's name to its labels, e.g. ``{"train": ..., "test": ...}``;
    ``classes`` names the labels.
    """
    ax = ax or plt.subplots(figsize=(9, 3.5))[1]
    names, shares, splits = [], [], []
    for name, labels in labels_by_split.items():
        labels = np.asarray(labels)
        counts = np.bincount(labels, minlength=10 if classes is None else len(classes))
        names += [_name(classes, label) for label in range(len(counts))]
        shares += list(100 * counts / len(labels))
        splits += [f"{name} ({len(labels):,})"] * len(counts)
    sns.barplot(x=names, y=shares, hue=splits, ax=ax)
    ax.axhline(100 / 10, color="black", linewidth=0.8, linestyle="--")
    ax.set(xlabel=_kind(classes), ylabel="share of the split (%)", title="Class balance")
    _turn_xticks(ax, classes)
    # Outside, right of the axes: every digit has bars up to the top, so no corner inside is free.
    ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return ax


def pixel_histogram(images, ax: plt.Axes | None = None, bin_width: int = 8) -> plt.Axes:
    """How often the grey levels occur among the pixels, on a log scale; returns the Axes.

    Background (exactly 0) gets its own bar, labelled with its share of all pixels. Levels 1..255
    are grouped ``bin_width`` at a time and drawn as pixels *per grey level* (the bin's count over
    its width), so the last, narrower bin stays comparable and single levels that are far more
    common than their neighbours (MNIST has such spikes at 64, 128 and 191) do not dominate.
    """
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    counts = np.bincount(np.asarray(images, dtype=np.uint8).ravel(), minlength=256)
    edges = np.append(np.arange(1, 256, bin_width), 256)
    per_level = np.add.reduceat(counts[1:], edges[:-1] - 1) / np.diff(edges)
    ax.stairs(per_level, edges, fill=True, color="tab:blue")
    # Level 0 would be a 1-wide sliver on the y axis: it gets a bar of its own, left of the ink levels.
    zero_at = -bin_width / 2
    ax.bar(zero_at, counts[0], width=0.8 * bin_width, color="dimgray")
    ax.annotate(f"0 (background): {counts[0] / counts.sum():.1%} of all pixels", (zero_at, counts[0]),
                xytext=(10, -3), textcoords="offset points", va="top", fontsize=8)
    ax.set_xticks([zero_at, 50, 100, 150, 200, 250], ["0", "50", "100", "150", "200", "250"])
    ax.set(yscale="log", xlim=(-1.25 * bin_width, 256), ylabel="pixels per grey level",
           xlabel=f"pixel value (1..255 in bins of {bin_width} levels)",
           title=f"Pixel values of {len(images):,} images")
    return ax


def ink_by_class(images, labels, ax: plt.Axes | None = None, classes: Sequence[str] | None = None) -> plt.Axes:
    """Distribution of each image's mean pixel value (its "ink"), one violin per class; returns the Axes."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    images, labels = np.asarray(images), np.asarray(labels)
    ink = images.reshape(len(images), -1).mean(axis=1) / 255
    order = [_name(classes, label) for label in np.unique(labels)]
    sns.violinplot(x=[_name(classes, label) for label in labels], y=ink, order=order, ax=ax, color="tab:blue",
                   inner="quartile", cut=0)
    ax.set(xlabel=_kind(classes), ylabel="mean pixel value (0..1)", title="Ink per image")
    _turn_xticks(ax, classes)
    return ax


def mean_digits(class_means, ncols: int = 10, classes: Sequence[str] | None = None) -> plt.Figure:
    """The mean image of each class on one shared colour scale, titled by class; returns the Figure."""
    class_means = [_as_array(mean) for mean in class_means]
    top = max(float(mean.max()) for mean in class_means)
    return image_grid(class_means, [_name(classes, label) for label in range(len(class_means))], ncols,
                      cmap="magma", size=1.3, vmin=0, vmax=top)


def embedding_scatter(points, labels, ax: plt.Axes | None = None, title: str | None = None,
                      fontsize: float = 14, classes: Sequence[str] | None = None) -> plt.Axes:
    """A 2-D embedding coloured by class, each label written near its cluster's median; returns the Axes.

    Labels whose medians lie close together are pushed apart (:func:`spread_labels`) and joined
    to their median by a thin line; a white outline keeps them readable on top of the points.
    With ``classes`` the clusters still carry their label number (names would cover each other)
    and the legend says which class each number is.
    """
    from matplotlib import patheffects

    ax = ax or plt.subplots(figsize=(5.5, 5))[1]
    points, labels = np.asarray(points), np.asarray(labels)
    sns.scatterplot(x=points[:, 0], y=points[:, 1], hue=labels, palette="tab10", s=10, linewidth=0,
                    legend="full", ax=ax)
    ax.set(xticks=[], yticks=[], title=title)
    # Outside the axes, so it covers neither points nor labels.
    handles, legend_labels = ax.get_legend_handles_labels()
    if classes is not None:
        legend_labels = [f"{label}  {_name(classes, label)}" for label in legend_labels]
    ax.legend(handles, legend_labels, title=_kind(classes), fontsize=7, title_fontsize=8, markerscale=1.5,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.autoscale_view()  # the limits are final before the labels are placed in pixels
    digits = np.unique(labels)
    medians = np.array([np.median(points[labels == digit], axis=0) for digit in digits])
    em = fontsize * ax.figure.dpi / 72  # the font size in pixels
    to_pixels = ax.transData
    # A 1.4 em spacing leaves a gap between two 1-digit labels even if a layout shrinks the axes a little.
    placed = to_pixels.inverted().transform(
        spread_labels(to_pixels.transform(medians), 1.4 * em, ax.bbox.padded(-0.8 * em).extents))
    outline = [patheffects.withStroke(linewidth=3, foreground="white")]
    for digit, median, position in zip(digits, medians, placed, strict=True):
        moved = np.hypot(*(to_pixels.transform(position) - to_pixels.transform(median))) > 0.3 * em
        ax.annotate(str(digit), median, xytext=position, fontsize=fontsize, weight="bold", ha="center",
                    va="center", zorder=5, path_effects=outline,
                    arrowprops={"arrowstyle": "-", "color": "0.25", "linewidth": 0.8, "shrinkA": 0.6 * fontsize,
                                "shrinkB": 0} if moved else None)
    return ax


def spread_labels(anchors, min_distance: float, bounds, steps: int = 300) -> np.ndarray:
    """Positions near ``anchors`` (an (N, 2) array) at least ``min_distance`` apart, inside ``bounds``.

    ``bounds`` is ``(x0, y0, x1, y1)`` in the anchors' units (pixels, for labels). Each step pushes
    every pair that is too close apart along the line between them, half each way, until no pair
    is too close or ``steps`` run out; a label therefore moves no further than its neighbours need.
    """
    positions = np.array(anchors, dtype=float).reshape(-1, 2)
    low, high = np.asarray(bounds[:2], dtype=float), np.asarray(bounds[2:], dtype=float)
    positions = np.clip(positions, low, np.maximum(low, high))
    for _ in range(steps):
        crowded = False
        for first in range(len(positions)):
            for second in range(first + 1, len(positions)):
                offset = positions[second] - positions[first]
                distance = float(np.hypot(*offset))
                if distance >= min_distance:
                    continue
                crowded = True
                # Labels on the same spot split along a direction fixed by their index: deterministic.
                angle = first + second
                direction = offset / distance if distance > 1e-9 else np.array([np.cos(angle), np.sin(angle)])
                push = 0.51 * (min_distance - distance) * direction  # a hair over half: the pair ends apart
                positions[first] -= push
                positions[second] += push
        positions = np.clip(positions, low, np.maximum(low, high))
        if not crowded:
            break
    return positions


def augmentation_gallery(original, augmented, ncols: int = 8) -> plt.Figure:
    """The original image first, then its augmented draws, in rows of ``ncols``; returns the Figure."""
    augmented = list(augmented)
    titles = ["original"] + [f"draw {index}" for index in range(1, len(augmented) + 1)]
    figure = image_grid([original, *augmented], titles, ncols)
    for spine in figure.axes[0].spines.values():  # frame the original
        spine.set_visible(True)
        spine.set(color="tab:red", linewidth=2)
    return figure


# --- notebook 06: drawings -----------------------------------------------------------------------


def _value_range(image: np.ndarray) -> str:
    """``values 0 to 255`` for whole numbers, ``values -0.42 to 2.82`` otherwise."""
    low, high = image.min(), image.max()
    if np.issubdtype(image.dtype, np.integer):
        return f"values {low} to {high}"
    return f"values {low:.2f} to {high:.2f}"


def preprocessing_grid(steps: Mapping[Any, Mapping[str, Any]]) -> plt.Figure:
    """One row per drawing, one panel per preprocessing step; returns the Figure.

    ``steps`` maps each drawing to its ``{step name: image}``. Each panel is scaled to its own
    range (black its smallest value, white its largest), so a step that only shifts and scales
    the values, like normalisation, looks like the one before it: the value range written under
    every panel shows what changed.
    """
    rows = [{name: _as_array(image) for name, image in images.items()} for images in steps.values()]
    ncols = max(len(images) for images in rows)
    figure, axes = plt.subplots(len(rows), ncols, figsize=(2.15 * ncols, 2.5 * len(rows)), squeeze=False)
    for row_axes, images in zip(axes, rows, strict=True):
        for ax in row_axes[len(images):]:
            ax.set_axis_off()
        for ax, (name, image) in zip(row_axes, images.items(), strict=False):
            ax.imshow(image, cmap="gray")
            ax.set_title(f"{name}\n{image.shape[0]}×{image.shape[1]}", fontsize=9)
            ax.set_xlabel(_value_range(image), fontsize=8)  # not axis("off"): that would hide the label
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
    figure.tight_layout()
    return figure


def image_strip(groups: Mapping[str, Mapping[str, Any]], ax: plt.Axes | None = None, vmin: float = 0.0,
                vmax: float = 1.0, gap: float = 0.6) -> plt.Axes:
    """Small images in a row, in named groups; returns the Axes.

    ``groups`` maps a group's name (written above it) to its ``{caption: image}`` (each caption
    written under its image). Groups are ``gap`` image widths apart, images within a group a
    tenth of one, so the groups cannot be mistaken for one sequence. All images share the grey
    scale ``vmin``..``vmax``.
    """
    ax = ax or plt.subplots(figsize=(8, 1.8))[1]
    left = 0.0
    for group, images in groups.items():
        start = left
        for caption, image in images.items():
            ax.imshow(_as_array(image), cmap="gray", vmin=vmin, vmax=vmax, extent=(left, left + 1, 1, 0))
            ax.text(left + 0.5, 1.06, caption, ha="center", va="top", fontsize=8)
            left += 1.1
        ax.text((start + left - 0.1) / 2, -0.08, group, ha="center", va="bottom", fontsize=9)
        left += gap - 0.1
    ax.set(xlim=(-0.05, left - gap + 0.05), ylim=(1.35, -0.35), aspect="equal")
    ax.set_axis_off()
    return ax


# --- notebooks 03 and 04: training -------------------------------------------------------------


def training_curves(history: dict, title: str | None = None) -> plt.Figure:
    """Loss and accuracy per epoch, training against validation, side by side; returns the Figure.

    ``history`` is what :func:`digitlib.training.fit` returns (or a checkpoint's ``history``).
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    figure, (loss_ax, accuracy_ax) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for split, label, marker in (("train", "training", "o"), ("val", "validation", "s")):
        loss_ax.plot(history["epoch"], history[f"{split}_loss"], marker=marker, label=label)
        accuracy_ax.plot(history["epoch"], history[f"{split}_accuracy"], marker=marker, label=label)
    loss_ax.set(xlabel="epoch", ylabel="NLL loss (log scale)", title="Loss", yscale="log")
    # Plain numbers at 1, 2, 3 and 5 times a power of ten: readable, never crowded.
    plain = FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "1235" else "")
    loss_ax.yaxis.set_major_formatter(plain)
    loss_ax.yaxis.set_minor_formatter(plain)
    accuracy_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    accuracy_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    for ax in (loss_ax, accuracy_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return figure


def lr_schedule(learning_rates, steps_per_epoch: int | None = None, ax: plt.Axes | None = None,
                title: str = "Learning rate per optimizer step") -> plt.Axes:
    """The learning rate at every optimizer step; with ``steps_per_epoch`` the x axis counts epochs.

    ``learning_rates`` is e.g. :func:`digitlib.training.learning_rates`; returns the Axes.
    """
    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    rates = np.asarray(learning_rates, dtype=float)
    steps = np.arange(len(rates))
    x = steps / steps_per_epoch if steps_per_epoch else steps
    ax.plot(x, rates)
    peak = int(rates.argmax())
    ax.plot(x[peak], rates[peak], "o", color="tab:blue")
    ax.annotate(f"peak {rates[peak]:.1e}", (x[peak], rates[peak]), textcoords="offset points", xytext=(8, 4))
    ax.set(xlabel="epoch" if steps_per_epoch else "step", ylabel="learning rate", title=title,
           ylim=(0, 1.15 * rates.max()))
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    return ax


def per_class_range(*values, percent: bool = True) -> tuple[float, float]:
    """The y range :func:`per_class_bars` uses, over one or more arrays of per-class values.

    It starts one spread (largest minus smallest value) below the smallest value, so differences
    of a fraction of a percent stay visible, and never below 0 for non-negative values. With
    ``percent`` it ends at 100 %, the most a fraction can be; otherwise just above the largest
    value. Pass the values of every panel and give the result to each one as ``ylim``, so
    panels side by side compare at a glance.
    """
    every = np.concatenate([np.asarray(array, dtype=float).ravel() for array in values])
    smallest, largest = float(every.min()), float(every.max())
    span = max(largest - smallest, 0.01 if percent else 1e-9)
    low = smallest - span
    if smallest >= 0:
        low = max(low, 0.0)
    return low, (max(1.0, largest) if percent else largest + 0.05 * span)


def per_class_bars(values, title: str | None = None, ax: plt.Axes | None = None, ylabel: str = "accuracy",
                   class_names=None, percent: bool = True, reference: float | None = None,
                   reference_label: str = "overall", ylim: tuple[float, float] | None = None,
                   classes: Sequence[str] | None = None) -> plt.Axes:
    """One labelled bar per class (e.g. per-class accuracy), the weakest class highlighted; returns the Axes.

    With ``percent`` the values are fractions shown as percentages. The y axis is
    :func:`per_class_range` of ``values`` unless ``ylim`` is given (the same range for panels
    side by side); each bar carries its value, written inside its top so the axis can end at
    100 %. ``reference`` draws a dashed line, e.g. the overall accuracy. ``classes`` names the
    bars (``class_names`` is its older name).
    """
    from matplotlib.ticker import PercentFormatter

    ax = ax or plt.subplots(figsize=(8, 3.5))[1]
    values = np.asarray(values, dtype=float)
    classes = classes if classes is not None else class_names
    names = [str(name) for name in (classes if classes is not None else range(len(values)))]
    if len(names) != len(values):
        raise ValueError(f"{len(values)} values but {len(names)} class names")
    colors = ["tab:blue"] * len(values)
    colors[int(values.argmin())] = "tab:orange"
    bars = ax.bar(names, values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.1%}" if percent else f"{v:.3g}" for v in values], fontsize=7, padding=-10,
                 color="white")
    ax.set_ylim(ylim if ylim is not None else per_class_range(values, percent=percent))
    if reference is not None:
        # Behind the bars (zorder below theirs): it shows between them and never crosses a bar's label.
        ax.axhline(reference, color="black", linestyle="--", linewidth=0.9, zorder=0.5,
                   label=f"{reference_label} {reference:.2%}" if percent else f"{reference_label} {reference:.3g}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(xlabel="class", ylabel=ylabel, title=title)
    _turn_xticks(ax, classes)
    return ax


# --- Evaluation (notebook 05) -------------------------------------------------------------------


def confusion_heatmap(matrix, ax: plt.Axes | None = None, title: str | None = None,
                      classes: Sequence[str] | None = None) -> plt.Axes:
    """A confusion matrix (rows: true class, columns: prediction) as an annotated seaborn heatmap.

    Counts are written as whole numbers on one colour scale. A row-normalised matrix (floats) is
    written in percent, its diagonal (the correct answers) in neutral grey and its mistakes on a
    colour scale of their own that ends at the largest mistake, so a 1 % confusion shows instead
    of vanishing next to a 99 % diagonal. Cells that are exactly 0 stay blank in both. ``classes``
    names the rows and columns.
    """
    from matplotlib.colors import ListedColormap

    matrix = np.asarray(matrix)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5.5))
    normalised = np.issubdtype(matrix.dtype, np.floating)
    labels = np.vectorize(lambda value: f"{value:.1%}" if normalised else f"{value:d}")(matrix)
    names = [_name(classes, label) for label in range(matrix.shape[0])]
    common = {"ax": ax, "annot": labels, "fmt": "", "square": True, "cbar": False,
              "annot_kws": {"fontsize": 7 if normalised else 8}, "xticklabels": names, "yticklabels": names}
    diagonal = np.eye(*matrix.shape) > 0
    if normalised:
        mistakes = matrix[~diagonal]
        # seaborn writes no label in a masked cell: masking the zeros leaves them blank.
        sns.heatmap(matrix, mask=diagonal | (matrix == 0), cmap="Reds", vmin=0,
                    vmax=mistakes.max() if mistakes.max() > 0 else 1, **common)
        sns.heatmap(matrix, mask=~diagonal, cmap=ListedColormap(["#d9d9d9"]), **common)
    else:
        sns.heatmap(matrix, mask=matrix == 0, cmap="Blues", vmin=0, **common)
    ax.set(xlabel="predicted", ylabel="true", title=title or ("row-normalised" if normalised else "counts"))
    _turn_xticks(ax, classes)
    plt.setp(ax.get_yticklabels(), rotation=0)
    return ax


def misclassified_gallery(images, mistakes, ncols: int = 8, limit: int = 24,
                          classes: Sequence[str] | None = None) -> plt.Figure:
    """The first ``limit`` rows of :func:`digitlib.evaluation.misclassified` as a grid of images.

    Images are white on black like every other MNIST figure. Each title reads ``true → predicted``
    and the two most likely classes with their probabilities, named by ``classes`` (long names get
    wider cells and a line each).
    """
    rows = mistakes.head(limit)
    nrows = max(1, -(-len(rows) // ncols))
    long = _long(classes)
    width, height = (1.9, 2.05) if long else (1.45, 1.75)
    figure, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    # A grid has nrows * ncols cells, usually more than mistakes: the spare cells stay blank.
    for ax, row in zip(axes.flat, rows.itertuples(), strict=False):
        image = _as_array(images[row.index])
        scale = {"vmin": 0, "vmax": 255} if image.dtype == np.uint8 else {}
        ax.imshow(image, cmap="gray", **scale)
        true, predicted, second = (_name(classes, label) for label in (row.true, row.predicted, row.second))
        odds = (f"{predicted}: {row.probability:.0%}\n{second}: {row.second_probability:.0%}" if long
                else f"{predicted}: {row.probability:.0%}  {second}: {row.second_probability:.0%}")
        ax.set_title(f"{true} → {predicted}\n{odds}", fontsize=7.5 if long else 8, color="firebrick")
    return figure


def model_diagram(model, ax: plt.Axes | None = None, input_size=(1, 1, 28, 28)) -> plt.Axes:
    """A block diagram of ``model``, top to bottom, drawn from torchinfo's summary.

    One box per layer (a residual block is one box, its skip connection drawn beside it), with
    the layer, the output shape after it and its parameter count.
    """
    import torchinfo
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from torch import nn

    summary = torchinfo.summary(model, input_size=input_size, depth=10, verbose=0, device="cpu")
    units = _diagram_units(summary.summary_list)
    # (label, output shape, parameter count, module); the input row has no module.
    boxes: list[tuple[str, str, str, nn.Module | None]] = [("input", "x".join(map(str, input_size[1:])), "", None)]
    boxes += [(_layer_label(layer.module), "x".join(map(str, layer.output_size[1:])),
               f"{layer.num_params:,} params" if layer.num_params else "", layer.module) for layer in units]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.42 * len(boxes) + 0.6))
    colours = {"Conv2d": "#9ecae1", "Linear": "#fdae6b", "BasicBlock": "#a1d99b", "MaxPool2d": "#dadaeb",
               "AdaptiveAvgPool2d": "#dadaeb", "BatchNorm2d": "#fee391"}
    height, step = 0.62, 1.0
    for position, (label, shape, params, module) in enumerate(boxes):
        y = -position * step
        kind = type(module).__name__ if module is not None else "input"
        ax.add_patch(FancyBboxPatch((0, y - height / 2), 4.2, height, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=colours.get(kind, "#f0f0f0"), edgecolor="#555555", linewidth=0.8))
        ax.text(0.15, y, label, va="center", fontsize=8.5)
        ax.text(4.4, y, shape, va="center", fontsize=8.5, family="monospace")
        ax.text(6.3, y, params, va="center", fontsize=8, color="#555555")
        if position:
            ax.annotate("", xy=(2.1, y + height / 2), xytext=(2.1, y + step - height / 2),
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.8})
        shortcut = getattr(module, "shortcut", None)
        if isinstance(shortcut, nn.Module):
            projection = not isinstance(shortcut, nn.Identity)
            ax.add_patch(FancyArrowPatch((4.2, y + step - height / 2 + 0.05), (4.2, y), connectionstyle="arc3,rad=-0.9",
                                         arrowstyle="->", mutation_scale=8, color="#2b8cbe", lw=0.9))
            ax.text(3.55, y + 0.5 * step, "1x1 conv skip" if projection else "skip", fontsize=6.5, color="#2b8cbe",
                    ha="right", va="center")
    ax.text(4.4, step * 0.75, "output shape", fontsize=8, weight="bold")
    ax.text(6.3, step * 0.75, "parameters", fontsize=8, weight="bold")
    ax.set_xlim(-0.2, 8.2)
    ax.set_ylim(-(len(boxes) - 1) * step - 0.6, step * 1.2)
    ax.axis("off")
    ax.set_title(f"{type(model).__name__}: {summary.trainable_params:,} parameters", fontsize=10)
    return ax


def _diagram_units(layers) -> list:
    """The layers worth one box: every module that is not a container, without looking inside
    blocks (a residual block is one box)."""
    import torch.nn as nn

    def units_of(module):
        for child in module.children():
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                yield from units_of(child)
            else:
                yield child

    wanted = {id(module) for module in units_of(layers[0].module)}
    units, seen = [], set()
    for layer in layers[1:]:  # [0] is the model itself
        if id(layer.module) in wanted and id(layer.module) not in seen:
            units.append(layer)
            seen.add(id(layer.module))
    return units


def _layer_label(module) -> str:
    """A short description: Conv2d 5x5, 1→32 · MaxPool2d 2x2 · Linear 3136→1024 · Dropout 0.5."""
    from torch import nn

    name = type(module).__name__
    if isinstance(module, nn.Conv2d):
        kernel = "x".join(map(str, module.kernel_size))
        stride = f", stride {module.stride[0]}" if module.stride[0] > 1 else ""
        return f"{name} {kernel}, {module.in_channels}→{module.out_channels}{stride}"
    if isinstance(module, nn.Linear):
        return f"{name} {module.in_features}→{module.out_features}"
    if isinstance(module, nn.MaxPool2d):
        return f"{name} {module.kernel_size}x{module.kernel_size}"
    if isinstance(module, nn.Dropout):
        return f"{name} p={module.p}"
    if hasattr(module, "conv1") and hasattr(module, "shortcut"):
        return f"{name} {module.conv1.in_channels}→{module.conv2.out_channels}" + (
            f", stride {module.conv1.stride[0]}" if module.conv1.stride[0] > 1 else "")
    return name


# --- notebook 08: how far to trust a prediction -------------------------------------------------


def reliability_diagram(bins, ax: plt.Axes | None = None, title: str | None = None) -> plt.Axes:
    """Accuracy against confidence per bin (``dl.confidence.reliability``'s result), with the diagonal a
    calibrated model would follow; each bar is labelled with its number of predictions, because with
    a 99 % accurate model nearly all of them sit in the last bin and the others rest on a few images."""
    ax = ax if ax is not None else plt.subplots(figsize=(4.2, 4))[1]
    lower, width = bins.edges[:-1], np.diff(bins.edges)
    filled = bins.counts > 0
    ax.bar(lower[filled], bins.accuracy[filled], width=width[filled], align="edge", color="#4c72b0",
           edgecolor="white", label="accuracy")
    ax.bar(lower[filled], bins.confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled],
           width=width[filled], align="edge", color="#dd8452", alpha=0.45, label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="calibrated")
    for left, step, count, accuracy in zip(lower[filled], width[filled], bins.counts[filled],
                                          bins.accuracy[filled], strict=True):
        ax.text(left + step / 2, min(accuracy, 0.9) + 0.03, f"{count:,}", ha="center", fontsize=7, rotation=90)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (top probability)", ylabel="accuracy",
           title=title or f"ECE {bins.ece:.2%}")
    ax.legend(loc="upper left", fontsize=8)
    return ax


# --- notebook 05: the drawing pad, still -----------------------------------------------------------


def pad_still(pad, note: str | None = None) -> plt.Figure:
    """A picture of a ``dl.drawing.DrawingPad`` as it stands: the drawing, the digit read with its
    confidence, the 28×28 image the model saw and the ten probabilities; for pages that cannot run
    the live widget (the book). ``note`` goes under it (which models read the drawing, say)."""
    prediction = pad.prediction
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    # w_pad: air between the 28×28 view and the digits' labels
    figure = plt.figure(figsize=(8.8, 2.9), layout=ConstrainedLayoutEngine(w_pad=0.12))
    drawing_ax, seen_ax, bars_ax = figure.subplots(1, 3, width_ratios=[1, 0.62, 1.1])
    drawing_ax.imshow(np.asarray(pad.raster), cmap="gray", vmin=0, vmax=255)
    drawing_ax.set_title("drawn on the pad", fontsize=10)
    seen = prediction.image if prediction is not None else np.zeros((28, 28))
    seen_ax.imshow(seen, cmap="gray", vmin=0, vmax=1)
    seen_ax.set_title("what the model saw (28×28)", fontsize=10)
    for ax in (drawing_ax, seen_ax):
        ax.set(xticks=[], yticks=[])
        for spine in ax.spines.values():
            spine.set_edgecolor("#888")
    probabilities = prediction.probabilities if prediction is not None else np.zeros(10)
    top = int(probabilities.argmax()) if prediction is not None else -1
    bars_ax.barh(range(10), probabilities, color=["#2e9d4f" if digit == top else "#9ab" for digit in range(10)])
    bars_ax.set(yticks=range(10), xlim=(0, 1), ylim=(9.6, -0.6), xlabel="probability")
    bars_ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    bars_ax.set_title(f"reads {prediction.digit} ({prediction.confidence:.0%} sure)" if prediction is not None
                      else "draw a digit", fontsize=11, fontweight="bold")
    if note:
        figure.supxlabel(note, fontsize=8, color="#555")
    return figure
