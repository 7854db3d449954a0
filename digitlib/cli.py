"""``python -m digitlib``: data, train, bench, evaluate and predict.

Expected failures (missing data, a bad checkpoint, an unreadable image) print one line on
stderr and exit with status 2; argparse reports bad flags itself. Ctrl-C exits with 130.

Only the command that runs imports torch and the rest, so ``--help`` answers at once. This module
holds the parsers (an option that several commands take is defined once, in ``SHARED_OPTIONS``) and
the handlers; what ``evaluate``, ``bench`` and ``export --compare`` print is formatted in ``reports``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__
from .config import (
    DATASET_NAMES,
    FULL_RUNS,
    QUICK_TEST_IMAGES,
    QUICK_TRAIN_IMAGES,
    REFERENCE_BATCH_SIZE,
    START_LR,
    TrainConfig,
    model_set_paths,
    run_config,
    smoke_test,
)
from .errors import DigitlibError

ARCHITECTURES = tuple(FULL_RUNS)  # cnn, resnet
AUGMENT_CHOICES = ("device", "albumentations", "none")


def _add_data_command(commands) -> None:
    parser = commands.add_parser("data", help="make MNIST (or Fashion-MNIST) ready in the data folder")
    _add_shared(parser, "dataset", "one or more datasets to make ready: ", many=True)
    parser.add_argument(
        "--source", type=Path, default=None,
        help="folder holding the dataset's four original .gz files to copy (default: ../shared/mnist for MNIST, "
        "/usr/share/datasets/fashion-mnist from Debian's package dataset-fashion-mnist for Fashion-MNIST, if the "
        "folder exists; else torchvision downloads them)",
    )
    parser.set_defaults(handler=_data)


def _data(args) -> int:
    from . import data

    names = list(dict.fromkeys(args.dataset))
    if args.source is not None and len(names) > 1:
        raise DigitlibError("--source is the folder of one dataset: give a single --dataset with it")
    for name in names:
        info = data.dataset_info(name)
        source = args.source or (info.local_copy if info.local_copy.is_dir() else None)
        folder = data.prepare(source, dataset=name)
        print(f"{info.title} ready in {folder}" + (f" (copied from {source})" if source else ""), flush=True)
    return 0


def _add_train_command(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a model and save a checkpoint",
        description="Train DigitCNN or DigitResNet on the 80 % training split, keep the best epoch by "
        "validation accuracy, report test accuracy, and save a checkpoint. An existing checkpoint is "
        "never replaced unless you pass --force.",
    )
    per_model_peak = ", ".join(f"{run.max_lr:g} for {arch}" for arch, run in FULL_RUNS.items())
    parser.add_argument("--model", choices=ARCHITECTURES, default="cnn", help="architecture (default: %(default)s)")
    _add_shared(parser, "dataset", "what to train on: ")
    _add_shared(parser, "epochs")
    parser.add_argument("--batch-size", type=_positive_int, default=REFERENCE_BATCH_SIZE,
                        help="training batch size (default: %(default)s)")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help=f"AdamW's initial learning rate, where the one-cycle schedule starts (default: "
                        f"{START_LR:g} at batch size {REFERENCE_BATCH_SIZE}, scaled like --max-lr)")
    parser.add_argument("--max-lr", type=_positive_float, default=None,
                        help=f"OneCycleLR's peak learning rate (default: {per_model_peak} at batch size "
                        f"{REFERENCE_BATCH_SIZE}, scaled by the square root of --batch-size / {REFERENCE_BATCH_SIZE})")
    parser.add_argument("--weight-decay", type=_non_negative_float, default=TrainConfig.weight_decay,
                        help="AdamW's weight decay (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=_smoothing, default=None,
                        help="label smoothing of the loss, from 0 (none) to below 1 (default: "
                        f"{_per_model('label_smoothing')})")
    parser.add_argument("--ema-decay", type=_ema_decay, default=None,
                        help="decay of an exponential moving average of the weights, which is then what is "
                        f"validated and saved; 0: no average (default: {_per_model('ema_decay')}; none with --limit "
                        "or in smoke mode)")
    _add_shared(parser, "amp")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initialisation, shuffling, augmentation (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the 80/20 training/validation split; the same for every --seed, so that "
                        "the seeds' models can be compared and ensembled on one validation set (default: %(default)s)")
    _add_shared(parser, "device")
    _add_shared(parser, "augment", "how to augment the training images: ")
    _add_shared(parser, "workers")
    _add_shared(parser, "train-limit")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint path: a new or regular file (default: models/<model>.pt, or "
                        "models/quick/<model>.pt with --limit or fewer --epochs than the full run; "
                        "models/fashion/<model>.pt and models/fashion/quick/<model>.pt with --dataset fashion)")
    parser.add_argument("--force", action="store_true", help="replace the checkpoint at --out if there is one")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from --out, with the same flags")
    parser.add_argument("--record", metavar="RECIPE", default=None,
                        help="when done, write the run's settings and results to build/results/RECIPE-seed<N>.json "
                        "(`python -m digitlib results` makes the results table from these files)")
    parser.set_defaults(handler=_train)


def _per_model(setting: str) -> str:
    """The full runs' value of ``setting``, per architecture, for --help."""
    return ", ".join(f"{getattr(run, setting) or 0:g} for {arch}" for arch, run in FULL_RUNS.items())


