"""``python -m digitlib``: data, train, bench, evaluate and predict.

Expected failures (missing data, a bad checkpoint, an unreadable image) print one line on
stderr and exit with status 2; argparse reports bad flags itself. Ctrl-C exits with 130.

Only the command that runs imports torch and the rest, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .config import DATASET_NAMES, FULL_RUNS, REFERENCE_BATCH_SIZE, dataset_models_dir, scaled_max_lr, smoke_test
from .errors import DigitlibError

AUGMENT_CHOICES = ("device", "albumentations", "none")
START_LR = 1e-3  # where the one-cycle schedule starts, at the reference batch size
AMP_HELP = "mixed precision with torch.autocast (default: on for CUDA and for CPUs with bf16 hardware, off elsewhere)"


def _add_data_command(commands) -> None:
    parser = commands.add_parser("data", help="make MNIST (or Fashion-MNIST) ready in the data folder")
    parser.add_argument("--dataset", choices=DATASET_NAMES, nargs="+", default=["mnist"],
                        help="one or more datasets to make ready; fashion is Fashion-MNIST (default: %(default)s)")
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
    per_model_epochs = ", ".join(f"{run.epochs} for {arch}" for arch, run in FULL_RUNS.items())
    per_model_peak = ", ".join(f"{run.max_lr:g} for {arch}" for arch, run in FULL_RUNS.items())
    parser.add_argument("--model", choices=("cnn", "resnet"), default="cnn",
                        help="architecture (default: %(default)s)")
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="mnist",
                        help="what to train on: mnist (digits) or fashion (Fashion-MNIST, its checkpoints under "
                        "models/fashion/) (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help=f"training epochs (default: {per_model_epochs})")
    parser.add_argument("--batch-size", type=_positive_int, default=128,
                        help="training batch size (default: %(default)s)")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help=f"AdamW's initial learning rate, where the one-cycle schedule starts (default: "
                        f"{START_LR:g} at batch size {REFERENCE_BATCH_SIZE}, scaled like --max-lr)")
    parser.add_argument("--max-lr", type=_positive_float, default=None,
                        help=f"OneCycleLR's peak learning rate (default: {per_model_peak} at batch size "
                        f"{REFERENCE_BATCH_SIZE}, scaled by the square root of --batch-size / {REFERENCE_BATCH_SIZE})")
    parser.add_argument("--weight-decay", type=_non_negative_float, default=1e-2,
                        help="AdamW's weight decay (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=_smoothing, default=None,
                        help="label smoothing of the loss, from 0 (none) to below 1 (default: "
                        f"{_per_model('label_smoothing')})")
    parser.add_argument("--ema-decay", type=_ema_decay, default=None,
                        help="decay of an exponential moving average of the weights, which is then what is "
                        f"validated and saved; 0: no average (default: {_per_model('ema_decay')}; none with --limit "
                        "or in smoke mode)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=AMP_HELP)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initialisation, shuffling, augmentation (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the 80/20 training/validation split; the same for every --seed, so that "
                        "the seeds' models can be compared and ensembled on one validation set (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    parser.add_argument("--augment", choices=AUGMENT_CHOICES, default="device",
                        help="device: whole batches on the training device (fast); albumentations: one image at a "
                        "time in DataLoader workers; none (default: %(default)s)")
    parser.add_argument("--workers", type=_non_negative_int, default=None,
                        help="DataLoader worker processes, with --augment albumentations only (default: 0 on two "
                        "cores or fewer, else up to 4)")
    parser.add_argument(
        "--limit", type=_positive_int, default=None,
        help="use only this many of the 60,000 training images and 1,000 test images (quick runs; "
        "DIGITLIB_SMOKE=1 implies 2,000)",
    )
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


def _train(args, again: str = "continue with the same flags plus --resume") -> int:
    """``train``; ``again`` is what an interrupted run's message says to do to continue it."""
    from . import data, loaders, runtime, training
    from .checkpoints import update_checkpoint
    from .files import hold_interrupts
    from .models import build_model, count_parameters

    limit = _train_limit(args.limit)
    full_run = FULL_RUNS[args.model]
    epochs = args.epochs or full_run.epochs
    out = args.out or model_set_paths([args.model], 1, args.dataset, limit, epochs)[(args.model, 0)]
    _check_destination(out, args.force, args.resume)
    device = runtime.pick_device(args.device)  # a bad --device fails before any data is loaded
    max_lr = args.max_lr or scaled_max_lr(full_run.max_lr, args.batch_size)
    lr = args.lr or scaled_max_lr(START_LR, args.batch_size)
    smoothing = full_run.label_smoothing if args.label_smoothing is None else args.label_smoothing
    # A quick run takes a few dozen steps: too few for an average that remembers about 1 / (1 - decay) of them.
    default_ema = full_run.ema_decay if limit is None else None
    ema_decay = default_ema if args.ema_decay is None else (args.ema_decay or None)
    if not args.resume:
        training.check_writable(out)  # before the data is loaded and hours are spent
    runtime.seed_everything(args.seed)
    splits = data.load_splits(seed=args.split_seed, train_limit=limit, test_limit=1000 if limit else None,
                              dataset=args.dataset)
    train_loader, val_loader, test_loader = loaders.make_loaders(
        splits, args.batch_size, augment=args.augment, device=device, num_workers=args.workers, seed=args.seed
    )
    model = build_model(args.model)
    on = "" if args.dataset == "mnist" else f" on {data.dataset_info(args.dataset).title}"
    print(
        f"{args.model}{on}: {count_parameters(model):,} parameters, {len(splits.train_labels):,} training / "
        f"{len(splits.val_labels):,} validation images, device {device}", flush=True,
    )
    metadata = {
        "normalization": {"mean": splits.mean, "std": splits.std}, "seed": args.seed,
        "data": {"dataset": args.dataset, "train_limit": limit, "augment": args.augment,
                 "split_seed": args.split_seed},
    }
    before = out.stat().st_mtime_ns if out.exists() else None  # to tell a new save from an old file
    previous_sigterm = _stop_on_sigterm()
    try:
        history = training.fit(
            model, train_loader, val_loader, epochs, lr=lr, max_lr=max_lr, weight_decay=args.weight_decay,
            amp=args.amp, device=device, label_smoothing=smoothing, ema_decay=ema_decay, checkpoint=out,
            resume=args.resume, metadata=metadata, progress=sys.stderr.isatty(), log=_print_now,
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
        ours = args.resume or (out.exists() and out.stat().st_mtime_ns != before)
        print(f"\ninterrupted: {_what_was_kept(out, ours, again)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    print(f"best epoch {best + 1}: val accuracy {history['val_accuracy'][best]:.2%}")
    print(f"test accuracy {test_accuracy:.2%} (fp32, loss {test_loss:.4f}, {len(splits.test_labels):,} images), "
          f"{sum(history['seconds']):.0f}s training, saved {out}")
    if args.record:
        from . import results

        record = results.make_record(out, args.record, ["python", "-m", "digitlib", *args.command_line])
        print(f"recorded {results.write_record(record)}: val {record['val_accuracy']:.2%}, "
              f"test {record['test_accuracy']:.2%} (fp32, the saved checkpoint)")
    return 0


def _train_limit(limit: int | None) -> int | None:
    """The training images a run uses: ``--limit``, else 2,000 in smoke mode, else None (all)."""
    return limit or (2000 if smoke_test() else None)


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
    from .evaluation import recorded_accuracy
    from .files import check_destination

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
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="mnist",
                        help="what to train on: mnist or fashion (Fashion-MNIST) (default: %(default)s)")
    parser.add_argument("--models", choices=("cnn", "resnet"), nargs="+", default=["cnn", "resnet"],
                        help="architectures (default: %(default)s)")
    parser.add_argument("--seeds", type=_positive_int, default=1, help="seeds per architecture (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="override the full runs' epochs (quick trials, under models/quick/ when fewer; default: "
                        "the full runs')")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="train on this many of the 60,000 images (quick trials, under models/quick/; "
                        "default: all)")
    parser.add_argument("--record", metavar="RECIPE", default=None,
                        help="write each run's settings and results to build/results/RECIPE-<model>-seed<N>.json")
    parser.set_defaults(handler=_models)


