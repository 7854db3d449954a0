"""Smaller and faster models: int8 quantization, ONNX export and ONNX Runtime (notebook 09,
``python -m digitlib export``).

Two int8 paths, both post-training static quantization calibrated on training images:

- **PyTorch** (:func:`quantize_torch`): FX graph mode with the ``x86`` backend (fbgemm/oneDNN int8
  kernels, per-channel weights), run in eager mode. ``torch.ao.quantization`` is deprecated in favour
  of torchao's PT2E flow (``prepare_pt2e`` + ``X86InductorQuantizer``), but that flow is only fast
  once ``torch.compile`` with weight freezing lowers it, which on this project's AVX2 CPU compiled
  for tens of seconds per input shape, failed to compile DigitResNet, and answered one image more slowly
  than the FX model (docs/results.md, "Smaller and faster"). The FX model needs no compiler and no extra package.
  It lives in the process only: make it from the fp32 checkpoint in about a second.
- **ONNX Runtime** (:func:`quantize_onnx`): ``onnxruntime.quantization.quantize_static`` in QDQ
  format, per-channel weights, uint8 activations and 7-bit weights (``reduce_range``), the settings
  ONNX Runtime recommends for x86 CPUs without VNNI; safe, a little less precise, on those with it.
  This is the deployable int8 file.

An exported ``.onnx`` file carries what a checkpoint carries for inference, in its ``metadata_props``
(see :func:`onnx_metadata`): architecture, normalisation, metrics and every other scalar field of the
checkpoint, so :func:`load_model` returns the same ``(model, info)`` for both kinds of file and
``predict``/``evaluate`` use either unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint_checks import ONNX_INPUT_NAME, ONNX_OUTPUT_NAME, check_fields
from .errors import CheckpointError, DigitlibError
from .extras import require
from .models import count_parameters
from .runtime import torch_threads

ONNX_FORMAT = "digitlib-onnx-v1"
INPUT_NAME = ONNX_INPUT_NAME  # (N, 1, 28, 28) float32, normalised with the metadata's mean and std
OUTPUT_NAME = ONNX_OUTPUT_NAME  # (N, 10), as the PyTorch models return
ONNX_FORMATS = ("onnx", "onnx-int8")
#: Checkpoint fields never copied into an ONNX file: the weights (in the graph already), the
#: checkpoint's own marker, and the training state kept for --resume.
_NOT_METADATA = frozenset({"state_dict", "format", "resume", "path"})
#: What the int8 ONNX file's metadata says about how it was made.
ONNX_INT8_RECIPE = "onnxruntime quantize_static: QDQ, per-channel int8 weights (7-bit), uint8 activations, MinMax"


# --- Calibration and PyTorch int8 ---------------------------------------------------------------


def calibration_images(
    mean: float, std: float, count: int = 1000, seed: int = 0, dataset: str = "mnist"
) -> torch.Tensor:
    """``count`` training images of ``dataset`` drawn at random (seeded), normalised with ``mean`` and
    ``std``: (count, 1, 28, 28).

    Calibration only looks at activation ranges, so a thousand images cover them; they come from the
    training set so that no test image shapes the quantized model that is then tested.
    """
    from .data import load_dataset, normalize

    images, _ = load_dataset(dataset, train=True)
    count = min(count, len(images))
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return normalize(images[chosen], mean, std)


def quantize_torch(model: nn.Module, calibration: torch.Tensor, batch_size: int = 250) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference (``model`` is left as it was).

    FX graph mode traces the model, inserts observers that record each activation's range while the
    ``calibration`` images (normalised, (N, 1, 28, 28)) pass through, then swaps every convolution and
    linear layer for an int8 kernel with per-channel weight scales, fused with the ReLU that follows.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # The deprecation notice (see the module docstring) and the observers' advice to PyTorch's own
        # default settings are not actionable here.
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(calibration[:1],))
        with torch.no_grad():
            for batch in calibration.split(batch_size):
                prepared(batch)
        return convert_fx(prepared)


def weights_size_mb(model: nn.Module) -> float:
    """Megabytes (10^6 bytes) of ``model``'s weights as ``torch.save`` writes them: what a file of them weighs."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


# --- ONNX metadata -------------------------------------------------------------------------------