@dataclass(frozen=True)
class _Job:
    """One model to train: what ``train`` parses from its flags and ``models`` builds for each seed."""

    arch: str
    config: TrainConfig
    out: Path
    seed: int = 0
    split_seed: int = 0
    dataset: str = "mnist"
    limit: int | None = None  # training images; None: all
    augment: str = "device"
    workers: int | None = None
    device: str = "auto"


def _train(args) -> int:
    limit = _train_limit(args.limit)
    config = _train_config(args, limit)
    out = args.out or model_set_paths([args.model], 1, args.dataset, limit, config.epochs)[(args.model, 0)]
    _check_destination(out, args.force, args.resume)
    job = _Job(args.model, config, out, args.seed, args.split_seed, args.dataset, limit, args.augment, args.workers,
               args.device)
    return _run_job(job, args.resume, args.record, args.command_line, "continue with the same flags plus --resume")


def _train_config(args, limit: int | None) -> TrainConfig:
    """The full run of ``--model`` at ``--batch-size`` (learning rates scaled), with the flags' changes."""
    full = FULL_RUNS[args.model].at_batch_size(args.batch_size)
    # A quick run takes a few dozen steps: too few for an average that remembers about 1 / (1 - decay) of them.
    default_ema = full.ema_decay if limit is None else None
    flags = {"epochs": args.epochs, "lr": args.lr, "max_lr": args.max_lr, "label_smoothing": args.label_smoothing,
             "amp": args.amp}
    return replace(full, weight_decay=args.weight_decay, **{k: v for k, v in flags.items() if v is not None},
                   ema_decay=default_ema if args.ema_decay is None else (args.ema_decay or None))


