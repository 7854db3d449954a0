"""Training runs as records, and the results table (docs/results.md) generated from them.

One JSON file per run (``build/results/<recipe>-seed<N>.json``, written by ``train --record RECIPE``)
holds what is needed to repeat and to judge it: the command, the settings and seed, the validation
accuracy after each epoch, the seconds, the machine, the versions and the date, and the final
validation and test accuracy of the saved checkpoint. Every final figure comes from one evaluation
path, :func:`checkpoint_accuracy`: the saved checkpoint, in fp32, on the run's own validation split and
on the test set. ``python -m digitlib results`` prints the table from the files (``--readme
docs/results.md`` writes it there), so the published table cannot drift from its runs; choices
between recipes rest on the validation columns, never the test.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import QUICK_TEST_IMAGES

#: The record fields the table reads (a file without them is refused by :func:`load_records`).
RECORD_KEYS = ("recipe", "command", "settings", "seed", "val_accuracy_per_epoch", "val_accuracy", "test_accuracy",
               "seconds", "machine", "torch", "date")


def results_dir() -> Path:
    """Where records go: ``$DIGITLIB_RESULTS``, else ``build/results/`` at the repository root."""
    from .config import repo_root

    return Path(os.environ.get("DIGITLIB_RESULTS") or repo_root() / "build" / "results")


def machine() -> str:
    """The CPU's model name and core count (from /proc/cpuinfo on Linux, else ``platform``)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            name = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def checkpoint_accuracy(path: str | os.PathLike, shifts: Sequence[tuple[int, int]] = ((0, 0),)) -> dict[str, float]:
    """{"val_accuracy", "test_accuracy"} of the checkpoint at ``path``: fp32 on the CPU, on the validation
    split of the split seed and data it records (the split it was chosen on) and on the test set, each image's
    probabilities averaged over ``shifts`` (``evaluation.predict_proba``)."""
    from .checkpoints import load_checkpoint, normalization
    from .data import dataset_of, load_splits, split_seed_of
    from .evaluation import make_test_loader, predict_proba

    model, info = load_checkpoint(path, device="cpu")
    limit = info.get("data", {}).get("train_limit")
    splits = load_splits(seed=split_seed_of(info), train_limit=limit,
                         test_limit=QUICK_TEST_IMAGES if limit else None,
                         dataset=dataset_of(info))
    mean, std = normalization(info, path)
    accuracy = {}
    for name, images, labels in (("val", splits.val_images, splits.val_labels),
                                 ("test", splits.test_images, splits.test_labels)):
        probabilities, _ = predict_proba(model, make_test_loader(images, labels, mean, std), "cpu", shifts)
        accuracy[f"{name}_accuracy"] = int((probabilities.argmax(1) == labels).sum()) / len(labels)
    return accuracy