def onnx_metadata(info: Mapping, **extra) -> dict[str, str]:
    """A checkpoint's ``info`` as ONNX ``metadata_props``: {key: JSON text}.

    Every scalar field (str, int, float, bool, None) is copied; nested dicts of scalars become dotted
    keys (``normalization.mean``, ``metrics.test_accuracy``, ``data.dataset``); lists (the history)
    and tensors are left out. ``extra`` fields are added under ``export.`` (the digitlib version and
    how the file was made are always recorded). Values are JSON so that numbers come back as numbers.
    """
    from . import __version__

    flat: dict[str, str] = {"format": json.dumps(ONNX_FORMAT)}
    for key, value in _flatten({k: v for k, v in info.items() if k not in _NOT_METADATA}):
        flat[key] = json.dumps(value)
    for key, value in {"digitlib": __version__, **extra}.items():
        flat[f"export.{key}"] = json.dumps(value)
    return flat


def _flatten(fields: Mapping, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        elif value is None or isinstance(value, (str, bool, int, float)):
            yield name, value


def read_onnx_metadata(props: Mapping[str, str]) -> dict:
    """The inverse of :func:`onnx_metadata`: nested dicts again, values decoded (a non-JSON value stays text)."""
    info: dict = {}
    for key, text in props.items():
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.split(".")
        node = info
        for parent in parents:
            child = node.setdefault(parent, {})
            if not isinstance(child, dict):  # "a" and "a.b" both present: keep the flat key
                node, leaf = info, key
                break
            node = child
        node[leaf] = value
    return info


def _attach_metadata(model_proto, metadata: Mapping[str, str]) -> None:
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


# --- Export --------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, info: Mapping, out: str | os.PathLike) -> Path:
    """Write ``model`` (fp32, any batch size) to ``out`` as ONNX, with ``info`` in its metadata.

    torch 2.14's exporter captures the model with ``torch.export`` and translates it with onnxscript.
    The metadata is checked first as :func:`load_onnx` will check it (``checkpoint_checks.check_fields``):
    a field it would refuse is never written. The file is written next to ``out`` and renamed over it,
    so an interruption leaves no half file.
    """
    require("onnxscript", "export", "exporting to ONNX")
    model = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(2, 1, 28, 28)  # batch 2: a batch of 1 would be specialised to a constant
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress and advice go to the console otherwise
        program = torch.onnx.export(
            model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: "batch"},), dynamo=True, verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    proto = program.model_proto
    # An ONNX graph has initializers, not parameters: record the count so `evaluate` can still report it.
    metadata = onnx_metadata(info, quantization="none", parameters=count_parameters(model))
    check_fields(read_onnx_metadata(metadata), out)  # written only if load_onnx will believe it
    _attach_metadata(proto, metadata)
    return _write_onnx(proto, Path(out))


def quantize_onnx(
    source: str | os.PathLike, out: str | os.PathLike, calibration: torch.Tensor, batch_size: int = 250
) -> Path:
    """Quantize the fp32 ONNX file ``source`` to int8 at ``out`` with ONNX Runtime, calibrated on ``calibration``.

    ONNX Runtime's pre-processing (shape inference and graph optimisation, which it recommends
    before quantizing) runs first; ``source``'s metadata is carried over.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [batch.numpy() for batch in calibration.split(batch_size)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    source, out = Path(source), Path(out)
    metadata = {entry.key: entry.value for entry in onnx.load(source, load_external_data=False).metadata_props}
    metadata["export.quantization"] = json.dumps(ONNX_INT8_RECIPE)
    metadata["export.calibration_images"] = json.dumps(len(calibration))
    with tempfile.TemporaryDirectory() as scratch:
        prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        proto = onnx.load(quantized)
    _attach_metadata(proto, metadata)
    return _write_onnx(proto, out)


def _write_onnx(proto, path: Path) -> Path:
    """``proto`` saved at ``path`` atomically (``files.atomic_write``), its folder made if needed.

    The model is serialised in one piece, as ``onnx.save_model`` does for files under 2 GB (ours are a few MB).
    """
    from .files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda file: file.write(proto.SerializeToString()))


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "onnx", force: bool = False,
    calibration_count: int = 1000,
) -> Path:
    """``python -m digitlib export``: the checkpoint at ``checkpoint`` as ``fmt`` (``onnx``/``onnx-int8``) at ``out``.

    Refuses, with one line, an ``out`` that is not a regular file or a new path (a folder, a device, a
    FIFO, a socket: ``files.check_destination``), that exists (unless ``force``), that is the checkpoint
    itself, or whose name does not end in ``.onnx`` (what ``predict`` and ``evaluate`` recognise).
    """
    from .checkpoints import load_checkpoint, normalization
    from .data import dataset_of
    from .files import check_destination

    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in ONNX_FORMATS:
        raise DigitlibError(f"unknown export format {fmt!r}: choose one of {', '.join(ONNX_FORMATS)}")
    check_destination(out)
    if out.suffix != ".onnx":
        raise DigitlibError(f"{out}: an exported model's name must end in .onnx, e.g. {out.with_suffix('.onnx')}")
    if out.exists() and out.resolve() == checkpoint.resolve():
        raise DigitlibError(f"{out} is the checkpoint being exported: choose another --out")
    if (out.exists() or out.is_symlink()) and not force:
        raise DigitlibError(f"{out} already exists: pass --force to replace it, or choose another --out")
    model, info = load_checkpoint(checkpoint)
    info = {**info, "source": checkpoint.name}
    if fmt == "onnx":
        return export_onnx(model, info, out)
    mean, std = normalization(info, checkpoint)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export_onnx(model, info, Path(scratch) / "fp32.onnx")
        calibration = calibration_images(mean, std, calibration_count, dataset=dataset_of(info))
        return quantize_onnx(fp32, out, calibration)


# --- Loading -------------------------------------------------------------------------------------


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, used like the PyTorch model it came from.

    ``forward`` takes the normalised float tensor (N, 1, 28, 28), on any device, and returns the log
    probabilities (N, 10) as a CPU tensor (a graph made for batches of one image is run once per image).
    ONNX Runtime follows PyTorch's thread setting
    (``torch.set_num_threads``, ``runtime.torch_threads``): the session is rebuilt, once, when that
    setting changes, so timing code treats both runtimes alike.
    """

    def __init__(self, model_bytes: bytes, path: str | os.PathLike = "<bytes>"):
        super().__init__()
        self.path = Path(path)
        self.model_bytes = model_bytes
        self.session = self._new_session(torch.get_num_threads())

    def _new_session(self, threads: int):
        ort = require("onnxruntime", "export", f"running {self.path}")

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
        self.threads = threads
        return ort.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.get_num_threads() != self.threads:
            self.session = self._new_session(torch.get_num_threads())
        if len(x) > 1 and self.session.get_inputs()[0].shape[0] == 1:  # a graph fixed to a batch of one
            return torch.cat([self(image) for image in x.split(1)])
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    def extra_repr(self) -> str:
        return f"{self.path}, {self.threads} thread(s)"