def _run_job(job: _Job, resume: bool, record: str | None, command_line: list[str], again: str) -> int:
    """Train ``job`` into ``job.out`` (continuing it with ``resume``), measure its test accuracy, and with
    ``record`` write the run's record; ``again`` is what an interrupted run's message says to do next."""
    from . import data, loaders, runtime, training
    from .checkpoints import run_metadata, update_checkpoint
    from .files import hold_interrupts
    from .models import build_model, count_parameters
    from .runstate import check_writable

    device = runtime.pick_device(job.device)  # a bad --device fails before any data is loaded
    if not resume:
        check_writable(job.out)  # before the data is loaded and hours are spent
    runtime.seed_everything(job.seed)
    splits = data.load_splits(seed=job.split_seed, train_limit=job.limit,
                              test_limit=QUICK_TEST_IMAGES if job.limit else None, dataset=job.dataset)
    train_loader, val_loader, test_loader = loaders.make_loaders(
        splits, job.config.batch_size, augment=job.augment, device=device, num_workers=job.workers, seed=job.seed
    )
    model = build_model(job.arch)
    on = "" if job.dataset == "mnist" else f" on {data.dataset_info(job.dataset).title}"
    print(
        f"{job.arch}{on}: {count_parameters(model):,} parameters, {len(splits.train_labels):,} training / "
        f"{len(splits.val_labels):,} validation images, device {device}", flush=True,
    )
    out = job.out
    before = out.stat().st_mtime_ns if out.exists() else None  # to tell a new save from an old file
    previous_sigterm = _stop_on_sigterm()
    try:
        history = training.fit(
            model, train_loader, val_loader, job.config, device=device, checkpoint=out, resume=resume,
            metadata=run_metadata(splits, job.seed, job.augment), progress=sys.stderr.isatty(), log=_print_now,
        )
        # fp32, as `evaluate` and the results records measure: the figure does not depend on the CPU's bf16 support.
        test_loss, test_accuracy = training.test_step(model, test_loader, device, None)
        best = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
        with hold_interrupts():  # like the epoch saves: Ctrl-C waits until the metrics are written
            update_checkpoint(out, metrics={
                "val_loss": history["val_loss"][best], "val_accuracy": history["val_accuracy"][best],
                "test_loss": test_loss, "test_accuracy": test_accuracy, "test_images": len(splits.test_labels),
            })
    except KeyboardInterrupt:
        ours = resume or (out.exists() and out.stat().st_mtime_ns != before)
        print(f"\ninterrupted: {_what_was_kept(out, ours, again)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    print(f"best epoch {best + 1}: val accuracy {history['val_accuracy'][best]:.2%}")
    print(f"test accuracy {test_accuracy:.2%} (fp32, loss {test_loss:.4f}, {len(splits.test_labels):,} images), "
          f"{sum(history['seconds']):.0f}s training, saved {out}")
    if record:
        from . import results

        run_record = results.make_record(out, record, ["python", "-m", "digitlib", *command_line])
        print(f"recorded {results.write_record(run_record)}: val {run_record['val_accuracy']:.2%}, "
              f"test {run_record['test_accuracy']:.2%} (fp32, the saved checkpoint)")
    return 0


def _train_limit(limit: int | None) -> int | None:
    """The training images a run uses: ``--limit``, else 2,000 in smoke mode, else None (all)."""
    return limit or (QUICK_TRAIN_IMAGES if smoke_test() else None)


def _what_was_kept(out: Path, ours: bool, again: str) -> str:
    """What an interrupted ``train`` left at ``out``, read back from the file, and what to do next.

    ``ours`` is False when the file there (if any) is not this run's: nothing was saved yet. ``again``
    says how to continue a run that has a resume state (train: --resume; models: the same command).
    """
    from .checkpoints import read_checkpoint

    if not ours:
        return "no epoch had finished, so nothing was saved" + (f" ({out} is unchanged)" if out.exists() else "")
    try:
        saved = read_checkpoint(out)
    except DigitlibError as error:
        return f"{out} could not be read back ({error})"
    if saved.get("resume"):
        return f"{out} keeps the best epoch so far; {again}"
    if "test_accuracy" in saved.get("metrics", {}):
        return f"training had finished and {out} is saved with its test metrics: nothing to resume"
    return (f"training had finished and {out} is saved, but its test accuracy was not measured: nothing to resume; "
            f"measure it with `python -m digitlib evaluate --model {out}`")


def _check_destination(out: Path, force: bool, resume: bool) -> None:
    """Refuse to replace a checkpoint nobody asked to replace (it may hold hours of training), and
    any destination that is not a regular file or a new path (``files.check_destination``)."""
    from .checkpoints import read_checkpoint
    from .errors import CheckpointError
    from .files import check_destination
    from .zoo import recorded_accuracy

    check_destination(out)
    if resume:
        if force:
            raise DigitlibError("--resume continues the checkpoint and --force replaces it: pass one of them")
        return
    if force or not (out.exists() or out.is_symlink()):
        return
    try:
        info = read_checkpoint(out)
        recorded = recorded_accuracy(info)
        what = f"a trained {info.get('arch')}" + (f", {recorded[0]} accuracy {recorded[1]:.2%}" if recorded else "")
    except CheckpointError:
        what = "not a readable checkpoint"
    raise DigitlibError(
        f"{out} already exists ({what}): pass --force to replace it, --resume to continue it, or --out NEW.pt"
    )


def _stop_on_sigterm():
    """Make SIGTERM (``kill``, a job scheduler, a closing terminal) stop training like Ctrl-C.

    The epoch in progress is dropped and the checkpoint of the last finished one is kept, whole.
    Returns the previous handler, to put back.
    """
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _print_now(line: str) -> None:
    """print, flushed: a log piped to a file or `tee` shows each epoch when it ends."""
    print(line, flush=True)


def _add_models_command(commands) -> None:
    parser = commands.add_parser(
        "models", help="train the course's model set: both architectures over several seeds",
        description="Train every architecture for each seed with the full-run settings: seed 0 into "
        "models/<model>.pt (what notebooks 04-06, predict and the drawing pad load), further seeds into "
        "models/seeds/<model>-seed<N>.pt (an ensemble for evaluate and predict); with --dataset fashion the "
        "same under models/fashion/. Finished checkpoints are skipped and interrupted ones resumed, so the "
        "command can be run again until it completes. Runs with --limit, or fewer --epochs than the full runs, go to "
        "models/quick/ instead, and a checkpoint is skipped only if it was trained with the settings asked for.",
    )
    _add_shared(parser, "dataset", "what to train on: ")
    parser.add_argument("--models", choices=ARCHITECTURES, nargs="+", default=list(ARCHITECTURES),
                        help="architectures (default: %(default)s)")
    parser.add_argument("--seeds", type=_positive_int, default=1, help="seeds per architecture (default: %(default)s)")
    _add_shared(parser, "device")
    _add_shared(parser, "epochs")
    _add_shared(parser, "train-limit")
    parser.add_argument("--record", metavar="RECIPE", default=None,
                        help="write each run's settings and results to build/results/RECIPE-<model>-seed<N>.json")
    parser.set_defaults(handler=_models)


def _models(args) -> int:
    limit = _train_limit(args.limit)
    plan = [(arch, seed, out, _model_set_state(out, _model_set_settings(args, arch, seed, limit)))
            for (arch, seed), out in model_set_paths(args.models, args.seeds, args.dataset, limit, args.epochs).items()]
    for arch, seed, out, state in plan:  # every file is checked before hours are spent on the first
        if state == "trained":
            print(f"{out}: already trained with these settings, skipped", flush=True)
            continue
        print(f"=== {arch}, seed {seed} → {out}" + (" (resuming)" if state == "resume" else ""), flush=True)
        config = run_config(arch, quick=False) if limit is None else run_config(arch, quick=True)
        config = replace(config, epochs=args.epochs or FULL_RUNS[arch].epochs)
        job = _Job(arch, config, out, seed, dataset=args.dataset, limit=limit, device=args.device)
        status = _run_job(job, state == "resume", args.record and f"{args.record}-{arch}", args.command_line,
                          "run the same command again to continue it")
        if status != 0:
            return status
    return 0


def _model_set_settings(args, arch: str, seed: int, limit: int | None) -> dict:
    """The settings that make a checkpoint of the model set "already trained": what ``models`` was asked for."""
    epochs = args.epochs or FULL_RUNS[arch].epochs
    return {"arch": arch, "seed": seed, "dataset": args.dataset, "train_limit": limit, "epochs": epochs,
            "split_seed": 0}


def _model_set_state(out: Path, wanted: dict) -> str:
    """"new", "resume" or "trained" for the model-set checkpoint ``out``, trained with the ``wanted`` settings.

    Raises one line for a destination that is not a regular file, an unreadable checkpoint, and one
    trained (or started) with other settings: it is never skipped as if it were this run's, nor replaced.
    """
    from .checkpoints import read_checkpoint
    from .data import dataset_of
    from .files import check_destination

    if not check_destination(out).exists():
        return "new"
    try:
        info = read_checkpoint(out)
    except DigitlibError as error:
        raise DigitlibError(f"{error} (move it away, and run `models` again to retrain it)") from None
    recorded = {"arch": info.get("arch"), "seed": info.get("seed"), "dataset": dataset_of(info),
                "train_limit": info.get("data", {}).get("train_limit"),
                # Checkpoints from before --split-seed split with their own seed.
                "split_seed": info.get("data", {}).get("split_seed", info.get("seed")),
                "epochs": info.get("training", {}).get("epochs")}
    differ = [key for key in wanted if recorded[key] != wanted[key]]
    if differ:
        was, now = (", ".join(f"{key}={values[key]}" for key in differ) for values in (recorded, wanted))
        raise DigitlibError(f"{out} was trained with {was}, not the {now} this run asks for: move it away and run "
                            "the same command to train it again, or run `models` with the settings it was trained with")
    return "resume" if info.get("resume") else "trained"


def _add_bench_command(commands) -> None:
    parser = commands.add_parser(
        "bench", help="measure where training time goes, and the CNN's time to 99.2 %% validation accuracy",
        description="Time the training steps that train takes, for both models, split into making the batch, "
        "forward + backward (with gradient clipping), and the optimiser's update (with the schedule); then train "
        "DigitCNN and report the training time until its validation accuracy (checked after every epoch) first "
        "reaches the target.",
    )
    _add_shared(parser, "device")
    _add_shared(parser, "amp")
    parser.add_argument("--models", choices=ARCHITECTURES, nargs="+", default=list(ARCHITECTURES),
                        help="architectures to time (default: %(default)s)")
    _add_shared(parser, "augment", "one or more input pipelines to time: ", many=True)
    parser.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[128],
                        help="batch sizes to time (default: %(default)s)")
    _add_shared(parser, "workers", "one or more counts to time: ", many=True)
    parser.add_argument("--threads", type=_positive_int, nargs="+", default=[None],
                        help="PyTorch thread counts to time (default: PyTorch's own choice)")
    parser.add_argument("--batches", type=_positive_int, default=None,
                        help="time this many batches instead of a whole epoch (quicker sweeps)")
    parser.add_argument("--target", type=_fraction, default=0.992,
                        help="validation accuracy to reach (default: %(default)s)")
    parser.add_argument("--target-epochs", type=_non_negative_int, default=5,
                        help="length of the time-to-accuracy run; 0 skips it (default: %(default)s)")
    parser.set_defaults(handler=_bench)


