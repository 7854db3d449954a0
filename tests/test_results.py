"""Run records and the results table made from them (``python -m digitlib results``)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run, train_config

import digitlib as dl
from digitlib.results import (
    chosen_ensemble_record,
    ensemble_record,
    load_records,
    make_record,
    results_table,
    write_record,
)


def record(recipe: str, seed: int, val: float, test: float) -> dict:
    return {"recipe": recipe, "command": f"python -m digitlib train --seed {seed}", "settings": {"epochs": 6},
            "seed": seed, "val_accuracy_per_epoch": [val], "val_accuracy": val, "test_accuracy": test,
            "seconds": 60.0, "seconds_per_epoch": [10.0] * 6, "machine": "a CPU", "torch": "2", "date": "today"}


def test_table_has_a_row_per_recipe_with_mean_and_sample_std(tmp_path):
    for seed, (val, test) in enumerate([(0.995, 0.996), (0.997, 0.994)], start=1):
        write_record(record("short", seed, val, test), tmp_path)
    write_record(record("alone", 0, 0.99, 0.98), tmp_path)
    records = load_records(tmp_path)
    assert [(r["recipe"], r["seed"]) for r in records] == [("alone", 0), ("short", 1), ("short", 2)]
    table = results_table(records, recipes=["short", "alone"])
    lines = table.splitlines()
    assert lines[0].startswith("| recipe | seeds | epochs | validation % | test % |") and len(lines) == 4
    assert lines[2] == ("| short | 1, 2 | 6 | 99.60 ± 0.14 | 99.50 ± 0.14 | 99.60 ± 0.14 | — | 10 "
                        "| `python -m digitlib train --seed 1` |")  # no EMA: no raw weights to compare
    assert lines[3].startswith("| alone | 0 | 6 | 99.00 | 98.00 |")  # one seed: no spread to show


def test_table_compares_an_average_with_its_raw_weights(tmp_path):
    for seed, raw in enumerate([[0.98, 0.99], [0.97, 0.993]], start=1):
        write_record({**record("ema", seed, 0.995, 0.996), "raw_val_accuracy_per_epoch": raw}, tmp_path)
    assert "| 99.50 ± 0.00 | 99.15 ± 0.21 |" in results_table(load_records(tmp_path))  # best epoch of each run


def test_a_file_that_is_not_a_record_is_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"recipe": "x"}))
    with pytest.raises(ValueError, match="x.json is not a run record: command, settings"):
        load_records(tmp_path)


def test_results_command_prints_the_table_or_says_there_is_none(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIGITLIB_RESULTS", str(tmp_path))
    status, _, err = run(["results"], capsys)
    assert status == 2 and "no run records in" in err
    write_record(record("short", 1, 0.995, 0.996), tmp_path)
    status, out, _ = run(["results"], capsys)
    assert status == 0 and out.splitlines()[2].startswith("| short | 1 | 6 | 99.50 | 99.60 | 99.50 | — |")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Results\n{dl.results.BEGIN}\nold table\n{dl.results.END}\nafter\n")
    assert run(["results", "--readme", readme], capsys)[0] == 0
    assert readme.read_text() == f"# Results\n{dl.results.BEGIN}\n{out.strip()}\n{dl.results.END}\nafter\n"
    readme.write_text("no markers")
    status, _, err = run(["results", "--readme", readme], capsys)
    assert status == 2 and "no '<!-- results table" in err


def test_a_record_measures_the_saved_checkpoint_in_fp32(tmp_path):
    splits = dl.data.load_splits(seed=3, train_limit=300, test_limit=1000)
    dl.runtime.seed_everything(3)
    train_loader, val_loader, test_loader = dl.loaders.make_loaders(splits, 60, augment="none")
    model = dl.models.build_model("cnn")
    dl.training.fit(model, train_loader, val_loader, train_config(1, train_loader), device="cpu",
                    checkpoint=tmp_path / "m.pt", metadata=dl.checkpoints.run_metadata(splits, 3, "none"),
                    progress=False, log=None)
    made = make_record(tmp_path / "m.pt", "tiny", ["python", "-m", "digitlib", "train"])
    assert made["seed"] == 3 and made["epochs"] == 1 and made["settings"]["epochs"] == 1
    assert made["val_accuracy"] == pytest.approx(dl.training.test_step(model, val_loader)[1], abs=1e-9)
    assert made["test_accuracy"] == pytest.approx(dl.training.test_step(model, test_loader)[1], abs=1e-9)
    assert made["evaluation"].startswith("fp32") and made["command"] == "python -m digitlib train"
    pair = ensemble_record([made, made])  # two equal members: the ensemble is the member
    assert pair["test_accuracy"] == made["test_accuracy"] and pair["val_accuracy"] == made["val_accuracy"]
    assert pair["recipe"] == "tiny ensemble" and pair["seed"] == "3+3"
    write_record(pair, tmp_path / "results")
    assert results_table(load_records(tmp_path / "results")).splitlines()[2].startswith(
        f"| tiny ensemble | 3+3 | 1 | {100 * made['val_accuracy']:.2f} | {100 * made['test_accuracy']:.2f} | — |")

    # Beside it a network that answers "0" for every image, sure of it: chosen on validation, the ensemble
    # keeps only the trained one.
    untrained = tmp_path / "untrained.pt"
    always_zero = dl.models.build_model("cnn")
    with torch.no_grad():
        last = dl.confidence.final_linear(always_zero)
        last.weight.zero_()
        last.bias.copy_(torch.tensor([50.0] + [0.0] * 9))
    dl.checkpoints.save_checkpoint(untrained, always_zero, **dl.checkpoints.run_metadata(splits, 3, "none"))
    guess = {**made, "recipe": "guess", "seed": 4, "checkpoint": str(untrained)}
    chosen = chosen_ensemble_record([guess, made])
    assert chosen["members"] == [made["checkpoint"]] and chosen["weights"] == [1]
    assert chosen["val_accuracy"] == made["val_accuracy"] and chosen["test_accuracy"] == made["test_accuracy"]
    assert chosen["recipe"] == "tiny chosen on validation" and chosen["seed"] == "m"  # several recipes: names

    # Runs split with their own seeds share no validation images: no choice, and no validation figure.
    other_split = {**made, "data": {**made["data"], "split_seed": 5}}
    with pytest.raises(ValueError, match="held out different validation images"):
        chosen_ensemble_record([other_split, made])
    assert ensemble_record([other_split, made])["val_accuracy"] is None


def test_shifted_predictions_average_the_moved_images():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10), torch.nn.LogSoftmax(dim=1))
    x, y = torch.randn(5, 1, 4, 4), torch.arange(5)
    plain, labels = dl.evaluation.predict_proba(model, [(x, y)], "cpu")
    assert torch.equal(labels, y) and torch.allclose(plain, model(x).exp())
    shifted, _ = dl.evaluation.predict_proba(model, [(x, y)], "cpu", dl.evaluation.SMALL_SHIFTS)
    down = torch.cat([x[:, :, -1:], x[:, :, :-1]], dim=2)  # every row one down; the last wraps to the top
    views = [x, down, x.roll(-1, 2), x.roll(1, 3), x.roll(-1, 3)]
    assert torch.allclose(shifted, torch.stack([model(v).exp() for v in views]).mean(0), atol=1e-6)