def load_onnx(path: str | os.PathLike) -> tuple[OnnxModel, dict]:
    """(model, info) for a ``.onnx`` file written by :func:`export_onnx` or :func:`quantize_onnx`.

    ``info`` is the checkpoint's information as the metadata recorded it (``arch``, ``normalization``,
    ``metrics``, ...), plus ``path``. A missing, unreadable or damaged file, an ONNX model that digitlib
    did not export, metadata that fails ``checkpoint_checks.check_fields``, an input other than 1x28x28
    images, or outputs that are not ten log probabilities on a probe image
    (``checkpoint_checks.check_log_probabilities``) raise :class:`CheckpointError` with one line.
    """
    from .checkpoint_checks import (
        check_log_probabilities,
        check_onnx_signature,
        refuse_special_file,
        unreadable_file_message,
    )
    from .checkpoints import normalization

    path = Path(path)
    refuse_special_file(path, "ONNX model")
    try:
        model_bytes = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise CheckpointError(unreadable_file_message(path, "ONNX model")) from None
        raise CheckpointError(
            f"no ONNX model at {path}: export one with `python -m digitlib export --model models/cnn.pt --out {path}`"
        ) from None
    except OSError as error:
        raise CheckpointError(unreadable_file_message(path, "ONNX model", error)) from None
    if not model_bytes:
        raise CheckpointError(f"{path} is empty (0 bytes): export it again with `python -m digitlib export`")
    try:
        model = OnnxModel(model_bytes, path)
    except Exception as error:  # ONNX Runtime raises its own classes (InvalidProtobuf, Fail, InvalidGraph, ...)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        reason = reason if len(reason) <= 160 else reason[:159] + "…"
        raise CheckpointError(
            f"{path} is not a usable ONNX model, damaged or not ONNX at all ({reason}): "
            "export it again with `python -m digitlib export`"
        ) from None
    info = read_onnx_metadata(model.metadata)
    if info.get("format") != ONNX_FORMAT:
        raise CheckpointError(
            f"{path} is an ONNX model but not one digitlib exported (no '{ONNX_FORMAT}' metadata, so no "
            "normalisation): export a digitlib checkpoint with `python -m digitlib export`"
        )
    check_fields(info, path)
    check_onnx_signature(model.session.get_inputs(), model.session.get_outputs(), path)
    check_log_probabilities(model, normalization(info, path), path)
    info["path"] = path
    return model.eval(), info


def is_onnx_path(path: str | os.PathLike) -> bool:
    """True for a ``.onnx`` file name (what ``load_model`` hands to ONNX Runtime)."""
    return Path(path).suffix.lower() == ".onnx"


# --- Measuring the four variants -----------------------------------------------------------------


