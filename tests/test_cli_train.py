"""``python -m digitlib train`` and ``bench``: help, flag errors, a tiny run, and clear failures."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from helpers import run, use_models_folder

import digitlib as dl
from digitlib.checkpoints import load_checkpoint, read_checkpoint

TRAIN_FLAGS = [
    "--model", "--epochs", "--batch-size", "--lr", "--max-lr", "--weight-decay", "--amp", "--no-amp", "--seed",
    "--device", "--augment", "--workers", "--limit", "--out", "--force", "--resume", "--label-smoothing",
    "--ema-decay", "--record",
]
BENCH_FLAGS = ["--device", "--amp", "--no-amp", "--models", "--augment", "--batch-sizes", "--workers", "--threads",
               "--batches", "--target", "--target-epochs"]


def test_module_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "digitlib", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m digitlib")
    for command in ("data", "train", "bench"):
        assert re.search(rf"^\s+{command}\s+\w", result.stdout, re.MULTILINE), command


@pytest.mark.parametrize(("command", "flags"), [("train", TRAIN_FLAGS), ("bench", BENCH_FLAGS)])
def test_help_explains_every_flag(capsys, command, flags):
    status, out, _ = run([command, "--help"], capsys)
    assert status == 0
    for flag in flags:
        assert re.search(rf"(^|[\s,/]){flag}\b", out), f"{flag} missing from `{command} --help`"
    epochs = ", ".join(f"{run.epochs} for {arch}" for arch, run in dl.config.FULL_RUNS.items())
    assert f"(default: {epochs})" in out or command == "bench"


@pytest.mark.parametrize(("name", "commands"), [
    ("device", ["train", "models", "bench", "evaluate"]), ("amp", ["train", "bench"]),
    ("augment", ["train", "bench"]), ("workers", ["train", "bench"]), ("epochs", ["train", "models"]),
])
def test_a_shared_option_says_the_same_in_every_command(capsys, name, commands):
    flag, spec = dl.cli.SHARED_OPTIONS[name]
    said = " ".join(spec["help"].replace("%(default)s", str(spec["default"])).split())
    for command in commands:
        status, out, _ = run([command, "--help"], capsys)
        assert status == 0 and flag in out
        assert said.removesuffix(")").rsplit("(default: ", 1)[0] in " ".join(out.split()), (command, flag)


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--epochs", "0"], "argument --epochs: '0' is not a positive whole number"),
    (["train", "--batch-size", "many"], "argument --batch-size: 'many' is not a positive whole number"),
    (["train", "--lr", "-1"], "argument --lr: '-1' is not a finite positive number"),
    (["train", "--ema-decay", "1"], "argument --ema-decay: '1' is not 0 (no average) or a decay below 1"),
    (["train", "--label-smoothing", "1"], "argument --label-smoothing: '1' is not a number from 0 to below 1"),
    (["train", "--workers", "-2"], "argument --workers: '-2' is not a whole number of 0 or more"),
    (["train", "--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["bench", "--batches", "0"], "argument --batches: '0' is not a positive whole number"),
    (["fly"], "invalid choice: 'fly'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_flags_get_argparse_errors(capsys, argv, message):
    status, out, err = run(argv, capsys)
    assert status == 2 and out == ""
    assert err.startswith("usage: python -m digitlib")
    assert message in err


def test_tiny_training_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIGITLIB_RESULTS", str(tmp_path / "results"))
    out_path = tmp_path / "x.pt"
    argv = ["train", "--model", "cnn", "--epochs", "2", "--batch-size", "32", "--augment", "none", "--limit", "600"]
    status, out, err = run([*argv, "--out", str(out_path), "--record", "tiny"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    device = dl.runtime.pick_device()
    assert lines[0] == f"cnn: 3,274,634 parameters, 480 training / 120 validation images, device {device}"
    for epoch, line in enumerate(lines[1:3], start=1):
        assert re.fullmatch(
            rf"epoch +{epoch}/2  train loss [\d.]+ acc [\d.]+%  val loss [\d.]+ acc [\d.]+% +[\d.]+s( +\*)?", line
        )
    printed = re.search(r"^test accuracy ([\d.]+)% \(fp32, loss [\d.]+, 1,000 images\), .* saved (.+)$", out,
                        re.MULTILINE)
    assert printed and printed.group(2) == str(out_path)

    model, info = load_checkpoint(out_path, arch="cnn")
    metrics = info["metrics"]
    assert metrics["test_images"] == 1000
    assert round(100 * metrics["test_accuracy"], 2) == float(printed.group(1))
    assert metrics["test_accuracy"] > 0.5  # 30 steps on 480 images: far above chance
    assert {"val_accuracy", "val_loss", "test_loss"} <= metrics.keys()
    assert set(info["normalization"]) == {"mean", "std"} and info["seed"] == 0
    assert info["training"]["epochs"] == 2 and info["training"]["batch_size"] == 32 and info["resume"] is None
    assert info["training"]["ema_decay"] is None  # a quick run (--limit) averages no weights: too few steps
    (record,) = dl.results.load_records(tmp_path / "results")  # --record: the run and its fp32 figures
    assert record["recipe"] == "tiny" and record["seed"] == 0 and record["command"].endswith("--record tiny")
    assert record["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=0.002)  # batch sizes differ
    assert f"recorded {tmp_path / 'results' / 'tiny-seed0.json'}" in out

    # The run finished, so --resume has nothing to do: one clear line, exit 2.
    status, out, err = run([*argv, "--out", str(out_path), "--resume"], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "nothing to resume" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_one_line(capsys, tmp_path):
    for device, message in (("cuda", "'cuda' is not available here"), ("gpu", "'gpu' is not a device")):
        status, out, err = run(["train", "--device", device, "--out", str(tmp_path / "x.pt")], capsys)
        assert status == 2 and out == ""
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x.pt").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, checkpoint, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dl.training, "fit", interrupted)
    status, _, err = run(["train", "--limit", "600", "--out", str(tmp_path / "x.pt")], capsys)
    assert status == 130 and "no epoch had finished, so nothing was saved" in err

    def interrupted_after_saving(*args, checkpoint, **kwargs):  # as if an epoch had been saved: a resume state
        dl.checkpoints.save_checkpoint(checkpoint, dl.models.build_model("cnn"), resume={"epoch": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(dl.training, "fit", interrupted_after_saving)
    status, _, err = run(["train", "--limit", "600", "--out", str(tmp_path / "y.pt")], capsys)
    assert status == 130
    assert "keeps the best epoch so far" in err and "--resume" in err


def test_bench_prints_a_row_per_model_and_pipeline(capsys, monkeypatch):
    monkeypatch.setenv("DIGITLIB_SMOKE", "1")
    status, out, err = run(
        ["bench", "--batches", "3", "--target-epochs", "0", "--batch-sizes", "16", "--threads", "1",
         "--augment", "device", "albumentations"],
        capsys,
    )
    assert status == 0, err
    threading, header, *rows = out.splitlines()
    assert threading.startswith("CPU threading: ") and "OMP_WAIT_POLICY=" in threading
    assert header.split() == ["model", "device", "amp", "augment", "batch", "workers", "threads", "data", "s",
                              "fwd+bwd", "s", "optim", "s", "images/s", "s/epoch"]
    assert [row.split()[:4:3] for row in rows] == [["cnn", "device"], ["cnn", "albumentations"],
                                                   ["resnet", "device"], ["resnet", "albumentations"]]
    for row in rows:
        _, device, amp, _, batch, _, threads, data_s, compute_s, optim_s, images_per_s, epoch_s = row.split()
        assert (device, batch, threads) == (str(dl.runtime.pick_device()), "16", "1")
        if device == "cpu":  # AMP is on by default only on CPUs with bf16 hardware
            assert amp == ("bfloat16" if dl.runtime.cpu_has_bf16() else "off")
        # Three small steps' optimizer updates (clipping is timed with the backward pass) can round to 0.00 s.
        assert float(compute_s) > 0 and float(data_s) >= 0 and float(optim_s) >= 0
        assert float(images_per_s) > 0 and float(epoch_s) > 0


def test_bench_time_to_accuracy(capsys, monkeypatch):
    monkeypatch.setenv("DIGITLIB_SMOKE", "1")
    status, out, err = run(["bench", "--models", "cnn", "--batches", "2", "--target", "0.5", "--target-epochs", "2"],
                           capsys)
    assert status == 0, err
    accuracies = re.search(r"^cnn validation accuracy after each epoch: (.*)$", out, re.MULTILINE).group(1).split()
    assert len(accuracies) == 2
    assert re.search(r"^cnn reached 50.0% validation accuracy after [\d.]+s of training", out, re.MULTILINE)


def test_models_trains_the_set_then_skips_and_resumes(tmp_path, tmp_path_factory, monkeypatch, capsys):
    use_models_folder(monkeypatch, tmp_path)
    results = tmp_path_factory.mktemp("results")
    monkeypatch.setenv("DIGITLIB_RESULTS", str(results))
    argv = ["models", "--models", "cnn", "--seeds", "2", "--epochs", "2", "--limit", "300", "--device", "cpu",
            "--record", "set"]

    def ctrl_c(line):  # fit saves each epoch before it logs it
        raise KeyboardInterrupt

    quick = tmp_path / "quick"  # --limit and --epochs make quick runs: never models/cnn.pt
    with monkeypatch.context() as patch:  # Ctrl-C once seed 0's first epoch is saved
        patch.setattr(dl.cli, "_print_now", ctrl_c)
        status, _, err = run(argv, capsys)
    assert status == 130 and err.strip() == (f"interrupted: {quick / 'cnn.pt'} keeps the best epoch so far; "
                                             "run the same command again to continue it")
    assert read_checkpoint(quick / "cnn.pt")["resume"]["epoch"] == 1

    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert f"=== cnn, seed 0 → {quick / 'cnn.pt'} (resuming)" in out
    assert f"=== cnn, seed 1 → {quick / 'seeds' / 'cnn-seed1.pt'}" in out
    for path, seed in ((quick / "cnn.pt", 0), (quick / "seeds" / "cnn-seed1.pt", 1)):
        saved = read_checkpoint(path)
        assert saved["resume"] is None and saved["seed"] == seed and 0 < saved["metrics"]["test_accuracy"] <= 1
        assert saved["data"]["split_seed"] == 0  # every seed holds out the same images: one validation set
    assert sorted(path.name for path in tmp_path.iterdir()) == ["quick"]
    assert [(r["recipe"], r["seed"], r["command"]) for r in dl.results.load_records(results)] == [
        ("set-cnn", seed, "python -m digitlib " + " ".join(argv)) for seed in (0, 1)]  # one record per run

    status, out, _ = run(argv, capsys)
    assert status == 0 and out.count("already trained with these settings, skipped") == 2
