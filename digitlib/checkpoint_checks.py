"""Checking checkpoint files before anything is built from them: the file forensics behind
``checkpoints.read_checkpoint`` and ``load_checkpoint``, and the checks of ONNX files and resume states.

A checkpoint may come from anywhere, so every field a model is built from is checked, and each way a
file can be unusable (empty, not PyTorch's, refused for safety, damaged, crafted fields, weights that
do not fit, a resume state that is not whole) ends in one :class:`CheckpointError` line saying which.
``checkpoints`` keeps what a checkpoint holds; this module keeps how it is distrusted.
"""

from __future__ import annotations

import errno
import fnmatch
import math
import numbers
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, cast

import torch
from torch import nn

from .data import normalize
from .errors import CheckpointError
from .files import special_file_kind
from .models import ARCHITECTURES, build_model

#: How a file written by ``torch.save`` starts: a zip archive, or (before PyTorch 1.6, or with
#: ``_use_new_zipfile_serialization=False``) a pickled magic number in any pickle protocol.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGICS = tuple(
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=protocol)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1)
)
_HEADER_BYTES = max(len(magic) for magic in (_ZIP_MAGIC, *_LEGACY_MAGICS))


def load_torch_file(path: Path, file: IO[bytes], map_location: str | torch.device) -> object:
    header = file.read(_HEADER_BYTES)
    file.seek(0)
    if not header:
        raise CheckpointError(f"{path} is empty (0 bytes), a truncated checkpoint: delete it and train again.")
    if not header.startswith((_ZIP_MAGIC, *_LEGACY_MAGICS)):
        # Not even handed to the unpickler: it could only fail, with a confusing message.
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this one starts with "
            f"{header[:8]!r}): pass a checkpoint written by digitlib, or if this file should be one, delete it "
            "and train again."
        )
    check_device(map_location)  # so that an unusable device is not taken for a damaged file below
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before refusing the file: the refusal says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(file, map_location=map_location, weights_only=True)
    except OSError as error:
        raise CheckpointError(unreadable_file_message(path, "checkpoint", error)) from None
    except Exception as error:  # a damaged file makes torch fail in many ways: each means "damaged"
        reason = torch_reason(error)
        if "GLOBAL" in reason:
            raise CheckpointError(
                f"{path} is refused for safety ({reason}): loading it would run code or build objects, "
                "which a digitlib checkpoint never needs. Use a checkpoint you trained or trust."
            ) from None
        raise CheckpointError(
            f"{path} is a damaged or truncated PyTorch checkpoint ({reason}): delete it and train again."
        ) from None


def check_device(map_location: str | torch.device) -> None:
    """Raise torch's own error when ``map_location`` cannot hold tensors (say, CUDA without a GPU):
    a problem with the machine, not with the checkpoint."""
    if torch.device(map_location).type != "cpu":
        torch.empty(0, device=map_location)


def torch_reason(error: BaseException) -> str:
    """The line of a torch.load error that says what is wrong, without torch's advice around it.

    A weights-only refusal names the refused global (``GLOBAL posix.system``) on a line between a
    paragraph about ``weights_only`` and a link to the documentation; the advice to load with
    ``weights_only=False`` or to "file an issue" is wrong for a file that is damaged or hostile.
    """
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    lines = [line.strip() for line in str(error).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(boilerplate)]
    reason = next((line for line in reasons if "GLOBAL" in line), reasons[0] if reasons else "")
    reason = reason.removeprefix("WeightsUnpickler error:").strip()
    reason = reason.split(". ")[0].rstrip(".")  # the first sentence: what, not how to allow it
    if len(reason) > 200:
        reason = reason[:199] + "…"
    return reason or type(error).__name__


def refuse_special_file(path: Path, what: str) -> None:
    """Raise :class:`CheckpointError` when ``path`` is a device, a FIFO or a socket, before it is opened:
    reading a FIFO waits forever for a writer, and /dev/zero never ends."""
    kind = special_file_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}, not a {what} file: pass the path of the {what} file itself")


