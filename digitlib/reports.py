"""What the command line prints: the reports of ``evaluate``, ``bench`` and ``export --compare``.

Each function returns its text (lines joined by newlines, without a final one) for the caller to print,
except :func:`print_timings`, which measures as it goes and prints each line to the stream it is given
as soon as it is measured. A report formats what the library measured; it decides nothing (which
checkpoint, how many images, how many repeats: the command's handler in ``cli`` does).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

import torch

from . import bench, data, evaluation
from .models import count_parameters

if TYPE_CHECKING:
    from .export import VariantMeasurement

#: The columns of ``bench``'s table, one row per timed configuration (:func:`bench_row`).
BENCH_COLUMNS = ("model", "device", "amp", "augment", "batch", "workers", "threads", "data s", "fwd+bwd s", "optim s",
                 "images/s", "s/epoch")


def count(number: int, noun: str) -> str:
    """``number`` of ``noun`` with thousands separators, the noun plural unless there is one: "2 threads"."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def metrics_report(metrics: dict, confused: list, dataset: str) -> str:
    """The numbers of one model or ensemble (``evaluation.classification_metrics``) and its most-confused
    pairs (``evaluation.most_confused``), classes named as ``dataset`` names them."""
    classes = data.class_names(dataset)
    # MNIST, the default, goes unsaid (as in train's first line); any other dataset is named.
    named = "" if dataset == "mnist" else f" ({data.dataset_info(dataset).title})"
    lines = [f"test images  {metrics['n']:,}{named}",
             f"accuracy     {metrics['accuracy']:.2%}  ({metrics['correct']:,} correct)",
             f"loss         {metrics['loss']:.4f}",
             "per-class accuracy"]
    width = max(len(name) for name in classes)
    if width < 8:  # digits: two rows of columns
        lines.append("  digit " + "".join(f"{name:>8}" for name in classes))
        lines.append("  acc   " + "".join(f"{accuracy:>8.2%}" for accuracy in metrics["per_class_accuracy"]))
    else:  # names like "T-shirt/top": one line each
        lines += [f"  {name:<{width}}  {accuracy:>7.2%}"
                  for name, accuracy in zip(classes, metrics["per_class_accuracy"], strict=True)]
    lines.append("most-confused pairs (true -> predicted: count)")
    lines += [f"  {classes[true]} -> {classes[predicted]}: {number}" for true, predicted, number in confused]
    if not confused:
        lines.append("  none: every image is right")
    return "\n".join(lines)


def model_report(path, model, info: dict, metrics: dict, probabilities, labels, top: int, dataset: str) -> str:
    """``evaluate``'s report of one checkpoint: what it is, then :func:`metrics_report` with its ``top``
    most-confused pairs."""
    matrix = evaluation.confusion_matrix(labels, probabilities.argmax(dim=1))
    # An ONNX file has no PyTorch parameters: its export recorded how many the network had.
    exported = info.get("export")
    number = count_parameters(model) or (exported.get("parameters") if isinstance(exported, dict) else None)
    heading = (f"{path}: {info['arch']}, {f'{number:,} parameters' if number else 'parameter count not recorded'}, "
               f"{info.get('epochs_completed', '?')} epochs (best {info.get('best_epoch', '?')})")
    return heading + "\n" + metrics_report(metrics, evaluation.most_confused(matrix, top), dataset)


def ensemble_report(members: list, labels, top: int, dataset: str) -> str:
    """``evaluate``'s report of several checkpoints, ``members`` as (path, model, info, normalisation,
    test probabilities): each member, their ensemble (mean of probabilities, majority vote), the mean's
    :func:`metrics_report` and the test images it still gets wrong."""
    classes = data.class_names(dataset)
    width = max([len(str(path)) for path, *_ in members] + [len("ensemble: mean of probabilities")])
    lines = [f"{'member':<{width}}  {'model':<7}{'accuracy':>9}{'errors':>8}{'loss':>9}"]
    for path, _, info, _, probabilities in members:
        metrics = evaluation.classification_metrics(probabilities, labels)
        errors = metrics["n"] - metrics["correct"]
        lines.append(f"{str(path):<{width}}  {info['arch']:<7}{metrics['accuracy']:>9.2%}{errors:>8,}"
                     f"{metrics['loss']:>9.4f}")
    average = evaluation.average_probabilities(*(member[-1] for member in members))
    votes = evaluation.majority_vote(*(member[-1] for member in members))
    vote_correct = int((votes == labels).sum())
    metrics = evaluation.classification_metrics(average, labels)
    lines.append(f"{'ensemble: mean of probabilities':<{width}}  {'':<7}{metrics['accuracy']:>9.2%}"
                 f"{metrics['n'] - metrics['correct']:>8,}{metrics['loss']:>9.4f}")
    lines.append(f"{'ensemble: majority vote':<{width}}  {'':<7}{vote_correct / len(labels):>9.2%}"
                 f"{len(labels) - vote_correct:>8,}")
    lines.append(f"\nthe mean of probabilities, on {metrics['n']:,} test images:")
    matrix = evaluation.confusion_matrix(labels, average.argmax(dim=1))
    lines.append(metrics_report(metrics, evaluation.most_confused(matrix, top), dataset))
    mistakes = evaluation.misclassified(average, labels)
    lines.append(f"test images it still gets wrong ({len(mistakes)}): index, true label -> prediction (probability)")
    lines += [f"  {row.index:>5}  {classes[row.true]} -> {classes[row.predicted]} ({row.probability:.0%})"
              for row in mistakes.itertuples()]
    return "\n".join(lines)