def model_set_paths(archs, seeds: int, dataset: str = "mnist", limit: int | None = None, epochs: int | None = None):
    """{(arch, seed): checkpoint path} of the model set that `models` trains (seed 0 is also `train`'s default).

    Under ``dataset_models_dir(dataset)``, or its ``quick/`` folder for an architecture trained on
    ``limit`` images or fewer ``epochs`` than its full run: a quick run never takes the names that
    ``predict``, the notebooks and the drawing pad load.
    """
    paths = {}
    for arch in archs:
        quick = limit is not None or (epochs is not None and epochs < FULL_RUNS[arch].epochs)
        folder = dataset_models_dir(dataset) / ("quick" if quick else "")
        for seed in range(seeds):
            paths[arch, seed] = folder / (f"{arch}.pt" if seed == 0 else f"seeds/{arch}-seed{seed}.pt")
    return paths


def _models(args) -> int:
    parser = build_parser()
    limit = _train_limit(args.limit)
    plan = [(arch, seed, out, _model_set_state(out, _model_set_settings(args, arch, seed, limit)))
            for (arch, seed), out in model_set_paths(args.models, args.seeds, args.dataset, limit, args.epochs).items()]
    for arch, seed, out, state in plan:  # every file is checked before hours are spent on the first
        if state == "trained":
            print(f"{out}: already trained with these settings, skipped", flush=True)
            continue
        argv = ["train", "--model", arch, "--dataset", args.dataset, "--seed", str(seed), "--device", args.device,
                "--out", str(out)]
        argv += ["--epochs", str(args.epochs)] if args.epochs else []
        argv += ["--limit", str(args.limit)] if args.limit else []
        argv += ["--resume"] if state == "resume" else []
        argv += ["--record", f"{args.record}-{arch}"] if args.record else []
        print(f"=== {arch}, seed {seed} → {out}" + (" (resuming)" if state == "resume" else ""), flush=True)
        train_args = parser.parse_args(argv)
        train_args.command_line = args.command_line
        status = _train(train_args, again="run the same command again to continue it")
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
        description="Time training steps of both models, split into making the batch, forward + backward, "
        "and the optimiser step; then train DigitCNN and report the training time until its validation "
        "accuracy (checked after every epoch) first reaches the target.",
    )
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help=AMP_HELP)
    parser.add_argument("--models", choices=("cnn", "resnet"), nargs="+", default=["cnn", "resnet"],
                        help="architectures to time (default: %(default)s)")
    parser.add_argument("--augment", choices=AUGMENT_CHOICES, nargs="+", default=["device"],
                        help="input pipelines to time (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[128],
                        help="batch sizes to time (default: %(default)s)")
    parser.add_argument("--workers", type=_non_negative_int, nargs="+", default=[None],
                        help="DataLoader workers to time with --augment albumentations (default: the training default)")
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
    from . import bench, data, runtime

    splits = data.load_splits(train_limit=2000 if smoke_test() else None, test_limit=1000 if smoke_test() else None)
    print(f"CPU threading: {runtime.thread_settings()}")
    columns = ("model", "device", "amp", "augment", "batch", "workers", "threads", "data s", "fwd+bwd s", "optim s",
               "images/s", "s/epoch")
    print("  ".join(f"{c:>9}" for c in columns))
    for arch, augment, batch_size, workers, threads in itertools.product(
        args.models, args.augment, args.batch_sizes, args.workers, args.threads
    ):
        if workers is not None and augment != "albumentations":
            continue  # workers only exist on the per-sample path
        row = bench.epoch_breakdown(arch, splits, batch_size, augment, args.batches, args.device, args.amp, threads,
                                    workers)
        cells = (row.model, row.device, row.amp, row.pipeline, row.batch_size, row.workers, row.threads,
                 f"{row.data_s:.2f}", f"{row.forward_backward_s:.2f}", f"{row.optimizer_s:.2f}",
                 f"{row.images_per_s:.0f}", f"{row.epoch_s:.1f}")
        print("  ".join(f"{c:>9}" for c in cells), flush=True)
    if args.target_epochs:
        result = bench.time_to_accuracy(splits, args.target, args.target_epochs, device=args.device, amp=args.amp)
        per_epoch = "  ".join(f"{a:.2%}" for a in result.val_accuracy_per_epoch)
        print(f"cnn validation accuracy after each epoch: {per_epoch}")
        if result.seconds_to_target is None:
            print(f"cnn did not reach {args.target:.1%} in {args.target_epochs} epochs ({result.total_s:.0f}s)")
        else:
            epochs = ", ".join(f"{s:.1f}" for s in result.seconds_per_epoch)
            print(f"cnn reached {args.target:.1%} validation accuracy after {result.seconds_to_target:.1f}s of "
                  f"training (epochs of {epochs}s, validation included)")
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
    parser.add_argument("--ensemble", metavar="RECIPE", default=None,
                        help="first record the seed ensemble of RECIPE's runs: all of them, mean of probabilities, "
                        "fp32 on the test set")
    parser.add_argument("--shifts", metavar="RECIPE", default=None,
                        help="first record RECIPE's runs measured again with test-time averaging over each image and "
                        "its four 1-pixel shifts, as the recipe 'RECIPE + shifts'")
    parser.add_argument("--readme", type=Path, default=None,
                        help="write the table into this file, between its results-table markers, instead of "
                        "printing it")
    parser.set_defaults(handler=_results)


