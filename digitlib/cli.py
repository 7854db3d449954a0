"""``python -m digitlib``: data, train, bench (evaluate and predict join them later in the course).

Expected failures (missing data, a bad checkpoint, an unreadable image) print one line on
stderr and exit with status 2; argparse reports bad flags itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import models_dir, smoke_test
from .errors import DigitlibError

SHARED_MNIST = Path("../shared/mnist")


def _add_data_command(commands) -> None:
    parser = commands.add_parser("data", help="make MNIST ready in the data folder")
    parser.add_argument(
        "--source", type=Path, default=None,
        help="folder holding the four original MNIST .gz files to copy (default: ../shared/mnist if it "
        "exists, else torchvision downloads them)",
    )
    parser.set_defaults(handler=_data)


def _data(args) -> int:
    from . import data

    source = args.source or (SHARED_MNIST if SHARED_MNIST.is_dir() else None)
    folder = data.prepare(source)
    print(f"MNIST ready in {folder}" + (f" (copied from {source})" if source else ""))
    return 0


def _add_train_command(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a model and save a checkpoint",
        description="Train DigitCNN or DigitResNet on the 80 %% training split, keep the best epoch by "
        "validation accuracy, report test accuracy, and save a checkpoint.",
    )
    parser.add_argument("--model", choices=("cnn", "resnet"), default="cnn", help="architecture (default: cnn)")
    parser.add_argument("--epochs", type=_positive_int, default=15, help="training epochs (default: 15)")
    parser.add_argument("--batch-size", type=_positive_int, default=128, help="training batch size (default: 128)")
    parser.add_argument("--lr", type=_positive_float, default=1e-3, help="AdamW's initial learning rate (default: 1e-3)")
    parser.add_argument("--max-lr", type=_positive_float, default=1e-2, help="OneCycleLR's peak learning rate (default: 1e-2)")
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW's weight decay (default: 1e-2)")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None,
        help="mixed precision with torch.autocast (default: on for CUDA, off elsewhere)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for split, initialisation, shuffling, augmentation (default: 0)")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: auto)")
    parser.add_argument("--workers", type=_non_negative_int, default=1, help="DataLoader worker processes for augmentation (default: 1)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    parser.add_argument(
        "--limit", type=_positive_int, default=None,
        help="use only this many of the 60,000 training images and 1,000 test images (quick runs; "
        "DIGITLIB_SMOKE=1 implies 2,000)",
    )
    parser.add_argument("--out", type=Path, default=None, help="checkpoint path (default: models/<model>.pt)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    parser.set_defaults(handler=_train)


def _train(args) -> int:
    from . import data, training
    from .checkpoints import update_checkpoint
    from .models import build_model, count_parameters

    limit = args.limit or (2000 if smoke_test() else None)
    out = args.out or models_dir() / f"{args.model}.pt"
    training.seed_everything(args.seed)
    splits = data.load_splits(seed=args.seed, train_limit=limit, test_limit=1000 if limit else None)
    train_loader, val_loader, test_loader = data.make_loaders(
        splits, args.batch_size, augment=args.augment, num_workers=args.workers, seed=args.seed
    )
    model = build_model(args.model)
    device = training.pick_device(args.device)
    print(
        f"{args.model}: {count_parameters(model):,} parameters, {len(splits.train_labels):,} training / "
        f"{len(splits.val_labels):,} validation images, device {device}"
    )
    try:
        history = training.fit(
            model, train_loader, val_loader, args.epochs, lr=args.lr, max_lr=args.max_lr,
            weight_decay=args.weight_decay, amp=args.amp, device=device, checkpoint=out, resume=args.resume,
            metadata={"normalization": {"mean": splits.mean, "std": splits.std}, "seed": args.seed},
            progress=sys.stderr.isatty(),
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: {out} keeps the best epoch so far; continue with the same flags plus --resume",
              file=sys.stderr)
        return 130
    test_loss, test_accuracy = training.test_step(model, test_loader, device, training.amp_dtype(device, args.amp))
    best = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
    update_checkpoint(out, metrics={
        "val_loss": history["val_loss"][best], "val_accuracy": history["val_accuracy"][best],
        "test_loss": test_loss, "test_accuracy": test_accuracy, "test_images": len(splits.test_labels),
    })
    print(f"best epoch {best + 1}: val accuracy {history['val_accuracy'][best]:.2%}")
    print(f"test accuracy {test_accuracy:.2%} (loss {test_loss:.4f}, {len(splits.test_labels):,} images), "
          f"{sum(history['seconds']):.0f}s training, saved {out}")
    return 0


def _add_bench_command(commands) -> None:
    parser = commands.add_parser(
        "bench", help="measure training throughput and the CNN's time to 99.2 %% test accuracy",
        description="Print images/s and seconds per epoch for both models on this device, then train "
        "DigitCNN and report the wall time until its test accuracy first reaches the target.",
    )
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: auto)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (default: on for CUDA, off elsewhere)")
    parser.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[128], help="batch sizes to time (default: 128)")
    parser.add_argument("--workers", type=_non_negative_int, nargs="+", default=[1], help="worker counts to time (default: 1)")
    parser.add_argument("--batches", type=_positive_int, default=None,
                        help="time this many batches instead of a whole epoch (quicker sweeps)")
    parser.add_argument("--target", type=float, default=0.992, help="test accuracy to reach (default: 0.992)")
    parser.add_argument("--target-epochs", type=_non_negative_int, default=4,
                        help="length of the time-to-accuracy run; 0 skips it (default: 4)")
    parser.set_defaults(handler=_bench)


def _bench(args) -> int:
    from . import bench, data

    splits = data.load_splits(train_limit=2000 if smoke_test() else None, test_limit=1000 if smoke_test() else None)
    print(f"{'model':<8}{'device':<8}{'amp':<10}{'batch':>6}{'workers':>8}{'images/s':>10}{'s/epoch':>9}")
    for arch in ("cnn", "resnet"):
        for batch_size in args.batch_sizes:
            for workers in args.workers:
                row = bench.training_throughput(arch, splits, batch_size, workers, args.batches, args.device, args.amp)
                print(f"{row['model']:<8}{row['device']:<8}{row['amp']:<10}{row['batch_size']:>6}{row['workers']:>8}"
                      f"{row['images_per_s']:>10.0f}{row['epoch_s']:>9.1f}", flush=True)
    if args.target_epochs:
        result = bench.time_to_accuracy(splits, args.target, args.target_epochs, device=args.device)
        per_epoch = "  ".join(f"{a:.2%}" for a in result["test_accuracy_per_epoch"])
        print(f"cnn test accuracy after each epoch: {per_epoch}")
        if result["seconds_to_target"] is None:
            print(f"cnn did not reach {args.target:.1%} in {args.target_epochs} epochs ({result['total_s']:.0f}s)")
        else:
            print(f"cnn reached {args.target:.1%} test accuracy after {result['seconds_to_target']:.0f}s of training")
    return 0


def _number(kind, minimum: float, exclusive: bool, wording: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wording}") from None
        if value < minimum or (exclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wording}")
        return value
    return parse


_positive_int = _number(int, 0, True, "a positive whole number")
_non_negative_int = _number(int, 0, False, "a whole number of 0 or more")
_positive_float = _number(float, 0.0, True, "a positive number")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m digitlib", description="The digits course's command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data_command, _add_train_command, _add_bench_command):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except DigitlibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