def unreadable_file_message(path: Path, what: str, error: OSError | None = None) -> str:
    """One line saying why ``path`` (a ``what``: "checkpoint", "image") cannot be opened, and what to do.

    ``error`` is the OSError opening it raised; None for a missing file.
    """
    if isinstance(error, PermissionError):
        return f"{path}: permission denied: make it readable (chmod u+r, or check its folder's permissions)"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a directory, not a file: pass the path of the {what} file itself"
    if error is not None and error.errno == errno.ELOOP:
        return f"{path} is a symbolic link loop: point the link at a real {what} file"
    if isinstance(error, NotADirectoryError):
        return f"{path}: a folder on that path is a file: check the path"
    if error is None or isinstance(error, FileNotFoundError):
        if path.is_symlink():
            return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
        return f"{path}: no such file"
    return f"{path} could not be read ({error.strerror or error})"


def state_dict_of(payload: Mapping, path: Path | str | os.PathLike) -> dict[str, torch.Tensor]:
    state = payload.get("state_dict")
    problem = _not_weights(state, "state_dict")
    if problem:
        raise CheckpointError(f"{path}'s {problem}: the file was not written by digitlib. Train again.")
    name = _non_finite_entry(state)
    if name is not None:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or infinity in {name!r}): its training diverged. "
            "Train it again (a lower learning rate may help)."
        )
    return cast(dict, state)


def _not_weights(state: object, field: str) -> str | None:
    """What makes ``state`` (the checkpoint's ``field``) not a dict of named tensors, or None if it is one."""
    if not isinstance(state, dict):
        return f"{field} is not a dict of weights ({type(state).__name__})"
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            return f"{field} entry {name!r} is not a tensor ({type(tensor).__name__})"
    return None


def _non_finite_entry(tree: object, name: str = "") -> str | None:
    """The name (``a.b.0``) of the first NaN or infinity in nested dicts and lists of tensors and numbers, or None."""
    if isinstance(tree, torch.Tensor):
        return name if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    if isinstance(tree, float):
        return None if math.isfinite(tree) else name
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    found = (_non_finite_entry(value, f"{name}.{key}" if name else str(key)) for key, value in items)
    return next((entry for entry in found if entry is not None), None)


def build_checked(
    payload: Mapping, state: Mapping[str, torch.Tensor], path: Path | str | os.PathLike, arch: str | None
) -> nn.Module:
    """digitlib's model named in ``payload``, built only once its settings are known to fit its weights."""
    saved_arch, kwargs = payload.get("arch"), payload.get("arch_kwargs", {})
    if saved_arch is None and "arch_class" in payload:
        cls = payload["arch_class"]
        raise CheckpointError(
            f"{path} holds the weights of a {cls} (not one of digitlib's architectures): build your {cls} "
            f"and pass it, load_checkpoint(path, model={cls}(...)), or call "
            f"model.load_state_dict(read_checkpoint(path)['state_dict'])."
        )
    if not isinstance(saved_arch, str) or saved_arch not in ARCHITECTURES:
        raise CheckpointError(_unknown_architecture(saved_arch, path))
    if arch is not None and arch != saved_arch:
        raise CheckpointError(f"{path} holds a {saved_arch!r} model, not the {arch!r} that was asked for.")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise CheckpointError(
            f"{path}'s arch_kwargs is {_short_repr(kwargs)}, not a dict of settings: "
            "the file was not written by digitlib. Train again."
        )
    try:
        # On the meta device a model has shapes but no memory: settings such as
        # widths=[10**9, ...] are caught by the shape check below before anything is allocated.
        with torch.device("meta"):
            skeleton = build_model(saved_arch, **kwargs)
    except Exception as error:  # any failure of the constructor means these settings are not ours
        raise CheckpointError(
            f"{path}'s arch_kwargs {_short_repr(kwargs)} do not build a {saved_arch!r} model "
            f"({type(error).__name__}: {torch_reason(error)}): it was not written by this digitlib. Train again."
        ) from None
    check_fits(state, skeleton.state_dict(), repr(saved_arch), path)
    return build_model(saved_arch, **kwargs)


def check_fits(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str, path) -> None:
    """Raise unless ``state`` has exactly the weights ``expected`` has, shape for shape."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} {list(state[key].shape)} for {list(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label}: {_first_few(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{path}'s weights do not fit a {name} model ({'; '.join(problems)}): "
            "it was written for a different model or version. Train it again."
        )


def _first_few(items: list[str], count: int = 3) -> str:
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- Recorded fields: each one checked where it is read -----------------------------------------

#: The per-epoch lists of a training history (``training.fit`` returns them; checkpoints record them).
HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def _is_number(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    """True for a finite real number (Python's or NumPy's, not a bool) from ``low`` to ``high``."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and low <= float(value) <= high)