def _results(args) -> int:
    from . import results

    try:
        records = results.load_records(args.dir)
    except (OSError, ValueError) as error:
        raise DigitlibError(str(error)) from None
    if not records:
        raise DigitlibError(f"no run records in {args.dir or results.results_dir()}: train with --record RECIPE first")
    for recipe, derive in ((args.ensemble, lambda runs: [results.ensemble_record(runs)]),
                           (args.shifts, lambda runs: [results.shifted_record(run) for run in runs])):
        if recipe is None:
            continue
        runs = [record for record in records if record["recipe"] == recipe]
        if not runs:
            raise DigitlibError(f"no runs of recipe {recipe!r} in {args.dir or results.results_dir()}")
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
    parser.add_argument("--dataset", choices=DATASET_NAMES, default=None,
                        help="test set: mnist or fashion (Fashion-MNIST); a checkpoint trained on another one is "
                        "refused (default: the dataset the checkpoint records)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="use only the first N test images (default: all 10,000; 1,000 in smoke mode)")
    parser.add_argument("--top", type=_positive_int, default=5,
                        help="most-confused pairs to list (default: %(default)s)")
    parser.add_argument("--repeats", type=_non_negative_int, default=None,
                        help="timed runs for the one-image latency; 0 skips timing (default: 200; 20 in smoke mode)")
    parser.add_argument("--device", default="auto",
                        help="device for the test-set pass: cuda, mps, cpu or auto (default: %(default)s)")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from . import data, evaluation
    from .checkpoints import normalization
    from .export import load_model
    from .training import pick_device

    paths = args.model or [evaluation.best_checkpoint(log=_warn, dataset=args.dataset or "mnist")]
    device = pick_device(args.device)
    limit = args.limit or (1000 if smoke_test() else None)
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
        _print_model_report(path, model, info, evaluation.classification_metrics(probabilities, labels),
                            probabilities, labels, args.top, dataset)
        _print_timings(model, images, mean, std, args.repeats, dataset)
    else:
        _print_ensemble_report(members, labels, args.top, dataset)
    return 0


def _checkpoints_dataset(loaded: list, requested: str | None) -> str:
    """The dataset every (path, model, info) in ``loaded`` was trained on, so evaluate uses its test set.

    Refuses checkpoints of different datasets together, and a --dataset other than theirs.
    """
    from . import data
    from .checkpoints import checkpoint_dataset, require_dataset

    (first, _, first_info), *others = loaded
    if requested is not None:
        require_dataset(first_info, first, requested, f"leave out --dataset {requested} to use its own test set, "
                        f"or pass a checkpoint trained on {data.dataset_info(requested).title}")
    dataset = requested or checkpoint_dataset(first_info, first)
    for path, _, info in others:
        require_dataset(info, path, dataset, f"evaluate checkpoints of one dataset at a time ({first} was trained "
                        f"on {data.dataset_info(dataset).title})")
    return dataset


def _print_model_report(path, model, info, metrics, probabilities, labels, top: int, dataset: str) -> None:
    from . import evaluation
    from .models import count_parameters

    matrix = evaluation.confusion_matrix(labels, probabilities.argmax(dim=1))
    # An ONNX file has no PyTorch parameters: its export recorded how many the network had.
    exported = info.get("export")
    count = count_parameters(model) or (exported.get("parameters") if isinstance(exported, dict) else None)
    print(f"{path}: {info['arch']}, {f'{count:,} parameters' if count else 'parameter count not recorded'}, "
          f"{info.get('epochs_completed', '?')} epochs (best {info.get('best_epoch', '?')})")
    _print_metrics(metrics, evaluation.most_confused(matrix, top), dataset)


def _print_metrics(metrics: dict, confused: list, dataset: str) -> None:
    """The numbers of one model or ensemble, classes named as ``dataset`` names them."""
    from . import data

    classes = data.class_names(dataset)
    # MNIST, the default, goes unsaid (as in train's first line); any other dataset is named.
    print(f"test images  {metrics['n']:,}" + ("" if dataset == "mnist" else f" ({data.dataset_info(dataset).title})"))
    print(f"accuracy     {metrics['accuracy']:.2%}  ({metrics['correct']:,} correct)")
    print(f"loss         {metrics['loss']:.4f}")
    print("per-class accuracy")
    width = max(len(name) for name in classes)
    if width < 8:  # digits: two rows of columns
        print("  digit " + "".join(f"{name:>8}" for name in classes))
        print("  acc   " + "".join(f"{accuracy:>8.2%}" for accuracy in metrics["per_class_accuracy"]))
    else:  # names like "T-shirt/top": one line each
        for name, accuracy in zip(classes, metrics["per_class_accuracy"], strict=True):
            print(f"  {name:<{width}}  {accuracy:>7.2%}")
    print("most-confused pairs (true -> predicted: count)")
    for true, predicted, count in confused:
        print(f"  {classes[true]} -> {classes[predicted]}: {count}")
    if not confused:
        print("  none: every image is right")


def _print_timings(model, images, mean: float, std: float, repeats: int | None, dataset: str = "mnist") -> None:
    import torch

    from . import bench, data, evaluation

    repeats = 20 if repeats is None and smoke_test() else 200 if repeats is None else repeats
    if not repeats:
        return
    model = model.cpu()
    if dataset == "mnist":  # what the pad and `predict` do: a large drawing, cropped, scaled and centred
        drawing = evaluation.as_drawing(images[0])
        latency = bench.single_image_latency(model, drawing, mean, std, repeats=repeats)
        what, steps = f"{drawing.width}x{drawing.height} drawing", "preprocessing"
    else:  # the digit preprocessing does not suit other pictures: one 28x28 test image, normalised
        latency = bench.single_image_latency(model, images[:1], mean, std, repeats=repeats, prepare=data.normalize)
        what, steps = f"28x28 {data.dataset_info(dataset).title} test image", "normalising"
    print(f"latency      {latency['median_ms']:.2f} ms median, {latency['p90_ms']:.2f} ms 90th percentile for one "
          f"{what}: {steps} {latency['preprocess_ms']:.2f} ms + forward "
          f"{latency['forward_ms']:.2f} ms (CPU, {_count(latency['threads'], 'thread')}, {repeats} runs)")
    batches = data.normalize(images, mean, std)
    throughput = bench.batch_throughput(model, batches, batch_size=min(1000, len(batches)))
    print(f"throughput   {throughput['images_per_s']:,.0f} images/s (CPU forward pass, batches of "
          f"{throughput['batch_size']:,}, {_count(torch.get_num_threads(), 'thread')})")


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _print_ensemble_report(members: list, labels, top: int, dataset: str) -> None:
    from . import data, evaluation

    classes = data.class_names(dataset)
    width = max([len(str(path)) for path, *_ in members] + [len("ensemble: mean of probabilities")])
    print(f"{'member':<{width}}  {'model':<7}{'accuracy':>9}{'errors':>8}{'loss':>9}")
    for path, _, info, _, probabilities in members:
        metrics = evaluation.classification_metrics(probabilities, labels)
        errors = metrics["n"] - metrics["correct"]
        print(f"{str(path):<{width}}  {info['arch']:<7}{metrics['accuracy']:>9.2%}{errors:>8,}{metrics['loss']:>9.4f}")
    average = evaluation.average_probabilities(*(member[-1] for member in members))
    votes = evaluation.majority_vote(*(member[-1] for member in members))
    vote_correct = int((votes == labels).sum())
    metrics = evaluation.classification_metrics(average, labels)
    print(f"{'ensemble: mean of probabilities':<{width}}  {'':<7}{metrics['accuracy']:>9.2%}"
          f"{metrics['n'] - metrics['correct']:>8,}{metrics['loss']:>9.4f}")
    print(f"{'ensemble: majority vote':<{width}}  {'':<7}{vote_correct / len(labels):>9.2%}"
          f"{len(labels) - vote_correct:>8,}")
    print(f"\nthe mean of probabilities, on {metrics['n']:,} test images:")
    matrix = evaluation.confusion_matrix(labels, average.argmax(dim=1))
    _print_metrics(metrics, evaluation.most_confused(matrix, top), dataset)
    mistakes = evaluation.misclassified(average, labels)
    print(f"test images it still gets wrong ({len(mistakes)}): index, true label -> prediction (probability)")
    for row in mistakes.itertuples():
        print(f"  {row.index:>5}  {classes[row.true]} -> {classes[row.predicted]} ({row.probability:.0%})")


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

    from . import evaluation
    from .checkpoints import normalization, require_dataset
    from .errors import ImageError
    from .export import load_model
    from .inference import read_image
    from .preprocess import load_image

    paths = args.model or [evaluation.best_checkpoint(log=_warn)]
    members, described = [], []
    for path in paths:
        model, info = load_model(path, "cpu")  # a checkpoint or an exported .onnx (ONNX Runtime)
        require_dataset(info, path, "mnist", "predict reads drawn digits (cropped, scaled and centred like MNIST's); "
                        f"measure it with `python -m digitlib evaluate --model {path}`")
        members.append((model, *normalization(info, path)))
        recorded = evaluation.recorded_accuracy(info)
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
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="with --compare, use the first N test images (default: all 10,000; 1,000 in smoke mode)")
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

    from .export import compare_variants

    limit = args.limit or (1000 if smoke_test() else None)
    with tempfile.TemporaryDirectory() as folder:
        rows = compare_variants(args.model, folder, limit, args.calibration, repeats=20 if smoke_test() else 200)
    print(f"{'model':<7}{'variant':<19}{'size MB':>8}{'accuracy':>10}{'same as fp32':>13}{'latency ms':>11}"
          f"{'speed-up':>9}{'forward ms':>11}{'speed-up':>9}{'images/s':>10}")
    for row in rows:
        print(f"{row.model:<7}{row.variant:<19}{row.size_mb:>8.1f}{row.accuracy:>10.2%}{row.agreement:>13.2%}"
              f"{row.latency_ms:>11.2f}{rows[0].latency_ms / row.latency_ms:>8.2f}x{row.forward_ms:>11.2f}"
              f"{rows[0].forward_ms / row.forward_ms:>8.2f}x{row.images_per_s:>10,.0f}")
    print(f"{rows[0].model}: {limit or 'all'} test images; latency = preprocessing a 280x280 drawing + forward, "
          "one thread, median of the best of 3 rounds (forward: that round's forward pass alone); "
          "images/s = batches of 1,000, one thread, best round")
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
