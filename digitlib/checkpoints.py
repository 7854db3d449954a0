"""Checkpoints: weights plus everything needed to use and trust them, written atomically.

Reading one is a trust boundary: a checkpoint may come from anywhere, so every field a model is
built from is checked, and each way a file can be unusable ends in one line saying which.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
import pickle
import platform
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, NamedTuple, cast

import torch
from torch import nn

from .errors import CheckpointError
from .files import atomic_write
from .models import ARCHITECTURES, architecture_of, build_model

FORMAT = "digitlib-checkpoint-v1"

#: How a file written by ``torch.save`` starts: a zip archive, or (before PyTorch 1.6, or with
#: ``_use_new_zipfile_serialization=False``) a pickled magic number in any pickle protocol.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGICS = tuple(
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=protocol)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1)
)
_HEADER_BYTES = max(len(magic) for magic in (_ZIP_MAGIC, *_LEGACY_MAGICS))


class Normalization(NamedTuple):
    """The pixel mean and standard deviation a model was trained with (pixels scaled to [0, 1])."""

    mean: float
    std: float


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    import torchvision  # only for its version: importing it costs about a second

    from . import __version__

    return {
        "digitlib": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | os.PathLike, model: nn.Module, state_dict: dict | None = None, **fields) -> Path:
    """Write ``model``'s weights (or ``state_dict``) and ``fields`` (normalisation, history,
    metrics, ...) to ``path``.

    A model of one of digitlib's architectures is recorded by name (``arch``) and settings
    (``arch_kwargs``), so :func:`load_checkpoint` can rebuild it. Any other ``nn.Module`` (say,
    one written in a notebook) is saved too, with ``arch`` None and its class name under
    ``arch_class``: load it with ``load_checkpoint(path, model=YourClass(...))``.

    The file is written next to its destination and renamed over it, so an interruption
    (Ctrl-C, a full disk) leaves the previous checkpoint whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        arch: str | None = architecture_of(model)
        arch_kwargs = dict(cast(dict, model.config))  # each of digitlib's models records its settings
    except ValueError:  # not one of ours: the weights are still worth keeping
        arch, arch_kwargs = None, {}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "arch_class": type(model).__qualname__,
        "arch_kwargs": arch_kwargs,
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()},
        "versions": versions(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    _atomic_save(payload, path)
    return path


def _atomic_save(payload: dict, path: Path) -> None:
    atomic_write(path, lambda file: torch.save(payload, file))


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's contents as a dict, loaded with ``weights_only=True`` (no code can run).

    Raises :class:`CheckpointError` with one line for a missing or unreadable file, a file that is
    not a PyTorch checkpoint, a damaged one, one refused for safety, or a PyTorch file that is not
    digitlib's.
    """
    path = Path(path)
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        if path.is_symlink():
            raise CheckpointError(unreadable_file_message(path, "checkpoint")) from None
        raise CheckpointError(
            f"no checkpoint at {path}: train one with `python -m digitlib train --out {path}` "
            "or run notebooks 02 and 03."
        ) from None
    except OSError as error:
        raise CheckpointError(unreadable_file_message(path, "checkpoint", error)) from None
    with file:
        payload = _load_torch_file(path, file, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a digitlib checkpoint (no '{FORMAT}' marker). "
            "Pass a file written by digitlib's training."
        )
    return payload


def _load_torch_file(path: Path, file: IO[bytes], map_location: str | torch.device) -> object:
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
    _check_device(map_location)  # so that an unusable device is not taken for a damaged file below
    try:
        with warnings.catch_warnings():
            # torch warns about unusual pickle protocols before refusing the file: the refusal says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(file, map_location=map_location, weights_only=True)
    except OSError as error:
        raise CheckpointError(unreadable_file_message(path, "checkpoint", error)) from None
    except Exception as error:  # a damaged file makes torch fail in many ways: each means "damaged"
        reason = _torch_reason(error)
        if "GLOBAL" in reason:
            raise CheckpointError(
                f"{path} is refused for safety ({reason}): loading it would run code or build objects, "
                "which a digitlib checkpoint never needs. Use a checkpoint you trained or trust."
            ) from None
        raise CheckpointError(
            f"{path} is a damaged or truncated PyTorch checkpoint ({reason}): delete it and train again."
        ) from None


def _check_device(map_location: str | torch.device) -> None:
    """Raise torch's own error when ``map_location`` cannot hold tensors (say, CUDA without a GPU):
    a problem with the machine, not with the checkpoint."""
    if torch.device(map_location).type != "cpu":
        torch.empty(0, device=map_location)


def _torch_reason(error: BaseException) -> str:
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


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    model: nn.Module | None = None,
) -> tuple[nn.Module, dict]:
    """The model saved at ``path``: (model in eval mode on ``device``, the other fields).

    digitlib rebuilds its own architectures; ``arch`` (``"cnn"``/``"resnet"``), when given, must
    match the checkpoint's. Pass ``model`` to load the weights into a module you built yourself
    instead (any ``nn.Module`` whose weights have the same names and shapes; it is returned).
    Everything the model is made from is checked first: a crafted or damaged file raises
    :class:`CheckpointError` and never builds a wrong model or allocates what it claims.
    """
    payload = read_checkpoint(path, map_location=device)
    state = _state_dict_of(payload, path)
    if model is None:
        model, name = _build(payload, state, path, arch), repr(payload["arch"])
    else:
        name = type(model).__name__
        _check_fits(state, model.state_dict(), name, path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as error:  # e.g. a complex tensor for a float weight
        raise CheckpointError(f"{path}'s weights do not fit a {name} model ({_torch_reason(error)}).") from None
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["path"] = Path(path)  # where it came from: a stand-in or the full model, say
    return model.to(device).eval(), info


def _state_dict_of(payload: Mapping, path: Path | str | os.PathLike) -> dict[str, torch.Tensor]:
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}'s state_dict is not a dict of weights ({type(state).__name__}): "
            "the file was not written by digitlib. Train again."
        )
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"{path}'s state_dict entry {name!r} is not a tensor ({type(tensor).__name__}): "
                "the file was not written by digitlib. Train again."
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path} holds non-finite weights (NaN or infinity in {name!r}): its training diverged. "
                "Train it again (a lower learning rate may help)."
            )
    return state


def _build(
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
        known = ", ".join(ARCHITECTURES)
        raise CheckpointError(f"{path} names an unknown architecture {saved_arch!r}; known: {known}.")
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
            f"({type(error).__name__}: {_torch_reason(error)}): it was not written by this digitlib. Train again."
        ) from None
    _check_fits(state, skeleton.state_dict(), repr(saved_arch), path)
    return build_model(saved_arch, **kwargs)


def _check_fits(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str, path) -> None:
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


def normalization(info: Mapping, path: str | os.PathLike) -> Normalization:
    """The (mean, std) a checkpoint's model was trained with, from its ``info`` (see :func:`load_checkpoint`).

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
    return Normalization(mean, std)


def checkpoint_dataset(info: Mapping, path: str | os.PathLike) -> str:
    """``data.dataset_of(info)``, with a dataset this version does not know refused as a :class:`CheckpointError`."""
    from . import data
    from .errors import DataError

    try:
        return data.dataset_of(info)
    except DataError as error:
        raise CheckpointError(f"{path} records an {error}") from None


def require_dataset(info: Mapping, path: str | os.PathLike, dataset: str, advice: str | None = None) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint (or ONNX file) ``info`` was trained on ``dataset``.

    ``advice`` ends the message (default: pass a checkpoint trained on that dataset). A dataset name
    this version does not know is refused too.
    """
    from . import data

    trained_on = checkpoint_dataset(info, path)
    if trained_on != dataset:
        wanted = data.dataset_info(dataset).title
        raise CheckpointError(f"{path} was trained on {data.dataset_info(trained_on).title}, not {wanted}: "
                              + (advice or f"pass a checkpoint trained on {wanted}"))


def _as_float(value: object) -> float | None:
    """``value`` as a float if it is a single number (a Python, NumPy or 1-element torch number), else None."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return None


def update_checkpoint(path: str | os.PathLike, **fields) -> Path:
    """Add or replace fields (e.g. test metrics) in an existing checkpoint, atomically."""
    path = Path(path)
    payload = read_checkpoint(path)
    payload.update(fields)
    _atomic_save(payload, path)
    return path