def _bench(args) -> int:
    from . import bench, data, reports, runtime

    quick = smoke_test()
    splits = data.load_splits(train_limit=QUICK_TRAIN_IMAGES if quick else None,
                              test_limit=QUICK_TEST_IMAGES if quick else None)
    print(f"CPU threading: {runtime.thread_settings()}")
    print(reports.bench_header())
    for arch, augment, batch_size, workers, threads in itertools.product(
        args.models, args.augment, args.batch_sizes, args.workers, args.threads
    ):
        if workers is not None and augment != "albumentations":
            continue  # workers only exist on the per-sample path
        row = bench.epoch_breakdown(arch, splits, batch_size, augment, args.batches, args.device, args.amp, threads,
                                    workers)
        print(reports.bench_row(row), flush=True)
    if args.target_epochs:
        result = bench.time_to_accuracy(splits, args.target, args.target_epochs, device=args.device, amp=args.amp)
        print(reports.time_to_accuracy_report(result))
    return 0


def _add_results_command(commands) -> None:
    parser = commands.add_parser(
        "results", help="print the results table from the runs' records (build/results/*.json)",
        description="Print a Markdown table, one row per recipe, from the JSON records that train --record "
        "writes: seeds, epochs, validation and test accuracy (mean ± standard deviation over the seeds, fp32 "
        "evaluation of each saved checkpoint), median seconds per epoch, and the command. docs/results.md's table "
        "is this output.",
    )
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder of records (default: $DIGITLIB_RESULTS or build/results)")
    parser.add_argument("--recipes", nargs="+", default=None, help="rows to print, in order (default: all)")
    parser.add_argument("--ensemble", metavar="RECIPE", nargs="+", default=None,
                        help="first record the ensemble of the runs of one or more recipes: all of them with equal "
                        "weights, and, when they held out the same validation images, the members and weights "
                        "chosen on validation (greedy, by accuracy); fp32, validation and test accuracy")
    parser.add_argument("--shifts", metavar="RECIPE", default=None,
                        help="first record RECIPE's runs measured again with test-time averaging over each image and "
                        "its four 1-pixel shifts, as the recipe 'RECIPE + shifts'")
    parser.add_argument("--readme", type=Path, default=None,
                        help="write the table into this file, between its results-table markers, instead of "
                        "printing it")
    parser.set_defaults(handler=_results)


