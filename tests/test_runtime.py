"""Devices, mixed precision and threads: behaviour that depends on the machine, tested by setting the condition.

The suite must pass on an AVX2-only CPU (bf16 emulated: autocast off by default) and on a CPU with
AVX-512 BF16 or AMX (autocast on by default) alike, so every test here forces the branch it checks.
A CPU has one device, so "inputs follow the model" is checked with a model on PyTorch's ``meta``
device (shapes only, no data): the input each library function hands the model must arrive there.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import train_config

import digitlib as dl
from digitlib import confidence, explain, inference, runtime
from digitlib.checkpoints import read_checkpoint
from digitlib.runtime import amp_dtype, pick_device
from digitlib.training import fit

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(("extra", "expected"), [
    ("", False), ("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True), ("avx512f avx512bw", False),
])
def test_cpu_has_bf16_reads_the_flags(monkeypatch, extra, expected):
    monkeypatch.setattr(runtime, "open", lambda *args, **kwargs: io.StringIO(CPUINFO.format(extra=extra)),
                        raising=False)
    assert runtime.cpu_has_bf16() is expected


def test_cpu_has_bf16_is_false_where_there_is_no_cpuinfo(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(runtime, "open", missing, raising=False)
    assert runtime.cpu_has_bf16() is False


@pytest.mark.parametrize("hardware_bf16", [False, True], ids=["avx2-only", "bf16-hardware"])
def test_amp_default_on_cpu_follows_the_hardware(monkeypatch, hardware_bf16):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: hardware_bf16)
    cpu = torch.device("cpu")
    assert amp_dtype(cpu) == (torch.bfloat16 if hardware_bf16 else None)
    assert amp_dtype(cpu, False) is None and amp_dtype(cpu, True) == torch.bfloat16  # forcing beats the default


def test_amp_on_cuda_and_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert amp_dtype(torch.device("cuda")) == torch.float16  # older GPUs: fp16, with a GradScaler
    assert amp_dtype(torch.device("mps")) is None and amp_dtype(torch.device("mps"), True) == torch.float16


@pytest.mark.parametrize("hardware_bf16", [False, True], ids=["avx2-only", "bf16-hardware"])
def test_fit_trains_in_the_precision_it_was_given(monkeypatch, tmp_path, hardware_bf16):
    """Both branches on any CPU: the default follows the (pretended) hardware, and bf16 is computed either
    way (emulated where the hardware lacks it, only slower)."""
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: hardware_bf16)
    splits = dl.data.load_splits(seed=0, train_limit=300, test_limit=100)
    runtime.seed_everything(0)
    train_loader, val_loader, _ = dl.loaders.make_loaders(splits, batch_size=60, augment="none")
    model = dl.models.build_model("cnn")
    conv_outputs = []
    model.features[0].register_forward_hook(lambda module, inputs, output: conv_outputs.append(output.dtype))
    path = tmp_path / "amp.pt"
    history = fit(model, train_loader, val_loader, train_config(1, train_loader), device="cpu", checkpoint=path,
                  progress=False, log=None)
    expected = torch.bfloat16 if hardware_bf16 else torch.float32
    assert set(conv_outputs) == {expected}  # in training and in validation
    assert all(math.isfinite(value) for value in history["train_loss"] + history["val_loss"])
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())  # fp32 master weights
    assert read_checkpoint(path)["training"]["precision"] == ("bfloat16" if hardware_bf16 else "off")


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == pick_device("auto") == pick_device("cpu") == torch.device("cpu")
    with pytest.raises(dl.DigitlibError, match="'cuda' is not available here"):
        pick_device("cuda")
    with pytest.raises(dl.DigitlibError, match="'gpu' is not a device"):
        pick_device("gpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda") and pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("environment", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_waiting_threads_sleep_unless_the_environment_says_otherwise(environment, expected):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if environment:
        env["OMP_WAIT_POLICY"] = environment
    code = "import sys, digitlib; early = 'torch' in sys.modules; print(early, digitlib.runtime.thread_settings())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    # `import digitlib` loads no torch, so the policy is in place before OpenMP reads it.
    assert out.split()[0] == "False" and out.strip().endswith(f"OMP_WAIT_POLICY={expected}")


def test_torch_threads_restores_the_setting():
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with runtime.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


# --- Inputs follow the model ---------------------------------------------------------------------------


class Arrived(Exception):
    """Raised by the probe once it has seen where the model's input arrived."""


def on_meta(arch: str) -> tuple[torch.nn.Module, list[torch.device]]:
    """A model on the meta device, and the list its first layer fills with the device of each input it gets."""
    model = dl.models.build_model(arch).to("meta").eval()
    seen: list[torch.device] = []

    def probe(module, inputs):
        seen.append(inputs[0].device)
        raise Arrived

    first = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    first.register_forward_pre_hook(probe)
    return model, seen


CPU_IMAGE = torch.zeros(1, 1, 28, 28)
CALLS = {
    "raw_logits": lambda model: confidence.raw_logits(model, CPU_IMAGE),
    "feature_maps": lambda model: explain.feature_maps(model, CPU_IMAGE),
    "saliency": lambda model: explain.saliency(model, CPU_IMAGE, 0),
    "integrated_gradients": lambda model: explain.integrated_gradients(model, CPU_IMAGE, 0, CPU_IMAGE, steps=2),
    "grad_cam": lambda model: explain.grad_cam(model, CPU_IMAGE, 0),
    "read_image": lambda model: inference.read_image([(model, 0.13, 0.31)], torch.rand(28, 28).numpy()),
}


@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
def test_library_functions_move_cpu_inputs_to_the_models_device(call):
    pytest.importorskip("captum")
    model, seen = on_meta("cnn")
    with pytest.raises(Arrived):
        CALLS[call](model)
    assert seen == [torch.device("meta")]


def test_results_come_back_on_the_cpu_for_numpy():
    model = dl.models.build_model("resnet").eval()
    x = torch.rand(2, 1, 28, 28)
    assert confidence.raw_logits(model, x).device.type == "cpu"
    assert all(map.device.type == "cpu" for map in explain.feature_maps(model, x[:1]).values())
    assert runtime.model_device(model) == torch.device("cpu")
    assert runtime.model_device(torch.nn.ReLU()) == torch.device("cpu")  # no weights: the CPU