def _is_whole(value: object, low: float = -math.inf) -> bool:
    """True for a whole number (Python's or NumPy's, not a bool) of at least ``low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low


def _is_positive(value: object) -> bool:
    return _is_number(value) and cast(float, value) > 0


def _are_numbers(value: object, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(value, list) and all(_is_number(item, low, high) for item in value)


#: (field name pattern, test, what the value must be) for the fields digitlib reads. Patterns are
#: matched in order, first match wins; ``metrics.test_accuracy`` names a key inside the ``metrics``
#: dict. Fields no pattern names are the caller's own metadata, left alone.
_FIELD_RULES: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("arch_class", lambda v: isinstance(v, str), "a class name"),
    ("seed", _is_whole, "a whole number"),
    ("standin", lambda v: isinstance(v, bool), "True or False"),
    ("epochs_completed", lambda v: _is_whole(v, 0), "a whole number of 0 or more"),
    ("best_epoch", lambda v: _is_whole(v, 1), "a whole number of 1 or more"),
    ("resume", lambda v: v is None or isinstance(v, dict), "None or a dict"),
    ("metrics.*accuracy", lambda v: _is_number(v, 0, 1), "a number from 0 to 1"),
    ("metrics.*loss", lambda v: _is_number(v, 0), "a finite number of 0 or more"),
    ("metrics.test_images", lambda v: _is_whole(v, 1), "a whole number of 1 or more"),
    ("metrics.*", _is_number, "a finite number"),
    ("history.*accuracy", lambda v: _are_numbers(v, 0, 1), "a list of numbers from 0 to 1"),
    ("history.*", _are_numbers, "a list of finite numbers"),
    ("training.epochs", lambda v: _is_whole(v, 1), "a whole number of 1 or more"),
    ("training.batch_size", lambda v: v is None or _is_whole(v, 1), "None or a whole number of 1 or more"),
    ("training.*lr", _is_positive, "a finite positive number"),
    ("training.weight_decay", lambda v: _is_number(v, 0), "a finite number of 0 or more"),
    ("training.clip_norm", lambda v: v is None or _is_positive(v), "None or a finite positive number"),
    ("training.label_smoothing", lambda v: _is_number(v, 0, 0.99), "a number from 0 to 0.99"),
    ("training.ema_decay", lambda v: v is None or (_is_positive(v) and _is_number(v, 0, 0.999999)),
     "None or a number between 0 and 1"),
    ("training.amp", lambda v: v is None or isinstance(v, (bool, str)), "None, True, False or text"),
    ("training.*", lambda v: isinstance(v, str), "text"),
    ("data.train_limit", lambda v: v is None or _is_whole(v, 1), "None or a whole number of 1 or more"),
    ("data.split_seed", _is_whole, "a whole number"),
    ("data.*", lambda v: isinstance(v, str), "text"),
    ("export.parameters", lambda v: _is_whole(v, 0), "a whole number of 0 or more"),
    ("export.calibration_images", lambda v: _is_whole(v, 1), "a whole number of 1 or more"),
)
#: Fields that hold a dict of named values (checked key by key with the rules above).
_DICT_FIELDS = ("metrics", "history", "training", "data", "export")


def recorded_normalization(info: Mapping, path: str | os.PathLike) -> tuple[float, float]:
    """The (mean, std) a checkpoint's model was trained with, from its ``info``, once known to be usable.

    Raises :class:`CheckpointError` when the checkpoint does not record it (a model trained
    without ``fit(..., metadata=...)``), or records values no input could be normalised with:
    a std of 0 would turn every image into NaN.
    """
    recorded = info.get("normalization")
    if not isinstance(recorded, Mapping) or "mean" not in recorded or "std" not in recorded:
        raise CheckpointError(
            f"{path} does not record its training normalisation (mean, std): train it again with "
            "`python -m digitlib train` or digitlib's fit(..., metadata={'normalization': ...})."
        )
    mean, std = _as_float(recorded["mean"]), _as_float(recorded["std"])
    if mean is None or std is None or not math.isfinite(mean) or not math.isfinite(std) or std <= 0:
        raise CheckpointError(
            f"{path} records an unusable normalisation (mean {_short_repr(recorded['mean'], 30)}, "
            f"std {_short_repr(recorded['std'], 30)}): both must be finite numbers and std above 0. Train it again."
        )
    return mean, std


def checkpoint_dataset(info: Mapping, path: str | os.PathLike) -> str:
    """``data.dataset_of(info)``, with a dataset this version does not know refused as a :class:`CheckpointError`."""
    from . import data
    from .errors import DataError

    try:
        return data.dataset_of(info)
    except DataError as error:
        raise CheckpointError(f"{path} records an {error}") from None


def _as_float(value: object) -> float | None:
    """``value`` as a float if it is a single number (a Python, NumPy or 1-element torch number), else None."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return None