def make_record(path: str | os.PathLike, recipe: str, command: Sequence[str]) -> dict:
    """The record of the finished run saved at ``path``, trained by ``command`` with recipe name ``recipe``."""
    import torch

    from .checkpoints import read_checkpoint

    info = read_checkpoint(path)
    history = info["history"]
    return {
        "recipe": recipe, "command": " ".join(command), "checkpoint": str(path), "settings": info.get("training", {}),
        "data": info.get("data", {}), "seed": info.get("seed"), "epochs": len(history["epoch"]),
        "best_epoch": info.get("best_epoch"), "val_accuracy_per_epoch": history["val_accuracy"],
        **({"raw_val_accuracy_per_epoch": history["raw_val_accuracy"]} if "raw_val_accuracy" in history else {}),
        **checkpoint_accuracy(path), "evaluation": "fp32, saved checkpoint, CPU",
        "seconds": sum(history["seconds"]), "seconds_per_epoch": history["seconds"],
        "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def ensemble_record(records: Sequence[dict]) -> dict:
    """The ensemble of the runs ``records`` (of one recipe or several): every run a member, with equal
    weight, the mean of their checkpoints' fp32 probabilities. Nothing is chosen, so nothing is chosen on
    the test set. Its validation accuracy is measured when every member held out the same images
    (:func:`shared_validation`); runs split with their own seeds have none.
    """
    return _ensemble(records, [1] * len(records), " ensemble", "+".join(_member(run, records) for run in records))


def chosen_ensemble_record(records: Sequence[dict]) -> dict:
    """The ensemble whose members and weights are chosen on validation, from the runs ``records``: greedy
    forward selection with replacement (Caruana et al., 2004). Starting from nothing, add the run whose
    addition most raises the ensemble's validation accuracy (ties: the lower log loss), as long as it raises it;
    a run added k times has weight k. The test accuracy is measured once, after the choice.

    Raises ValueError unless every run held out the same validation images.
    """
    import torch

    images, labels = shared_validation(records)
    candidates = [_probabilities(run, images, labels) for run in records]
    weights = [0] * len(records)
    best = (-1.0, -math.inf)  # (validation accuracy, minus log loss): higher is better
    for _ in range(2 * len(records)):  # enough for any member to be counted twice
        chosen_so_far = sum(w * p for w, p in zip(weights, candidates, strict=True))
        scores = []
        for candidate in candidates:
            mixed = (chosen_so_far + candidate) / (sum(weights) + 1)
            accuracy = float((mixed.argmax(1) == labels).float().mean())
            scores.append((accuracy, -float(torch.nn.functional.nll_loss(mixed.clamp_min(1e-12).log(), labels))))
        choice = max(range(len(scores)), key=scores.__getitem__)
        if scores[choice][0] <= best[0]:  # a member must raise the accuracy; the log loss only breaks ties
            break
        best, weights[choice] = scores[choice], weights[choice] + 1
    members = [run for run, weight in zip(records, weights, strict=True) if weight]
    chosen = [weight for weight in weights if weight]
    seeds = "+".join(f"{_member(run, records)}×{weight}" if weight > 1 else _member(run, records)
                     for run, weight in zip(members, chosen, strict=True))
    return _ensemble(members, chosen, " chosen on validation", seeds)


def _member(run: dict, runs: Sequence[dict]) -> str:
    """How an ensemble names the member ``run`` of ``runs``: its seed, or with runs of several recipes
    its checkpoint's name (``cnn-seed1``), since the seeds repeat."""
    several = len({other["recipe"] for other in runs}) > 1
    return Path(run["checkpoint"]).stem if several else str(run["seed"])


def shared_validation(records: Sequence[dict]):
    """(images, labels) of the validation split every run in ``records`` held out: the same dataset, split seed
    and training limit for all (``train --split-seed``). Raises ValueError when they differ: then each run
    was chosen on images that other runs trained on, and no validation figure of their ensemble is honest."""
    from .data import load_splits

    splits = {(data.get("dataset", "mnist"), data.get("split_seed", run["seed"]), data.get("train_limit"))
              for run in records for data in [run.get("data", {})]}
    if len(splits) != 1:
        raise ValueError("these runs held out different validation images (train them with one --split-seed): "
                         "an ensemble of them can only be measured on the test set")
    dataset, split_seed, limit = splits.pop()
    held_out = load_splits(seed=split_seed, train_limit=limit, test_limit=1, dataset=dataset)
    return held_out.val_images, held_out.val_labels


def _test_set(record: dict):
    from .data import load_dataset

    data = record.get("data", {})
    images, labels = load_dataset(data.get("dataset", "mnist"), train=False)
    if data.get("train_limit"):  # a quick run's test set, as checkpoint_accuracy measured its members on
        images, labels = images[:QUICK_TEST_IMAGES], labels[:QUICK_TEST_IMAGES]
    return images, labels


def _probabilities(run: dict, images, labels):
    """The fp32 probabilities of ``run``'s saved checkpoint for ``images``, on the CPU."""
    from .checkpoints import load_checkpoint, normalization
    from .evaluation import make_test_loader, predict_proba

    model, info = load_checkpoint(run["checkpoint"], device="cpu")
    mean, std = normalization(info, run["checkpoint"])
    return predict_proba(model, make_test_loader(images, labels, mean, std), "cpu")[0]


def _ensemble(members: Sequence[dict], weights: Sequence[int], suffix: str, seeds: str) -> dict:
    """The record of the weighted mean of ``members``' probabilities, on validation (if shared) and test."""
    import torch

    def accuracy(images, labels) -> float:
        mixed = sum(w * _probabilities(run, images, labels) for w, run in zip(weights, members, strict=True))
        return int((mixed.argmax(1) == labels).sum()) / len(labels)

    try:
        val_accuracy: float | None = accuracy(*shared_validation(members))
    except ValueError:
        val_accuracy = None
    recipes = "+".join(dict.fromkeys(run["recipe"] for run in members))
    epochs = sorted({run["settings"].get("epochs") for run in members}, key=lambda value: str(value).zfill(6))
    return {
        "recipe": f"{recipes}{suffix}", "kind": "ensemble",
        "members": [run["checkpoint"] for run in members], "weights": list(weights),
        "command": "python -m digitlib evaluate --model " + " ".join(run["checkpoint"] for run in members),
        # The members' epochs: "6/10" for an ensemble of two recipes.
        "settings": {**members[0]["settings"], "epochs": epochs[0] if len(epochs) == 1 else "/".join(map(str, epochs))},
        "data": members[0].get("data", {}), "seed": seeds,
        "val_accuracy_per_epoch": [], "val_accuracy": val_accuracy, "test_accuracy": accuracy(*_test_set(members[0])),
        "evaluation": "fp32, saved checkpoints, CPU, weighted mean of probabilities",
        "seconds": sum(run["seconds"] for run in members),
        "machine": machine(), "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def shifted_record(record: dict) -> dict:
    """``record``'s run measured again with test-time averaging over the image and its four 1-pixel shifts
    (``evaluation.SMALL_SHIFTS``): recipe "<recipe> + shifts", validation and test accuracy replaced."""
    from .evaluation import SMALL_SHIFTS

    accuracy = checkpoint_accuracy(record["checkpoint"], SMALL_SHIFTS)
    return {**record, "recipe": f"{record['recipe']} + shifts", **accuracy,
            "evaluation": "fp32, saved checkpoint, CPU, mean of probabilities over the image and its 1-pixel shifts",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def write_record(record: dict, folder: str | os.PathLike | None = None) -> Path:
    """Write ``record`` as ``<folder>/<recipe>-seed<seed>.json`` (default folder: :func:`results_dir`)."""
    path = Path(folder or results_dir()) / f"{record['recipe'].replace(' ', '-')}-seed{record['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_records(folder: str | os.PathLike | None = None) -> list[dict]:
    """Every record in ``folder`` (default: :func:`results_dir`), sorted by recipe and seed."""
    records = []
    for path in sorted(Path(folder or results_dir()).glob("*.json")):
        record = json.loads(path.read_text())
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"{path} is not a run record: {', '.join(missing)} missing")
        records.append(record)
    return sorted(records, key=lambda record: (record["recipe"], str(record["seed"])))


def _mean_std(values: Sequence[float | None]) -> str:
    """"mean ± sample standard deviation" in %, "—" when a value is missing (None or NaN)."""
    numbers = [value for value in values if value is not None and not math.isnan(value)]
    if len(numbers) < len(values):
        return "—"
    spread = f" ± {100 * statistics.stdev(numbers):.2f}" if len(numbers) > 1 else ""
    return f"{100 * statistics.mean(numbers):.2f}{spread}"


def results_table(records: Iterable[dict], recipes: Sequence[str] | None = None) -> str:
    """A Markdown table with one row per recipe: seeds, epochs, mean ± sample standard deviation over the
    seeds of the saved checkpoint's validation and test accuracy (%), of the best validation accuracy
    measured during training for the weights kept and, with an EMA, for the raw weights (the two compare
    the average with the weights it averages, on the same runs), the median seconds per epoch, and the
    command of the first seed. An ensemble's row shows its members' seeds and its test accuracy.
    """
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        grouped[record["recipe"]].append(record)
    lines = ["| recipe | seeds | epochs | validation % | test % | in training: kept | raw weights | s/epoch "
             "| command (first seed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for recipe in recipes or sorted(grouped):
        runs = grouped[recipe]
        epochs = sorted({run["settings"].get("epochs") for run in runs})
        per_epoch = statistics.median([s for run in runs for s in run.get("seconds_per_epoch", [])] or [math.nan])
        val, test = (_mean_std([run[f"{split}_accuracy"] for run in runs]) for split in ("val", "test"))
        kept, raw = (_mean_std([max(run.get(key) or [math.nan]) for run in runs])
                     for key in ("val_accuracy_per_epoch", "raw_val_accuracy_per_epoch"))
        lines.append(
            f"| {recipe} | {', '.join(str(run['seed']) for run in runs)} | {'/'.join(map(str, epochs))} "
            f"| {val} | {test} | {kept} | {raw} | {'—' if math.isnan(per_epoch) else f'{per_epoch:.0f}'} "
            f"| `{runs[0]['command']}` |"
        )
    return "\n".join(lines)


#: The lines between which ``results --readme`` writes the table.
BEGIN = "<!-- results table: written by `python -m digitlib results --readme docs/results.md` -->"
END = "<!-- end of results table -->"


def replace_table(text: str, table: str) -> str:
    """``text`` with the lines between :data:`BEGIN` and :data:`END` replaced by ``table``.

    Raises ValueError when the markers are missing or out of order.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN!r} ... {END!r} block to write the table into")
    return f"{text[:start + len(BEGIN)]}\n{table}\n{text[end:]}"
