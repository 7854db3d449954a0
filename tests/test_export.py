"""int8 quantization (PyTorch and ONNX Runtime), ONNX export, its metadata, and the export command."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import torch
from helpers import run

import digitlib as dl
from digitlib import bench, data, evaluation, export, runtime
from digitlib.checkpoints import load_checkpoint, normalization, update_checkpoint
from digitlib.errors import CheckpointError, DigitlibError

ARCHS = ("cnn", "resnet")


@pytest.fixture(scope="module")
def exported(trained_checkpoints, tmp_path_factory):
    """{arch: (fp32 .onnx, int8 .onnx)} for the small trained checkpoints."""
    folder = tmp_path_factory.mktemp("export")
    files = {}
    for arch in ARCHS:
        fp32 = export.export_checkpoint(trained_checkpoints[arch], folder / f"{arch}.onnx", "onnx")
        int8 = export.export_checkpoint(trained_checkpoints[arch], folder / f"{arch}.int8.onnx", "onnx-int8",
                                        calibration_count=500)
        files[arch] = fp32, int8
    return files


def _test_batch(info, path, splits) -> torch.Tensor:
    mean, std = normalization(info, path)
    return data.normalize(splits.test_images, mean, std)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_fp32_gives_pytorch_logits(arch, trained_checkpoints, exported, small_splits):
    model, info = load_checkpoint(trained_checkpoints[arch])
    onnx_model, onnx_info = dl.zoo.load_model(exported[arch][0])
    x = _test_batch(info, trained_checkpoints[arch], small_splits)
    with torch.inference_mode():
        expected, got = model(x), onnx_model(x)
    # The same fp32 arithmetic in another order: differences of float rounding (measured ~1e-5 on
    # log probabilities), far below the 1e-3 allowed here.
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    assert _agreement(got, expected) >= 0.99
    assert onnx_info["arch"] == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_agrees_with_fp32(arch, trained_checkpoints, exported, small_splits):
    """Both int8 paths keep the fp32 model's answer on nearly every test image.

    Measured 99.8-100 % agreement on these 1,000 images; 97 % leaves room for the 2-epoch models'
    many borderline images, yet a broken quantization (wrong scales, unquantized calibration) lands far
    below it, near chance.
    """
    model, info = load_checkpoint(trained_checkpoints[arch])
    mean, std = normalization(info, trained_checkpoints[arch])
    x, labels = _test_batch(info, trained_checkpoints[arch], small_splits), small_splits.test_labels
    torch_int8 = export.quantize_torch(model, export.calibration_images(mean, std, 500))
    onnx_int8, int8_info = dl.zoo.load_model(exported[arch][1])
    with torch.inference_mode():
        fp32, by_torch, by_onnx = model(x), torch_int8(x), onnx_int8(x)
    for quantized in (by_torch, by_onnx):
        assert _agreement(quantized, fp32) >= 0.97
        fp32_accuracy = float((fp32.argmax(1) == labels).float().mean())
        assert float((quantized.argmax(1) == labels).float().mean()) >= fp32_accuracy - 0.02
    assert export.weights_size_mb(torch_int8) < export.weights_size_mb(model) / 2.5  # 8 bits instead of 32
    assert evaluation.file_size_mb(exported[arch][1]) < evaluation.file_size_mb(exported[arch][0]) / 2.5
    assert int8_info["export"]["quantization"] == export.ONNX_INT8_RECIPE


def test_metadata_keeps_the_checkpoint_fields(trained_checkpoints, tmp_path):
    checkpoint = tmp_path / "cnn.pt"
    shutil.copy(trained_checkpoints["cnn"], checkpoint)
    update_checkpoint(checkpoint, temperature=1.37, data={"dataset": "mnist", "train_limit": 6000})
    _, info = load_checkpoint(checkpoint)
    _, onnx_info = dl.zoo.load_model(export.export_checkpoint(checkpoint, tmp_path / "cnn.onnx"))
    assert normalization(onnx_info, "x") == normalization(info, "x")  # exactly: JSON keeps a float's every digit
    assert onnx_info["temperature"] == 1.37 and onnx_info["data"]["dataset"] == "mnist"
    assert onnx_info["metrics"] == info["metrics"] and onnx_info["seed"] == info["seed"]
    assert onnx_info["source"] == "cnn.pt" and onnx_info["export"]["digitlib"]
    assert "history" not in onnx_info and "state_dict" not in onnx_info  # lists and weights stay out


def test_metadata_round_trip_by_itself():
    info = {"arch": "cnn", "normalization": {"mean": 0.1, "std": 0.3}, "standin": True, "note": "1.5",
            "resume": {"epoch": 3}, "history": {"loss": [1.0, 0.5]}, "best_epoch": None}
    props = export.onnx_metadata(info)
    assert all(isinstance(value, str) for value in props.values())
    back = export.read_onnx_metadata(props)
    assert back["normalization"] == {"mean": 0.1, "std": 0.3} and back["standin"] is True
    assert back["note"] == "1.5" and back["best_epoch"] is None  # a string stays a string
    assert "resume" not in back and "history" not in back  # lists are not metadata
    assert back["format"] == export.ONNX_FORMAT


def test_onnx_runtime_follows_torch_threads(exported, small_splits):
    model, info = dl.zoo.load_model(exported["cnn"][0])
    drawing = evaluation.as_drawing(small_splits.test_images[0])
    latency = bench.single_image_latency(model, drawing, *normalization(info, "x"), repeats=5, warmup=2, threads=1)
    assert latency["threads"] == 1 and model.threads == 1 and latency["forward_ms"] > 0
    with runtime.torch_threads(2):
        model(torch.zeros(1, 1, 28, 28))
        assert model.threads == 2
    plain_function = bench.batch_throughput(lambda x: x.sum(), torch.zeros(10, 1, 28, 28), batch_size=5, repeats=1)
    assert plain_function["images_per_s"] > 0  # any callable can be timed, not only modules


def test_cli_exports_and_predicts_with_onnx(trained_checkpoints, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    status, stdout, _ = run(["export", "--model", trained_checkpoints["cnn"], "--out", out], capsys)
    assert status == 0 and out.exists() and str(out) in stdout
    image = tmp_path / "seven.png"
    seven = data.load_mnist(train=False)[0][0]  # the first test image is a 7
    evaluation.as_drawing(seven).save(image)
    status, stdout, stderr = run(["predict", image, "--model", out, "--json"], capsys)
    assert status == 0, stderr
    by_checkpoint = run(["predict", image, "--model", trained_checkpoints["cnn"], "--json"], capsys)[1]
    (onnx_reading,), (torch_reading,) = json.loads(stdout), json.loads(by_checkpoint)
    # ONNX Runtime and PyTorch sum the same fp32 products in other orders (and CPUs vectorise them
    # differently): a probability can differ in its last bits (1.0 against 0.99999988 was seen), so the
    # probabilities agree to 1e-5 and everything else exactly.
    probabilities = {}
    for name, reading in (("onnx", onnx_reading), ("torch", torch_reading)):
        probabilities[name] = [reading.pop("probability")] + [entry.pop("probability") for entry in reading["top"]]
        reading.pop("file")
    assert onnx_reading == torch_reading  # same digit, same top digits, same verdict
    assert probabilities["onnx"] == pytest.approx(probabilities["torch"], abs=1e-5)

    status, stdout, stderr = run(["evaluate", "--model", out, "--limit", "200", "--repeats", "0"], capsys)
    assert status == 0, stderr
    by_checkpoint = run(["evaluate", "--model", trained_checkpoints["cnn"], "--limit", "200", "--repeats", "0"],
                        capsys)[1]
    # The same report line for line, down to the parameter count the export recorded (an ONNX graph has none).
    assert stdout.replace(str(out), "MODEL") == by_checkpoint.replace(str(trained_checkpoints["cnn"]), "MODEL")
    assert "3,274,634 parameters" in stdout


def test_cli_refuses_to_overwrite(trained_checkpoints, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    status, _, stderr = run(["export", "--model", trained_checkpoints["cnn"], "--out", out], capsys)
    assert status == 2 and "--force" in stderr and stderr.count("\n") == 1
    assert out.read_bytes() == b"keep me"
    status, _, _ = run(["export", "--model", trained_checkpoints["cnn"], "--out", out, "--force"], capsys)
    assert status == 0 and dl.zoo.load_model(out)[1]["arch"] == "cnn"


@pytest.mark.parametrize("name", ["model.pt", "cnn.pt"])
def test_export_never_writes_a_checkpoint_name(trained_checkpoints, tmp_path, name, capsys):
    checkpoint = tmp_path / "cnn.pt"
    shutil.copy(trained_checkpoints["cnn"], checkpoint)
    before = checkpoint.read_bytes()
    status, _, stderr = run(["export", "--model", checkpoint, "--out", tmp_path / name, "--force"], capsys)
    assert status == 2 and ".onnx" in stderr and stderr.count("\n") == 1
    assert checkpoint.read_bytes() == before


DAMAGED = [b"", b"not an onnx file at all\n" * 10, b"\x08\x07\x12\x04junk" + bytes(range(256))]


@pytest.mark.parametrize("content", DAMAGED)
def test_damaged_onnx_is_one_line(tmp_path, content, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(content)
    with pytest.raises(CheckpointError):
        dl.zoo.load_model(broken)
    status, stdout, stderr = run(["evaluate", "--model", broken, "--repeats", "0"], capsys)
    assert status == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1 and str(broken) in stderr


def test_truncated_and_foreign_onnx_are_refused(exported, tmp_path, capsys):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported["cnn"][0].read_bytes()[:5000])
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(exported["cnn"][0])
    del proto.metadata_props[:]  # a valid model, but nobody says how to normalise its input
    onnx.save_model(proto, foreign)
    for path, words in ((truncated, "damaged"), (foreign, "not one digitlib exported"),
                        (tmp_path / "missing.onnx", "no ONNX model")):
        status, _, stderr = run(["predict", exported["cnn"][0], "--model", path], capsys)
        assert status == 2 and words in stderr and stderr.count("\n") == 1, stderr


def test_export_checkpoint_rejects_unknown_format(trained_checkpoints, tmp_path):
    with pytest.raises(DigitlibError, match="unknown export format"):
        export.export_checkpoint(trained_checkpoints["cnn"], tmp_path / "x.onnx", "tflite")


def test_measure_variants_reports_each_variant(trained_checkpoints, exported, small_splits):
    model, info = load_checkpoint(trained_checkpoints["cnn"])
    onnx_model, _ = dl.zoo.load_model(exported["cnn"][0])
    images, labels = small_splits.test_images[:100], small_splits.test_labels[:100]
    rows = export.measure_variants({"fp32": (model, 1.0), "onnx": (onnx_model, 2.0)}, images, labels,
                                   *normalization(info, "x"), "cnn", repeats=3, rounds=2)
    assert [row.variant for row in rows] == ["fp32", "onnx"] and rows[1].size_mb == 2.0
    assert rows[0].agreement == 1.0 and rows[1].agreement >= 0.99
    assert rows[0].accuracy == pytest.approx(float((model(data.normalize(images, *normalization(info, "x")))
                                                    .argmax(1) == labels).float().mean()))
    assert all(0 < row.forward_ms < row.latency_ms and row.images_per_s > 0 for row in rows)


def test_cli_compare_prints_the_four_variants(trained_checkpoints, capsys):
    status, stdout, stderr = run(["export", "--model", trained_checkpoints["cnn"], "--compare", "--limit", "200",
                                  "--calibration", "100"], capsys)
    assert status == 0, stderr
    for variant in ("fp32 PyTorch", "int8 PyTorch", "fp32 ONNX Runtime", "int8 ONNX Runtime"):
        assert variant in stdout


# --- Issue 23: an ONNX file is believed only once checked ---------------------------------------

DIGIT_METADATA = {"arch": "cnn", "normalization": {"mean": 0.1307, "std": 0.3081}, "metrics": {"test_accuracy": 0.99}}


def crafted_onnx(path, side: int = 28, classes: int = 10, batch: int | str = "N", tail: str = "LogSoftmax",
                 metadata: dict | None = None):
    """A one-layer ONNX model, image (batch, 1, side, side) -> log_probs (batch, classes), with digitlib's
    metadata: a file anyone could make. ``tail`` is the last op: LogSoftmax, Identity (raw logits), or
    NaN (LogSoftmax of weights that are all NaN)."""
    from onnx import TensorProto, helper, numpy_helper

    values = torch.linspace(-1, 1, side * side * classes).reshape(side * side, classes)
    weights = numpy_helper.from_array((values * float("nan") if tail == "NaN" else values).numpy(), "weights")
    op = "LogSoftmax" if tail == "NaN" else tail
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
             helper.make_node(op, ["scores"], ["log_probs"], **({"axis": 1} if op == "LogSoftmax" else {}))]
    graph = helper.make_graph(
        nodes, "crafted", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, side, side])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [batch, classes])], [weights])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    export._attach_metadata(proto, export.onnx_metadata(metadata or DIGIT_METADATA))
    onnx.save_model(proto, path)
    return path


def test_a_crafted_onnx_file_with_the_right_shapes_loads(tmp_path):
    model, info = dl.zoo.load_model(crafted_onnx(tmp_path / "ok.onnx"))
    assert info["metrics"]["test_accuracy"] == 0.99
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_a_graph_made_for_one_image_reads_batches_one_image_at_a_time(tmp_path):
    model, _ = dl.zoo.load_model(crafted_onnx(tmp_path / "one.onnx", batch=1))
    images = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(images), torch.cat([model(image) for image in images.split(1)]))


@pytest.mark.parametrize(
    ("craft", "message"),
    [
        ({"side": 32}, r"takes tensor\(float\) of shape \['N', 1, 32, 32\], not float images of 1x28x28"),
        ({"batch": 2}, r"of shape \[2, 1, 28, 28\], not float images of 1x28x28 \(any batch size or 1\)"),
        ({"classes": 5}, r"answers one image with shape \[1, 5\], not ten class scores"),
        ({"classes": 1000}, r"answers one image with shape \[1, 1000\], not ten class scores"),
        ({"tail": "NaN"}, "answers a probe image with NaN or infinity"),
        ({"tail": "Identity"}, "outputs are not log probabilities"),
        ({"metadata": {**DIGIT_METADATA, "metrics": {"test_accuracy": 1.5}}},
         "records metrics.test_accuracy = 1.5, not a number from 0 to 1"),
        ({"metadata": {**DIGIT_METADATA, "metrics": "excellent"}}, "records metrics = 'excellent', not a dict"),
        ({"metadata": {**DIGIT_METADATA, "arch": "vgg"}}, "unknown architecture 'vgg'"),
    ],
    ids=["input-32x32", "batch-of-2", "5-outputs", "1000-outputs", "nan-outputs", "raw-logits", "accuracy-150",
         "metrics-text", "arch-unknown"],
)
def test_a_crafted_onnx_file_is_refused_with_one_line(tmp_path, capsys, craft, message):
    path = crafted_onnx(tmp_path / "crafted.onnx", **craft)
    with pytest.raises(CheckpointError, match=message):
        dl.zoo.load_model(path)
    image = tmp_path / "seven.png"
    evaluation.as_drawing(data.load_mnist(train=False)[0][0]).save(image)
    for argv in (["predict", image, "--model", path], ["evaluate", "--model", path, "--limit", "10", "--repeats", "0"]):
        status, stdout, stderr = run(argv, capsys)
        assert status == 2 and stderr.startswith(f"error: {path}") and stderr.count("\n") == 1, stderr
        assert "Traceback" not in stderr and "nan%" not in stdout


def test_export_writes_only_metadata_it_would_believe(trained_checkpoints, tmp_path, capsys):
    model, info = load_checkpoint(trained_checkpoints["cnn"])
    out = tmp_path / "bad.onnx"
    with pytest.raises(CheckpointError, match="metrics.test_accuracy = 1.5"):
        export.export_onnx(model, {**info, "metrics": {"test_accuracy": 1.5}}, out)
    assert not out.exists()
    crafted = tmp_path / "crafted.pt"
    shutil.copy(trained_checkpoints["cnn"], crafted)
    payload = torch.load(crafted, weights_only=True)
    torch.save({**payload, "metrics": ["99 %"]}, crafted)  # as someone crafting one would: no digitlib checks
    status, _, stderr = run(["export", "--model", crafted, "--out", out], capsys)
    assert status == 2 and stderr.startswith(f"error: {crafted} records metrics = ['99 %'], not a dict")
    assert not out.exists()