@dataclass(frozen=True)
class VariantMeasurement:
    """One row of the "smaller and faster" table: a model in one runtime and precision."""

    model: str  # the checkpoint's architecture
    variant: str  # "fp32 PyTorch", "int8 PyTorch", "fp32 ONNX Runtime", "int8 ONNX Runtime"
    size_mb: float  # the weights as saved (PyTorch) or the .onnx file
    accuracy: float  # on the test images given
    agreement: float  # share of test images with the same prediction as fp32 PyTorch
    latency_ms: float  # preprocessing a 280x280 drawing + forward, one thread: median of the best round
    forward_ms: float  # the forward pass alone in that round (median)
    images_per_s: float  # forward passes in batches of 1,000, one thread: best round


def compare_variants(
    checkpoint: str | os.PathLike, folder: str | os.PathLike, test_limit: int | None = None,
    calibration_count: int = 1000, repeats: int = 200, rounds: int = 3,
) -> list[VariantMeasurement]:
    """Quantize and export ``checkpoint`` into ``folder`` and measure the four variants (fp32/int8 ×
    PyTorch/ONNX Runtime) on the first ``test_limit`` test images (default all): :func:`measure_variants`.
    """
    from .checkpoints import load_checkpoint, normalization
    from .data import dataset_of, load_dataset
    from .evaluation import file_size_mb

    checkpoint, folder = Path(checkpoint), Path(folder)
    model, info = load_checkpoint(checkpoint)
    mean, std = normalization(info, checkpoint)
    dataset = dataset_of(info)
    calibration = calibration_images(mean, std, calibration_count, dataset=dataset)
    fp32_onnx = export_onnx(model, {**info, "source": checkpoint.name}, folder / f"{checkpoint.stem}.onnx")
    int8_onnx = quantize_onnx(fp32_onnx, folder / f"{checkpoint.stem}.int8.onnx", calibration)
    variants: dict[str, tuple[nn.Module, float]] = {
        "fp32 PyTorch": (model, weights_size_mb(model)),
        "int8 PyTorch": (quantized := quantize_torch(model, calibration), weights_size_mb(quantized)),
        "fp32 ONNX Runtime": (load_onnx(fp32_onnx)[0], file_size_mb(fp32_onnx)),
        "int8 ONNX Runtime": (load_onnx(int8_onnx)[0], file_size_mb(int8_onnx)),
    }
    images, labels = load_dataset(dataset, train=False)
    return measure_variants(variants, images[:test_limit], labels[:test_limit], mean, std, str(info["arch"]),
                            repeats, rounds)


def measure_variants(
    variants: Mapping[str, tuple[nn.Module, float]], images: torch.Tensor, labels: torch.Tensor, mean: float,
    std: float, model_name: str = "", repeats: int = 200, rounds: int = 3,
) -> list[VariantMeasurement]:
    """Measure each of ``variants`` ({name: (model, size in MB)}, the first one the fp32 reference) on
    uint8 test ``images`` (N, 28, 28) and ``labels``.

    Latency is ``bench.single_image_latency`` of a 280x280 drawing of the first image, throughput
    ``bench.batch_throughput`` in batches of 1,000, both on one thread. On a shared machine other work
    can slow a timing, never speed it up, so every variant is timed in each of ``rounds`` interleaved
    rounds and its best round counts.
    """
    from . import bench
    from .data import normalize
    from .evaluation import as_drawing

    x, drawing = normalize(images, mean, std), as_drawing(images[0])
    predictions = {}
    with torch_threads(1), torch.inference_mode():
        for name, (variant, _) in variants.items():
            predictions[name] = torch.cat([variant(batch).argmax(1) for batch in x.split(1000)])
    reference = predictions[next(iter(variants))]
    latency = {name: math.inf for name in variants}
    forward = {name: math.inf for name in variants}
    throughput = {name: 0.0 for name in variants}
    for _ in range(rounds):
        for name, (variant, _) in variants.items():
            timed = bench.single_image_latency(variant, drawing, mean, std, repeats=repeats, threads=1)
            if timed["median_ms"] < latency[name]:
                latency[name], forward[name] = timed["median_ms"], timed["forward_ms"]
            speed = bench.batch_throughput(variant, x, batch_size=min(1000, len(x)), repeats=1, threads=1)
            throughput[name] = max(throughput[name], speed["images_per_s"])
    return [
        VariantMeasurement(
            model=model_name, variant=name, size_mb=size,
            accuracy=float((predictions[name] == labels).float().mean()),
            agreement=float((predictions[name] == reference).float().mean()),
            latency_ms=latency[name], forward_ms=forward[name], images_per_s=throughput[name],
        )
        for name, (_, size) in variants.items()
    ]
