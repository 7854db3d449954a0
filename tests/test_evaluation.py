"""``digitlib.evaluation`` on the small trained checkpoints and the 1,000-image test slice."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import use_models_folder

import digitlib as dl
from digitlib import data, evaluation
from digitlib.checkpoints import load_checkpoint, update_checkpoint
from digitlib.errors import CheckpointError


@pytest.fixture(scope="module")
def test_outputs(trained_checkpoints, small_splits):
    """{"cnn": (probabilities, labels), "resnet": ...} on small_splits' test images."""
    outputs = {}
    for arch, path in trained_checkpoints.items():
        model, info = load_checkpoint(path)
        loader = evaluation.make_test_loader(
            small_splits.test_images, small_splits.test_labels,
            info["normalization"]["mean"], info["normalization"]["std"],
        )
        outputs[arch] = evaluation.predict_proba(model, loader, "cpu")
    return outputs


def test_predict_proba_gives_a_distribution_per_image(test_outputs, small_splits):
    probabilities, labels = test_outputs["cnn"]
    assert probabilities.shape == (len(small_splits.test_labels), 10)
    assert torch.equal(labels, small_splits.test_labels)
    assert probabilities.min() >= 0
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(labels)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_classification_metrics_are_consistent(test_outputs, arch):
    probabilities, labels = test_outputs[arch]
    metrics = evaluation.classification_metrics(probabilities, labels)
    predictions = probabilities.argmax(dim=1)
    assert metrics["n"] == len(labels) == 1000
    assert metrics["correct"] == int((predictions == labels).sum())
    assert metrics["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    assert 0.9 < metrics["accuracy"] <= 1  # the fixture models are about 96 % accurate
    expected_loss = torch.nn.functional.nll_loss(probabilities.log(), labels).item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-4) and 0 < metrics["loss"] < 1
    per_class = metrics["per_class_accuracy"]
    assert per_class.shape == (10,) and ((0 <= per_class) & (per_class <= 1)).all()
    counts = np.bincount(labels.numpy(), minlength=10)
    assert (per_class * counts).sum() == pytest.approx(metrics["correct"])


def test_loss_stays_finite_when_a_probability_underflows():
    probabilities = torch.tensor([[1.0] + [0.0] * 9, [0.0] * 9 + [1.0]])
    metrics = evaluation.classification_metrics(probabilities, torch.tensor([0, 0]))
    assert metrics["accuracy"] == 0.5 and np.isfinite(metrics["loss"]) and metrics["loss"] > 10


def test_confusion_matrix_counts_every_image_once(test_outputs):
    probabilities, labels = test_outputs["cnn"]
    predictions = probabilities.argmax(dim=1)
    matrix = evaluation.confusion_matrix(labels, predictions)
    assert matrix.shape == (10, 10)
    assert matrix.sum() == len(labels)
    assert np.trace(matrix) == int((predictions == labels).sum())
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(labels.numpy(), minlength=10))
    assert matrix[labels[0], predictions[0]] >= 1
    rows = evaluation.confusion_matrix(labels, predictions, normalize="true")
    np.testing.assert_allclose(rows.sum(axis=1), 1)
    np.testing.assert_allclose(rows.diagonal(), evaluation.per_class_accuracy(labels, predictions))