def check_fields(info: Mapping, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError`, one line naming the field, unless every field digitlib reads from a
    checkpoint (or an exported ONNX file's metadata) is of its type and in its range.

    Accuracies are numbers from 0 to 1, losses finite and not negative, metrics a dict of numbers,
    the history a dict of equally long lists of numbers, epochs and counts whole numbers, the
    normalisation usable and the dataset one this version knows. A file that fails is damaged or
    crafted: believing it printed "test accuracy 150.00%" or crashed ``predict`` with a traceback.
    """
    for name, value in _named_fields(info, path):
        rule = next((rule for rule in _FIELD_RULES if fnmatch.fnmatchcase(name, rule[0])), None)
        if rule is not None and not rule[1](value):
            raise CheckpointError(_bad_field(path, name, value, rule[2]))
    arch = info.get("arch")
    if arch is not None and not (isinstance(arch, str) and arch in ARCHITECTURES):
        raise CheckpointError(_unknown_architecture(arch, path))
    _check_epochs_agree(info, path)
    if "normalization" in info:
        recorded_normalization(info, path)
    if "data" in info:
        checkpoint_dataset(info, path)


def _named_fields(info: Mapping, path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """(name, value) of each field, and of each key inside the dict fields (``metrics.test_accuracy``)."""
    for key, value in info.items():
        if key not in _DICT_FIELDS:
            yield str(key), value
        elif not isinstance(value, dict):
            raise CheckpointError(_bad_field(path, key, value, "a dict"))
        else:
            yield from ((f"{key}.{inner}", item) for inner, item in value.items())


def _check_epochs_agree(info: Mapping, path: str | os.PathLike) -> None:
    """The history's lists are equally long, and the best epoch is one of the epochs completed."""
    lengths = {len(values) for values in info.get("history", {}).values()}
    if len(lengths) > 1:
        raise CheckpointError(_damaged(path, f"records a history of {sorted(lengths)} epochs, not of one length"))
    completed, best = info.get("epochs_completed"), info.get("best_epoch")
    if completed is not None and best is not None and best > completed:
        raise CheckpointError(_bad_field(path, "best_epoch", best, f"at most epochs_completed ({completed})"))


def _bad_field(path: str | os.PathLike, name: str, value: object, requirement: str) -> str:
    return _damaged(path, f"records {name} = {_short_repr(value, 40)}, not {requirement}")


def _damaged(path: str | os.PathLike, what: str) -> str:
    """One line: ``path`` ``what`` (say, "records seed = 'zero', not a whole number"), and what to do."""
    again = "export it again" if Path(path).suffix.lower() == ".onnx" else "train it again"
    return f"{path} {what}: the file is damaged or was not written by digitlib; {again}"


def _unknown_architecture(arch: object, path: str | os.PathLike) -> str:
    return f"{path} names an unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}."


# --- Exported ONNX models: what goes in and what comes out ---------------------------------------

ONNX_INPUT_NAME = "image"  # (N, 1, 28, 28) float32, normalised with the metadata's mean and std
ONNX_OUTPUT_NAME = "log_probs"  # (N, 10), as the PyTorch models return
#: How far from 0 the log of the summed probabilities may be: measured at most 2e-7 for exported fp32
#: and int8 models on 1,000 test images (int8 keeps the final log_softmax in float32); raw logits (a
#: model without its log_softmax) are off by whole units.
LOG_PROBABILITY_TOLERANCE = 1e-3


def check_onnx_signature(inputs: list, outputs: list, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless an ONNX model (``inputs``/``outputs``: ONNX Runtime's
    ``get_inputs()``/``get_outputs()``) takes one float image (N, 1, 28, 28), N dynamic or 1, and gives
    one output named ``log_probs``."""
    names = [i.name for i in inputs], [o.name for o in outputs]
    if names != ([ONNX_INPUT_NAME], [ONNX_OUTPUT_NAME]):
        raise CheckpointError(
            f"{path} takes {names[0]} and gives {names[1]}, not ['{ONNX_INPUT_NAME}'] → ['{ONNX_OUTPUT_NAME}']: "
            "export it again with `python -m digitlib export`"
        )
    shape, kind = list(inputs[0].shape), inputs[0].type
    batch_ok = bool(shape) and (shape[0] == 1 or not isinstance(shape[0], int))  # a name or None: dynamic
    if not batch_ok or shape[1:] != [1, 28, 28] or kind != "tensor(float)":
        raise CheckpointError(
            f"{path} takes {kind} of shape {shape}, not float images of 1x28x28 (any batch size or 1): "
            "it is not a digitlib model; export one with `python -m digitlib export`"
        )


def probe_image(norm: tuple[float, float]) -> torch.Tensor:
    """A normalised (1, 1, 28, 28) picture of a "1" (a vertical stroke), to see what a model answers."""
    picture = torch.zeros(1, 1, 28, 28)
    picture[..., 4:24, 13:16] = 1.0
    return normalize(picture, *norm)


def check_log_probabilities(model: Callable[[torch.Tensor], torch.Tensor], norm: tuple[float, float],
                            path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``model`` answers :func:`probe_image` with ten finite log
    probabilities (their exponentials sum to 1).

    An ONNX file can hold any graph: one giving NaN printed "0 nan%" and one giving raw logits "0
    100.0%", both with no doubt. Checked once when the file is loaded, on one image.
    """
    with torch.inference_mode():
        try:
            answer = torch.as_tensor(model(probe_image(norm))).double()
        except Exception as error:  # any runtime's failure on a valid input means an unusable model
            raise CheckpointError(f"{path} fails on a 1x28x28 probe image ({torch_reason(error)}): "
                                  "export it again with `python -m digitlib export`") from None
    if tuple(answer.shape) != (1, 10):
        raise CheckpointError(f"{path} answers one image with shape {list(answer.shape)}, not ten class scores "
                              "[1, 10]: it is not a digitlib model; export one with `python -m digitlib export`")
    if not bool(torch.isfinite(answer).all()):
        raise CheckpointError(f"{path} answers a probe image with NaN or infinity: its weights are broken; "
                              "export it again from a good checkpoint")
    total = float(torch.logsumexp(answer, dim=1))
    if abs(total) > LOG_PROBABILITY_TOLERANCE:
        raise CheckpointError(
            f"{path}'s outputs are not log probabilities (their exponentials sum to {math.exp(total):.3g}, not 1, "
            "on a probe image): export it again with `python -m digitlib export`"
        )


# --- Resume states: a run continued only from a state known to be whole --------------------------

#: What a resume state must hold besides the optional ``scaler`` and ``rng``.
RESUME_KEYS = ("epoch", "model", "optimizer", "scheduler")


def check_resume_state(payload: Mapping, path: str | os.PathLike, fresh: Mapping[str, dict]) -> dict:
    """The ``resume`` dict of the checkpoint ``payload`` (as :func:`read_checkpoint` returned it), once
    it is known to be whole; raises :class:`CheckpointError`, one line naming what is wrong, otherwise.

    ``fresh`` holds the ``model``, ``optimizer`` and ``scheduler`` state dicts of the run about to
    continue: the saved ones must have their structure (keys, lengths, weight shapes). Also checked:
    the epoch (a whole number from 1 to the run's epochs minus 1, as long as the history), finite
    weights and optimizer state, and random-number states torch accepts. A damaged state otherwise
    ended in a TypeError or KeyError traceback, or NaN weights in "the learning rate is too high".
    """
    problem = next((problem for problem in _resume_problems(payload, fresh) if problem), None)
    if problem:
        raise CheckpointError(f"{path}'s resume state is unusable: {problem}; the run cannot be continued, "
                              "train it again from the start (--force)")
    return payload["resume"]


def _resume_problems(payload: Mapping, fresh: Mapping[str, dict]) -> Iterator[str | None]:
    """Each check of :func:`check_resume_state` in turn, as a problem or None; a check runs only once
    those before it passed (the caller stops at the first problem), so it may rely on them."""
    state, history = payload["resume"], payload.get("history", {})
    missing = ([f"resume.{key}" for key in RESUME_KEYS if key not in state]
               + [key for key in ("training", "history", "state_dict") if key not in payload]
               + [f"history.{key}" for key in HISTORY_KEYS if "history" in payload and key not in history])
    yield f"{', '.join(missing)} missing" if missing else None
    epoch, epochs, done = state["epoch"], payload["training"].get("epochs"), len(history["epoch"])
    in_range = _is_whole(epoch, 1) and _is_whole(epochs) and epoch < epochs and epoch == done
    yield None if in_range else (f"resume.epoch is {_short_repr(epoch, 20)}, not the {done} epochs its history "
                                 f"holds, from 1 to {_short_repr(epochs, 20)} - 1")
    yield _not_weights(state["model"], "resume.model") or _not_weights(payload["state_dict"], "state_dict")
    yield _structure_difference(state["model"], fresh["model"], "resume.model")
    yield _structure_difference(payload["state_dict"], fresh["model"], "state_dict")
    optimizer = state["optimizer"]
    per_weight = optimizer.get("state") if isinstance(optimizer, dict) else None
    whole = isinstance(per_weight, dict) and all(isinstance(value, dict) for value in per_weight.values())
    yield None if whole else "resume.optimizer is not an optimizer's state"
    yield _structure_difference(optimizer.get("param_groups"), fresh["optimizer"]["param_groups"],
                                "resume.optimizer.param_groups")
    yield _structure_difference(state["scheduler"], fresh["scheduler"], "resume.scheduler")
    yield None if state.get("scaler") is None or isinstance(state["scaler"], dict) else "resume.scaler is not a dict"
    non_finite = _non_finite_entry({"resume": state, "state_dict": payload["state_dict"]})
    yield None if non_finite is None else f"NaN or infinity in {non_finite}"
    yield _rng_problem(state.get("rng"))


def _structure_difference(saved: object, fresh: object, name: str) -> str | None:
    """Where ``saved`` differs in structure from ``fresh`` (the same keys, list lengths and tensor shapes,
    a finite number where ``fresh`` has a number), as a phrase naming it; None where it does not."""
    if isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            return f"{name} does not have the entries this run's has"
        found = (_structure_difference(saved[key], fresh[key], f"{name}.{key}") for key in fresh)
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{name} is not a list of {len(fresh)}"
        found = (_structure_difference(item, fresh[i], f"{name}.{i}") for i, item in enumerate(saved))
    elif isinstance(fresh, torch.Tensor):
        fits = isinstance(saved, torch.Tensor) and saved.shape == fresh.shape
        return None if fits else f"{name} is not a tensor of shape {list(fresh.shape)}"
    elif _is_number(fresh):
        return None if _is_number(saved) else f"{name} is {_short_repr(saved, 20)}, not a finite number"
    else:
        return None if saved is None or isinstance(saved, (bool, str, int, float)) else f"{name} is not a setting"
    return next((difference for difference in found if difference), None)


def _rng_problem(states: object) -> str | None:
    """What makes ``states`` (``{"torch": ..., "cuda": [...]}``) not random-number states torch accepts, or None."""
    if states is None:
        return None
    if not isinstance(states, dict) or not isinstance(states.get("torch"), torch.Tensor):
        return "resume.rng is not a dict of random-number states"
    cuda = states.get("cuda", [])
    if not isinstance(cuda, list):
        return "resume.rng.cuda is not a list of random-number states"
    named = [("torch", states["torch"], "cpu"), *((f"cuda.{i}", state, "cuda") for i, state in enumerate(cuda))]
    for name, state, device in named:
        if not _is_rng_state(state, device):
            return f"resume.rng.{name} is not a random-number state"
    return None


def _is_rng_state(state: object, device: str) -> bool:
    """True when ``state`` is a byte tensor that a throwaway generator on ``device`` accepts (torch's own
    check); a CUDA state on a machine without CUDA is only checked to be bytes (it is not restored there)."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        return False
    if device == "cuda" and not torch.cuda.is_available():
        return True
    try:
        torch.Generator(device=device).set_state(state.cpu())
    except (TypeError, RuntimeError):
        return False
    return True


def check_optimizer_state(optimizer: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless every per-parameter tensor of a resumed ``optimizer`` (Adam's
    moving averages) has its parameter's shape: torch loads any, and fails only at the next step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(
                        f"{path}'s resume state is unusable: its optimizer's {key} has shape {list(value.shape)} "
                        f"for a weight of {list(param.shape)}; the run cannot be continued, train it again from "
                        "the start (--force)")
