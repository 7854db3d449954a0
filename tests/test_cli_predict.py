"""``python -m digitlib predict`` and ``evaluate``, run in this process on the small trained checkpoints."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import run, use_models_folder
from PIL import Image

import digitlib as dl
from digitlib.checkpoints import load_checkpoint


def _white_on_black(digit: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)


def _dark_on_white(digit: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BILINEAR)


def _transparent(digit: np.ndarray, side: int) -> Image.Image:
    alpha = _white_on_black(digit, side)
    strokes = Image.new("RGBA", alpha.size, (20, 40, 160, 0))
    strokes.putalpha(alpha)
    return strokes


# name → how the MNIST digit is written to disk: every format and polarity a user might bring
WRITERS = {
    "scaled.png": lambda digit: _white_on_black(digit, 280),
    "inverted.jpg": lambda digit: _dark_on_white(digit, 200).convert("RGB"),
    "transparent.png": lambda digit: _transparent(digit, 140),
    "paper.bmp": lambda digit: _dark_on_white(digit, 100).convert("RGB"),
    "palette.gif": lambda digit: _dark_on_white(digit, 56).convert("RGB").quantize(32),
}


@pytest.fixture(scope="module")
def good_images(trained_checkpoints, tmp_path_factory):
    """{path: label}: test digits the CNN reads with > 99 % confidence directly, one per format."""
    images, labels = dl.data.load_mnist(train=False)
    model, info = load_checkpoint(trained_checkpoints["cnn"])
    with torch.inference_mode():
        normalization = info["normalization"]
        probabilities = model(dl.data.normalize(images[:100], normalization["mean"], normalization["std"])).exp()
    confident, seen = [], set()
    for index in torch.nonzero(probabilities.max(dim=1).values > 0.99).flatten().tolist():
        if labels[index].item() not in seen:  # different digits, so a constant answer cannot pass
            seen.add(labels[index].item())
            confident.append(index)
    assert len(confident) >= len(WRITERS)
    folder = tmp_path_factory.mktemp("digits")
    files = {}
    # There may be more confident digits than formats: the extra ones go unused.
    for (name, write), index in zip(WRITERS.items(), confident, strict=False):
        path = folder / f"{labels[index].item()}-{name}"
        write(images[index].numpy()).save(path)
        files[path] = labels[index].item()
    return files


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    """{path: what the error line must say}: a missing file, a text file, a blank page, a huge image."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "x.png").write_text("not a picture\n")
    Image.new("L", (200, 200), 255).save(folder / "blank.png")
    Image.new("1", (9000, 9000)).save(folder / "huge.png")
    return {
        folder / "missing.png": "no such file",
        folder / "x.png": "not an image",
        folder / "blank.png": "blank",
        folder / "huge.png": "too large",
    }


def table_rows(out: str) -> dict[str, str]:
    """Predict's table as {file: the rest of its line}, without the header lines."""
    rows = {}
    for line in out.splitlines()[2:]:
        file, _, rest = line.partition("  ")
        rows[file.strip()] = rest.strip()
    return rows


def test_predict_reads_every_format(good_images, trained_checkpoints, capsys):
    status, out, err = run(["predict", *good_images, "--model", trained_checkpoints["cnn"]], capsys)
    assert (status, err) == (0, "")
    header = out.splitlines()[:2]
    assert str(trained_checkpoints["cnn"]) in header[0] and "cnn" in header[0] and "val accuracy" in header[0]
    assert header[1].split() == ["image", "digit", "probability"]
    rows = table_rows(out)
    assert list(rows) == [str(path) for path in good_images]
    for path, label in good_images.items():
        digit, probability = rows[str(path)].split()
        assert int(digit) == label, f"{path.name} read as {digit}"
        assert 0 < float(probability.rstrip("%")) <= 100