def _ensembles(runs: list[dict]) -> list[dict]:
    """The equal-weight ensemble of ``runs``, and the one chosen on validation where they share it."""
    from . import results

    made = [results.ensemble_record(runs)]
    try:
        made.append(results.chosen_ensemble_record(runs))
    except ValueError as error:
        print(f"no ensemble chosen on validation: {error}", file=sys.stderr)
    return made


def _results(args) -> int:
    from . import results

    try:
        records = results.load_records(args.dir)
    except (OSError, ValueError) as error:
        raise DigitlibError(str(error)) from None
    if not records:
        raise DigitlibError(f"no run records in {args.dir or results.results_dir()}: train with --record RECIPE first")
    for recipes, derive in ((args.ensemble, _ensembles), (args.shifts and [args.shifts],
                            lambda runs: [results.shifted_record(run) for run in runs])):
        if recipes is None:
            continue
        runs = [record for record in records if record["recipe"] in recipes]
        missing = set(recipes) - {record["recipe"] for record in runs}
        if missing:
            raise DigitlibError(f"no runs of recipe {sorted(missing)[0]!r} in {args.dir or results.results_dir()}")
        for record in derive(runs):
            print(f"recorded {results.write_record(record, args.dir)}", file=sys.stderr)
        records = results.load_records(args.dir)
    table = results.results_table(records, args.recipes)
    if args.readme is None:
        print(table)
        return 0
    try:
        args.readme.write_text(results.replace_table(args.readme.read_text(), table))
    except (OSError, ValueError) as error:
        raise DigitlibError(f"{args.readme}: {error}") from None
    print(f"wrote the table of {len(records)} records into {args.readme}")
    return 0


