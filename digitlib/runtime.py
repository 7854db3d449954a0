"""Where the arithmetic runs: the device, mixed precision, random seeds and CPU threads.

One rule keeps the course working on a CPU, a CUDA GPU and Apple's MPS alike: **a model and its
inputs are on one device**. Code that builds a model moves it to the device it was given (``fit``,
``load_checkpoint``); code that is handed a model and tensors moves the tensors to the model
(:func:`model_device`, :func:`to_model`) and hands results back on the CPU, ready for NumPy and
matplotlib. CONTRIBUTING.md states the rule for notebooks.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .errors import DigitlibError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """``preferred`` if given, else the best available: cuda, then mps, then cpu."""
    if preferred is not None and str(preferred) != "auto":
        try:
            device = torch.device(preferred)
        except RuntimeError:
            raise DigitlibError(f"{preferred!r} is not a device: use cuda, mps, cpu or auto.") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        if not available.get(device.type, False):
            raise DigitlibError(f"device {preferred!r} is not available here: use cpu or auto.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device ``model``'s weights are on (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def to_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``model``'s device, so that a model loaded on a GPU can be handed CPU tensors."""
    return x.to(model_device(model))


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), read from /proc/cpuinfo.

    Without those instructions oneDNN emulates bf16 and autocast slows training down many times over;
    with them it speeds it up (docs/results.md's speed section has both). Other systems than Linux report
    False: measure there with ``bench --amp``.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            flags = next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(device: torch.device, amp: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for full fp32.

    ``amp=None`` means: on for CUDA, on for CPUs with bf16 hardware (:func:`cpu_has_bf16`), off
    elsewhere. CUDA uses bf16 where the GPU supports it, else fp16 (which needs a GradScaler).
    """
    if amp is None:
        amp = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing at all when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_to(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device``, images in channels-last layout (faster convolutions on CPUs and tensor cores)."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (None: leave the setting alone)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_settings() -> str:
    """The CPU threading a timing ran under: PyTorch's intra-op threads and OpenMP's wait policy.

    The policy is read from the environment, where OpenMP read it when torch was imported
    (``digitlib/__init__.py`` makes it PASSIVE unless it was set).
    """
    return f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