def test_predict_json(good_images, trained_checkpoints, capsys):
    status, out, err = run(["predict", *good_images, "--model", trained_checkpoints["cnn"], "--json"], capsys)
    assert (status, err) == (0, "")
    results = json.loads(out)
    assert [result["file"] for result in results] == [str(path) for path in good_images]
    for result, label in zip(results, good_images.values(), strict=True):
        assert set(result) == {"file", "digit", "probability", "top", "rejected", "reason"}
        assert result["rejected"] is False and result["reason"] is None  # clear digits (test_confidence: a dot)
        assert result["digit"] == label and 0 < result["probability"] <= 1
        assert result["top"] == [{"digit": result["digit"], "probability": result["probability"]}]


def test_predict_top_3_lists_three_digits_most_likely_first(good_images, trained_checkpoints, capsys):
    status, out, _ = run(["predict", *good_images, "--model", trained_checkpoints["cnn"], "--top", "3"], capsys)
    assert status == 0 and out.splitlines()[1].split()[-2:] == ["top", "3"]
    for _path, rest in table_rows(out).items():
        top_column = rest.split("  ", 2)[-1]
        top = [(int(digit), float(percent)) for digit, percent in re.findall(r"(\d) (\d+\.\d)%", top_column)]
        assert len(top) == 3 and len({digit for digit, _ in top}) == 3, rest
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
        assert top[0][0] == int(rest.split()[0])

    status, out, _ = run(
        ["predict", *good_images, "--model", trained_checkpoints["cnn"], "--top", "3", "--json"], capsys
    )
    for result in json.loads(out):
        probabilities = [entry["probability"] for entry in result["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-6


def test_bad_files_get_one_line_each_and_the_good_ones_are_still_read(
    good_images, bad_images, trained_checkpoints, capsys
):
    good = list(good_images)
    mixed = list(bad_images)[:2] + good + list(bad_images)[2:]
    status, out, err = run(["predict", *mixed, "--model", trained_checkpoints["cnn"]], capsys)
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == len(bad_images), err
    for line, (path, reason) in zip(lines, bad_images.items(), strict=True):
        assert line.startswith(f"error: {path}: ") and reason in line, line
        assert "Traceback" not in line
    rows = table_rows(out)
    assert {int(rows[str(path)].split()[0]) for path in good} == set(good_images.values())
    assert all(str(path) not in rows for path in bad_images)


def test_bad_files_with_json_still_give_valid_json(good_images, bad_images, trained_checkpoints, capsys):
    status, out, err = run(
        ["predict", *bad_images, *good_images, "--model", trained_checkpoints["cnn"], "--json"], capsys
    )
    assert status == 1 and len(err.splitlines()) == len(bad_images)
    assert [result["file"] for result in json.loads(out)] == [str(path) for path in good_images]


def test_only_bad_files(bad_images, trained_checkpoints, capsys):
    status, _, err = run(["predict", *bad_images, "--model", trained_checkpoints["cnn"]], capsys)
    assert status == 1 and len(err.splitlines()) == len(bad_images)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [(None, "no checkpoint at"), (b"garbage, not a checkpoint", "is not a PyTorch checkpoint")],
    ids=["missing", "garbage"],
)
def test_a_missing_or_corrupt_checkpoint_is_one_line_and_exit_2(
    good_images, tmp_path, capsys, command, checkpoint, message
):
    path = tmp_path / "model.pt"
    if checkpoint is not None:
        path.write_bytes(checkpoint)
    images = list(good_images)[:1] if command == "predict" else []
    status, out, err = run([command, *images, "--model", path], capsys)
    assert status == 2 and out == ""
    assert (
        len(err.splitlines()) == 1 and err.startswith(f"error: {path}" if checkpoint else "error: ") and message in err
    )


def test_predict_defaults_to_the_best_checkpoint_in_the_models_folder(good_images, trained_checkpoints, tmp_path,
                                                                      monkeypatch, capsys):
    shutil.copy(trained_checkpoints["resnet"], tmp_path / "resnet.pt")
    use_models_folder(monkeypatch, tmp_path)
    status, out, _ = run(["predict", *good_images], capsys)
    assert status == 0 and f"model {tmp_path / 'resnet.pt'} (resnet" in out.splitlines()[0]


def test_no_checkpoint_at_all_says_how_to_train_one(good_images, tmp_path, monkeypatch, capsys):
    use_models_folder(monkeypatch, tmp_path)
    status, out, err = run(["predict", *good_images], capsys)
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert "no usable checkpoint" in err and "python -m digitlib train" in err


def test_predict_flag_errors(good_images, capsys):
    status, _, err = run(["predict", *good_images, "--top", "0"], capsys)
    assert status == 2 and "'0' is not a whole number from 1 to 10" in err
    status, _, err = run(["predict"], capsys)
    assert status == 2 and "IMAGE" in err


def test_evaluate_prints_the_headline_metrics(trained_checkpoints, capsys):
    status, out, err = run(
        ["evaluate", "--model", trained_checkpoints["cnn"], "--limit", "500", "--repeats", "5", "--device", "cpu"],
        capsys,
    )
    assert (status, err) == (0, "")
    assert out.startswith(f"{trained_checkpoints['cnn']}: cnn, ")
    assert re.search(r"^test images\s+500$", out, re.MULTILINE)
    accuracy, correct = re.search(r"^accuracy\s+(\d+\.\d+)%\s+\((\d+) correct\)", out, re.MULTILINE).groups()
    assert float(accuracy) == pytest.approx(int(correct) / 5, abs=0.01) and float(accuracy) > 90
    assert 0 < float(re.search(r"^loss\s+(\d+\.\d+)", out, re.MULTILINE).group(1)) < 1
    per_class = re.search(r"^\s+acc\s+(.*)$", out, re.MULTILINE).group(1).split()
    assert len(per_class) == 10
    assert "most-confused pairs" in out
    median_ms = float(re.search(r"^latency\s+(\d+\.\d+) ms median", out, re.MULTILINE).group(1))
    assert 0 < median_ms < 50
    assert float(re.search(r"^throughput\s+([\d,]+) images/s", out, re.MULTILINE).group(1).replace(",", "")) > 0


def test_evaluate_without_timing(trained_checkpoints, capsys):
    status, out, _ = run(["evaluate", "--model", trained_checkpoints["resnet"], "--limit", "200", "--repeats", "0",
                          "--device", "cpu"], capsys)
    assert status == 0 and "resnet" in out.splitlines()[0]
    assert "latency" not in out and "throughput" not in out


def test_evaluate_several_checkpoints_reports_members_and_ensemble(trained_checkpoints, capsys):
    status, out, err = run(["evaluate", "--model", trained_checkpoints["cnn"], trained_checkpoints["resnet"],
                            "--limit", "300", "--device", "cpu"], capsys)
    assert (status, err) == (0, "")
    members = {arch: re.search(rf"^{re.escape(str(path))}\s+{arch}\s+([\d.]+)%\s+(\d+)", out, re.MULTILINE)
               for arch, path in trained_checkpoints.items()}
    assert all(members.values()), out
    average = re.search(r"^ensemble: mean of probabilities\s+([\d.]+)%\s+(\d+)", out, re.MULTILINE)
    vote = re.search(r"^ensemble: majority vote\s+([\d.]+)%\s+(\d+)", out, re.MULTILINE)
    assert average and vote
    wrong = re.search(r"^test images it still gets wrong \((\d+)\)", out, re.MULTILINE)
    assert wrong and int(wrong.group(1)) == int(average.group(2))
    listed = re.findall(r"^\s+(\d+)\s+(\d) -> (\d) \((\d+)%\)$", out, re.MULTILINE)
    assert len(listed) == int(wrong.group(1)) and all(true != predicted for _, true, predicted, _ in listed)
    assert "latency" not in out  # timings are for one model


def test_predict_with_an_ensemble(good_images, trained_checkpoints, capsys):
    status, out, err = run(["predict", *good_images, "--model", trained_checkpoints["cnn"],
                            "--model", trained_checkpoints["resnet"], "--json"], capsys)
    assert status == 0, err
    results = json.loads(out)
    assert [result["digit"] for result in results] == list(good_images.values())
    status, out, _ = run(["predict", *good_images, "--model", trained_checkpoints["cnn"],
                          "--model", trained_checkpoints["resnet"]], capsys)
    assert status == 0 and out.startswith("ensemble of 2, mean of probabilities: ")