def _add_evaluate_command(commands) -> None:
    parser = commands.add_parser(
        "evaluate", help="measure checkpoints (and their ensemble) on the test set: accuracy, errors, latency",
        description="Print a checkpoint's test accuracy and loss, per-class accuracy and most-confused "
        "pairs on the official test set, then the CPU latency of preprocessing plus the forward pass "
        "for one image and the batch throughput. Given several checkpoints, print each member, their "
        "ensemble (mean of probabilities, and majority vote) and the test images the ensemble still "
        "gets wrong, instead of the timings.",
    )
    parser.add_argument("--model", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                        help="one or more checkpoints (default: the best one in models/, or models/smoke/ in "
                        "smoke mode; in models/fashion/ with --dataset fashion)")
    _add_shared(parser, "dataset", default=None,
                help="test set: mnist (digits) or fashion (Fashion-MNIST); a checkpoint trained on another one is "
                "refused (default: the dataset the checkpoint records)")
    _add_shared(parser, "test-limit")
    parser.add_argument("--top", type=_positive_int, default=5,
                        help="most-confused pairs to list (default: %(default)s)")
    parser.add_argument("--repeats", type=_non_negative_int, default=None,
                        help="timed runs for the one-image latency; 0 skips timing (default: 200; 20 in smoke mode)")
    _add_shared(parser, "device", "device for the test-set pass: ")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from . import data, evaluation, reports
    from .checkpoints import normalization
    from .training import pick_device
    from .zoo import best_checkpoint, load_model

    paths = args.model or [best_checkpoint(log=_warn, dataset=args.dataset or "mnist")]
    device = pick_device(args.device)
    limit = args.limit or (QUICK_TEST_IMAGES if smoke_test() else None)
    loaded = [(path, *load_model(path, device)) for path in paths]  # a checkpoint or an exported .onnx
    dataset = _checkpoints_dataset(loaded, args.dataset)
    images, labels = data.load_dataset(dataset, train=False)
    images, labels = images[:limit], labels[:limit]
    members = []
    for path, model, info in loaded:
        mean, std = normalization(info, path)
        loader = evaluation.make_test_loader(images, labels, mean, std)
        members.append((path, model, info, (mean, std), evaluation.predict_proba(model, loader, device)[0]))
    if len(members) == 1:
        path, model, info, (mean, std), probabilities = members[0]
        print(reports.model_report(path, model, info, evaluation.classification_metrics(probabilities, labels),
                                   probabilities, labels, args.top, dataset))
        repeats = (20 if smoke_test() else 200) if args.repeats is None else args.repeats
        if repeats:
            reports.print_timings(model, images, mean, std, repeats, dataset)
    else:
        print(reports.ensemble_report(members, labels, args.top, dataset))
    return 0


def _checkpoints_dataset(loaded: list, requested: str | None) -> str:
    """The dataset every (path, model, info) in ``loaded`` was trained on, so evaluate uses its test set.

    Refuses checkpoints of different datasets together, and a --dataset other than theirs.
    """
    from . import data
    from .checkpoint_checks import checkpoint_dataset
    from .checkpoints import require_dataset

    (first, _, first_info), *others = loaded
    if requested is not None:
        require_dataset(first_info, first, requested, f"leave out --dataset {requested} to use its own test set, "
                        f"or pass a checkpoint trained on {data.dataset_info(requested).title}")
    dataset = requested or checkpoint_dataset(first_info, first)
    for path, _, info in others:
        require_dataset(info, path, dataset, f"evaluate checkpoints of one dataset at a time ({first} was trained "
                        f"on {data.dataset_info(dataset).title})")
    return dataset