def print_timings(model, images, mean: float, std: float, repeats: int, dataset: str = "mnist",
                  file: TextIO | None = None) -> None:
    """Measure and print ``evaluate``'s CPU timings of ``model`` (moved to the CPU): the latency of one
    picture over ``repeats`` runs, then the throughput over ``images``, each line to ``file`` (default:
    standard output) as soon as it is measured.

    For MNIST the picture is what the pad and ``predict`` read: a large drawing of the first test image,
    cropped, scaled and centred. The digit preprocessing does not suit other pictures, so for another
    dataset it is one normalised 28x28 test image.
    """
    file = file or sys.stdout
    model = model.cpu()
    if dataset == "mnist":
        drawing = evaluation.as_drawing(images[0])
        latency = bench.single_image_latency(model, drawing, mean, std, repeats=repeats)
        what, steps = f"{drawing.width}x{drawing.height} drawing", "preprocessing"
    else:
        latency = bench.single_image_latency(model, images[:1], mean, std, repeats=repeats, prepare=data.normalize)
        what, steps = f"28x28 {data.dataset_info(dataset).title} test image", "normalising"
    print(f"latency      {latency['median_ms']:.2f} ms median, {latency['p90_ms']:.2f} ms 90th percentile for one "
          f"{what}: {steps} {latency['preprocess_ms']:.2f} ms + forward "
          f"{latency['forward_ms']:.2f} ms (CPU, {count(latency['threads'], 'thread')}, {repeats} runs)",
          file=file, flush=True)
    batches = data.normalize(images, mean, std)
    throughput = bench.batch_throughput(model, batches, batch_size=min(1000, len(batches)))
    print(f"throughput   {throughput['images_per_s']:,.0f} images/s (CPU forward pass, batches of "
          f"{throughput['batch_size']:,}, {count(torch.get_num_threads(), 'thread')})", file=file, flush=True)


def bench_header() -> str:
    """The heading line of ``bench``'s table: :data:`BENCH_COLUMNS`, right-aligned in columns of 9."""
    return _bench_line(BENCH_COLUMNS)


def bench_row(row: bench.EpochTiming) -> str:
    """One line of ``bench``'s table: a configuration, its seconds per part and its rate."""
    return _bench_line((row.model, row.device, row.amp, row.pipeline, row.batch_size, row.workers, row.threads,
                        f"{row.data_s:.2f}", f"{row.forward_backward_s:.2f}", f"{row.optimizer_s:.2f}",
                        f"{row.images_per_s:.0f}", f"{row.epoch_s:.1f}"))


def _bench_line(cells) -> str:
    return "  ".join(f"{cell:>9}" for cell in cells)


def time_to_accuracy_report(result: bench.TimeToAccuracy) -> str:
    """``bench``'s race: the CNN's validation accuracy after each epoch, and when it reached the target."""
    per_epoch = "  ".join(f"{accuracy:.2%}" for accuracy in result.val_accuracy_per_epoch)
    lines = [f"cnn validation accuracy after each epoch: {per_epoch}"]
    if result.seconds_to_target is None:
        lines.append(f"cnn did not reach {result.target:.1%} in {result.epochs} epochs ({result.total_s:.0f}s)")
    else:
        epochs = ", ".join(f"{seconds:.1f}" for seconds in result.seconds_per_epoch)
        lines.append(f"cnn reached {result.target:.1%} validation accuracy after {result.seconds_to_target:.1f}s of "
                     f"training (epochs of {epochs}s, validation included)")
    return "\n".join(lines)


def export_comparison(rows: list[VariantMeasurement], limit: int | None) -> str:
    """``export --compare``'s table (docs/results.md's): size, accuracy, agreement with fp32, latency and
    throughput of each variant, the speed-ups against the first row, and what was measured on
    ``limit`` test images (None: all)."""
    lines = [f"{'model':<7}{'variant':<19}{'size MB':>8}{'accuracy':>10}{'same as fp32':>13}{'latency ms':>11}"
             f"{'speed-up':>9}{'forward ms':>11}{'speed-up':>9}{'images/s':>10}"]
    lines += [f"{row.model:<7}{row.variant:<19}{row.size_mb:>8.1f}{row.accuracy:>10.2%}{row.agreement:>13.2%}"
              f"{row.latency_ms:>11.2f}{rows[0].latency_ms / row.latency_ms:>8.2f}x{row.forward_ms:>11.2f}"
              f"{rows[0].forward_ms / row.forward_ms:>8.2f}x{row.images_per_s:>10,.0f}" for row in rows]
    lines.append(f"{rows[0].model}: {limit or 'all'} test images; latency = preprocessing a 280x280 drawing + forward, "
                 "one thread, median of the best of 3 rounds (forward: that round's forward pass alone); "
                 "images/s = batches of 1,000, one thread, best round")
    return "\n".join(lines)