def test_classification_report_lists_all_ten_digits(test_outputs):
    probabilities, labels = test_outputs["cnn"]
    predictions = probabilities.argmax(dim=1)
    text = evaluation.classification_report(labels, predictions)
    lines = [line.split() for line in text.splitlines() if line.strip()]
    assert [line[0] for line in lines if line[0].isdigit()] == [str(digit) for digit in range(10)]
    report = evaluation.classification_report(labels, predictions, output_dict=True)
    assert sum(report[str(digit)]["support"] for digit in range(10)) == len(labels)
    assert report["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    names = data.class_names("fashion")  # any ten names: the rows are labelled by them, in label order
    named = evaluation.classification_report(labels, predictions, output_dict=True, classes=names)
    assert [named[name]["support"] for name in names] == [report[str(digit)]["support"] for digit in range(10)]
    with pytest.raises(ValueError, match="names 9 classes"):
        evaluation.classification_report(labels, predictions, classes=names[:9])


def test_most_confused_lists_off_diagonal_pairs_by_count(test_outputs):
    probabilities, labels = test_outputs["cnn"]
    matrix = evaluation.confusion_matrix(labels, probabilities.argmax(dim=1))
    pairs = evaluation.most_confused(matrix, top=5)
    assert 1 <= len(pairs) <= 5  # a 96 % model makes some mistakes
    counts = [count for _, _, count in pairs]
    assert counts == sorted(counts, reverse=True)
    off_diagonal = matrix - np.diag(matrix.diagonal())
    assert counts[0] == off_diagonal.max()
    for true, predicted, count in pairs:
        assert true != predicted and matrix[true, predicted] == count > 0
    everything = evaluation.most_confused(matrix, top=100)
    assert sum(count for _, _, count in everything) == matrix.sum() - np.trace(matrix)


def test_most_confused_is_empty_when_nothing_is_wrong():
    assert evaluation.most_confused(np.diag(np.arange(1, 11))) == []


def test_misclassified_rows_are_real_mistakes(test_outputs):
    probabilities, labels = test_outputs["cnn"]
    table = evaluation.misclassified(probabilities, labels)
    assert len(table) == int((probabilities.argmax(dim=1) != labels).sum()) > 0
    assert list(table.columns) == [
        "index", "true", "predicted", "probability", "second", "second_probability", "true_probability"
    ]
    assert table["probability"].is_monotonic_decreasing
    for row in table.itertuples():
        image = probabilities[row.index]
        assert row.true == labels[row.index] != row.predicted == int(image.argmax())
        assert row.probability >= row.second_probability and row.second != row.predicted
        assert row.probability == pytest.approx(float(image.max()))
        assert row.true_probability == pytest.approx(float(image[row.true]))
        assert row.true_probability <= row.probability


def test_average_probabilities_of_two_models(test_outputs):
    (cnn_probabilities, labels), (resnet_probabilities, _) = test_outputs["cnn"], test_outputs["resnet"]
    ensemble = evaluation.average_probabilities(cnn_probabilities, resnet_probabilities)
    assert ensemble.shape == cnn_probabilities.shape
    torch.testing.assert_close(ensemble.sum(dim=1), torch.ones(len(labels)), atol=1e-5, rtol=0)
    torch.testing.assert_close(ensemble, (cnn_probabilities + resnet_probabilities) / 2)
    assert evaluation.classification_metrics(ensemble, labels)["accuracy"] > 0.9


def test_as_drawing_is_dark_ink_on_white(small_splits):
    drawing = evaluation.as_drawing(small_splits.test_images[0], side=140)
    assert drawing.mode == "RGB" and drawing.size == (140, 140)
    assert np.asarray(drawing)[0, 0].tolist() == [255, 255, 255]


def test_recorded_accuracy_prefers_test_to_validation():
    assert dl.zoo.recorded_accuracy({"metrics": {"val_accuracy": 0.9, "test_accuracy": 0.95}}) == ("test", 0.95)
    assert dl.zoo.recorded_accuracy({"metrics": {"val_accuracy": 0.9}}) == ("val", 0.9)
    assert dl.zoo.recorded_accuracy({}) is None


def test_best_checkpoint_picks_the_highest_recorded_accuracy(trained_checkpoints, tmp_path):
    paths = {arch: shutil.copy(path, tmp_path / f"{arch}.pt") for arch, path in trained_checkpoints.items()}
    update_checkpoint(paths["cnn"], metrics={"val_accuracy": 0.95})
    update_checkpoint(paths["resnet"], metrics={"val_accuracy": 0.97})
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")  # skipped, not fatal
    assert dl.zoo.best_checkpoint(tmp_path) == tmp_path / "resnet.pt"
    update_checkpoint(paths["cnn"], metrics={"val_accuracy": 0.95, "test_accuracy": 0.99})
    assert dl.zoo.best_checkpoint(tmp_path) == tmp_path / "cnn.pt"


def test_best_checkpoint_defaults_to_the_models_folder(trained_checkpoints, tmp_path, monkeypatch):
    shutil.copy(trained_checkpoints["cnn"], tmp_path / "cnn.pt")
    use_models_folder(monkeypatch, tmp_path)
    assert dl.zoo.best_checkpoint() == tmp_path / "cnn.pt"


@pytest.mark.parametrize("contents", [None, b"garbage"], ids=["empty", "only-garbage"])
def test_best_checkpoint_without_a_usable_one_says_what_to_do(tmp_path, contents):
    if contents is not None:
        (tmp_path / "cnn.pt").write_bytes(contents)
    with pytest.raises(CheckpointError, match="no usable checkpoint") as error:
        dl.zoo.best_checkpoint(tmp_path)
    assert str(tmp_path) in str(error.value) and "python -m digitlib train" in str(error.value)


def test_file_size_mb(tmp_path):
    path = tmp_path / "two-megabytes.bin"
    path.write_bytes(bytes(2_000_000))
    assert evaluation.file_size_mb(path) == 2.0


def test_majority_vote_counts_votes_and_breaks_ties_by_mean_probability():
    a = torch.tensor([[0.6, 0.4, 0.0], [0.1, 0.9, 0.0]])
    b = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8]])
    c = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.45, 0.55]])
    # image 0: two votes for class 0 beat one confident vote for 1; image 1: 1 vs 2 vs 2, class 2 wins 2:1
    assert evaluation.majority_vote(a, b, c).tolist() == [0, 2]
    # a tie (one vote each) goes to the class with the higher mean probability
    assert evaluation.majority_vote(torch.tensor([[0.51, 0.49]]), torch.tensor([[0.0, 1.0]])).tolist() == [1]