def _add_predict_command(commands) -> None:
    parser = commands.add_parser(
        "predict", help="read the digit in image files (PNG, JPEG, BMP, GIF)",
        description="Predict the digit in each image: any size, colour or polarity (dark on light or light "
        "on dark, or strokes on a transparent background). Each picture is made MNIST-like first: "
        "cropped to its ink, scaled to 20 px and centred by mass in 28x28. It takes digit models only: a "
        "checkpoint trained on Fashion-MNIST is refused.",
        epilog="A picture that is probably not one digit (a dot or blob, a shape much wider than tall such as a "
        "dash or several digits, or a top probability below digitlib.confidence.MIN_CONFIDENCE) is still read, "
        "and marked 'not a digit?' with the reason (\"rejected\": true and \"reason\" with --json); notebook 08 "
        "measured the thresholds. "
        "Exit status: 0 when every file was read, 1 when some could not be (one line each on "
        "stderr; the others are still predicted), 2 when the model cannot be loaded.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument("--model", type=Path, action="append", default=None, metavar="CHECKPOINT",
                        help="checkpoint; repeat it (--model a.pt --model b.pt) for an ensemble, the mean of their "
                        "probabilities (default: the best one in models/, or models/smoke/ in smoke mode)")
    parser.add_argument("--top", type=_top_k, default=1,
                        help="list the K most likely digits, 1 to 10 (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(handler=_predict)


def _predict(args) -> int:
    import json

    from .checkpoints import normalization, require_dataset
    from .errors import ImageError
    from .inference import read_image
    from .preprocess import load_image
    from .zoo import best_checkpoint, load_model, recorded_accuracy

    paths = args.model or [best_checkpoint(log=_warn)]
    members, described = [], []
    for path in paths:
        model, info = load_model(path, "cpu")  # a checkpoint or an exported .onnx (ONNX Runtime)
        require_dataset(info, path, "mnist", "predict reads drawn digits (cropped, scaled and centred like MNIST's); "
                        f"measure it with `python -m digitlib evaluate --model {path}`")
        members.append((model, *normalization(info, path)))
        recorded = recorded_accuracy(info)
        accuracy = f", {recorded[0]} accuracy {recorded[1]:.2%}" if recorded else ""
        described.append(f"{path} ({info['arch']}{accuracy})")
    results, failed = [], 0
    if not args.json:
        print(f"model {described[0]}" if len(members) == 1 else
              f"ensemble of {len(members)}, mean of probabilities: {', '.join(described)}")
        width = max(len(str(image)) for image in args.images)
        top_column = f"  top {args.top}" if args.top > 1 else ""
        print(f"{'image':<{width}}  digit  probability{top_column}", flush=True)
    for image_path in args.images:
        try:
            reading = read_image(members, load_image(image_path))
        except ImageError as error:
            message = str(error)
            print(f"error: {message if message.startswith(str(image_path)) else f'{image_path}: {message}'}",
                  file=sys.stderr, flush=True)
            failed += 1
            continue
        top = reading.top(args.top)
        digit, probability = top[0]
        verdict = reading.verdict  # a dot, a dash, a shoe: not a digit?
        results.append({"file": str(image_path), "digit": digit, "probability": probability,
                        "top": [{"digit": d, "probability": p} for d, p in top],
                        "rejected": verdict.rejected, "reason": verdict.reason or None})
        if not args.json:
            others = "  " + ", ".join(f"{d} {p:.1%}" for d, p in top) if args.top > 1 else ""
            doubt = f"  not a digit? {verdict.reason}" if verdict.rejected else ""
            print(f"{str(image_path):<{width}}  {digit:>5}  {probability:>11.1%}{others}{doubt}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _add_export_command(commands) -> None:
    parser = commands.add_parser(
        "export", help="export a checkpoint to ONNX (fp32 or int8) for ONNX Runtime",
        description="Write a checkpoint as an ONNX file that predict and evaluate run with ONNX Runtime. The "
        "file's metadata keeps the normalisation, architecture, metrics and the checkpoint's other scalar "
        "fields. onnx-int8 also quantizes it with ONNX Runtime's static int8 quantization, calibrated on "
        "training images. An existing file is never replaced unless you pass --force.",
    )
    parser.add_argument("--model", type=Path, required=True, metavar="CHECKPOINT", help="the checkpoint to export")
    parser.add_argument("--format", choices=("onnx", "onnx-int8"), default="onnx",
                        help="onnx: fp32; onnx-int8: int8 weights and activations (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the .onnx file to write (default: models/export/<checkpoint name>.onnx, or "
                        "<name>.int8.onnx for onnx-int8; models/smoke/export/ in smoke mode)")
    parser.add_argument("--calibration", type=_positive_int, default=1000,
                        help="training images that calibrate the int8 ranges, onnx-int8 only (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--compare", action="store_true",
                        help="write nothing; print size, test accuracy, one-thread latency and throughput of fp32 and "
                        "int8 in PyTorch and ONNX Runtime (docs/results.md's table; minutes for the full test set)")
    _add_shared(parser, "test-limit", "with --compare, ")
    parser.set_defaults(handler=_export)


def _export(args) -> int:
    from .config import models_dir
    from .evaluation import file_size_mb
    from .export import export_checkpoint

    if args.compare:
        return _compare_exports(args)
    suffix = ".int8.onnx" if args.format == "onnx-int8" else ".onnx"
    out = args.out or models_dir() / "export" / f"{args.model.stem}{suffix}"
    written = export_checkpoint(args.model, out, args.format, args.force, args.calibration)
    print(f"wrote {written} ({args.format}, {file_size_mb(written):.1f} MB from {args.model}, "
          f"{file_size_mb(args.model):.1f} MB)")
    return 0


def _compare_exports(args) -> int:
    import tempfile

    from . import reports
    from .export import compare_variants

    limit = args.limit or (QUICK_TEST_IMAGES if smoke_test() else None)
    with tempfile.TemporaryDirectory() as folder:
        rows = compare_variants(args.model, folder, limit, args.calibration, repeats=20 if smoke_test() else 200)
    print(reports.export_comparison(rows, limit))
    return 0


def _number(kind, minimum: float, exclusive: bool, wording: str, maximum: float = math.inf):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wording}") from None
        # nan compares false with everything, so test finiteness first: a NaN or infinite learning
        # rate would train (and save) a model of NaNs.
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum) or value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wording}")
        return value
    return parse


_positive_int = _number(int, 0, True, "a positive whole number")
_non_negative_int = _number(int, 0, False, "a whole number of 0 or more")
_positive_float = _number(float, 0.0, True, "a finite positive number")
_non_negative_float = _number(float, 0.0, False, "a finite number of 0 or more")
_fraction = _number(float, 0.0, True, "a fraction between 0 and 1, like 0.992", maximum=1.0)
_smoothing = _number(float, 0.0, False, "a number from 0 to below 1, like 0.1", maximum=0.99)
_ema_decay = _number(float, 0.0, False, "0 (no average) or a decay below 1, like 0.999", maximum=0.999999)
_top_k = _number(int, 0, True, "a whole number from 1 to 10 (there are 10 digits)", maximum=10)


#: The options several commands take, each defined once: {name: (flag, add_argument's keywords)}.
SHARED_OPTIONS: dict[str, tuple[str, dict]] = {
    "device": ("--device", {"default": "auto", "help": "cuda, mps, cpu or auto (default: %(default)s)"}),
    "amp": ("--amp", {"action": argparse.BooleanOptionalAction, "default": None,
                      "help": "mixed precision with torch.autocast (default: on for CUDA and for CPUs with bf16 "
                      "hardware, off elsewhere)"}),
    "dataset": ("--dataset", {"choices": DATASET_NAMES, "default": "mnist",
                              "help": "mnist (digits) or fashion (Fashion-MNIST) (default: %(default)s)"}),
    "augment": ("--augment", {"choices": AUGMENT_CHOICES, "default": "device",
                              "help": "device: whole batches on the training device (fast); albumentations: one "
                              "image at a time in DataLoader workers; none (default: %(default)s)"}),
    "workers": ("--workers", {"type": _non_negative_int, "default": None,
                              "help": "DataLoader worker processes, with --augment albumentations only (default: 0 "
                              "on two cores or fewer, else up to 4)"}),
    "epochs": ("--epochs", {"type": _positive_int, "default": None,
                            "help": "training epochs (default: " + ", ".join(
                                f"{run.epochs} for {arch}" for arch, run in FULL_RUNS.items()) + ")"}),
    "train-limit": ("--limit", {"type": _positive_int, "default": None,
                                "help": "use only this many of the 60,000 training images and 1,000 test images "
                                "(quick runs, saved under models/quick/; DIGITLIB_SMOKE=1 implies 2,000)"}),
    "test-limit": ("--limit", {"type": _positive_int, "default": None,
                               "help": "use only the first N test images (default: all 10,000; 1,000 in smoke "
                               "mode)"}),
}


def _add_shared(parser: argparse.ArgumentParser, name: str, purpose: str = "", many: bool = False,
                **changes) -> None:
    """Add the shared option ``name`` (:data:`SHARED_OPTIONS`) to ``parser``.

    ``purpose`` starts its help with what it is for in this command; ``many`` takes one or more values
    (the default becomes a list of one: bench sweeps them); ``changes`` replace add_argument's keywords.
    """
    flag, spec = SHARED_OPTIONS[name]
    spec = {**spec, "help": purpose + spec["help"]}
    if many:
        spec.update(nargs="+", default=[spec["default"]])
    parser.add_argument(flag, **{**spec, **changes})


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m digitlib", description="The digits course's command line.")
    parser.add_argument("--version", action="version", version=f"digitlib {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_data_command, _add_train_command, _add_models_command, _add_bench_command, _add_results_command,
        _add_evaluate_command,
        _add_predict_command, _add_export_command,
    ):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.command_line = sys.argv[1:] if argv is None else list(argv)  # what a results record says was run
        return args.handler(args)
    except DigitlibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside training (loading data, importing torch): no traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`predict ... | head -1`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so Python's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command stopped by a closed pipe
