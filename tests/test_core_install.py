"""The core install trains, evaluates and predicts without any extra (no notebook, widget, plotting,
Captum or ONNX package), and an extra that is missing is named in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from digitlib import data, evaluation

#: Top-level packages that only the extras bring (pyproject.toml's optional-dependencies).
EXTRAS_ONLY = ("IPython", "ipykernel", "ipywidgets", "ipycanvas", "jupyter_client", "jupyter_server", "jupyterlab",
               "nbformat", "voila", "matplotlib", "seaborn", "torchinfo", "captum", "onnx", "onnxruntime", "onnxscript")

# Runs the command line as if no extra were installed: a None in sys.modules makes `import name` fail
# with ModuleNotFoundError and importlib.util.find_spec(name) answer None, as for a missing package.
WITHOUT_EXTRAS = textwrap.dedent(f"""
    import sys

    sys.modules.update(dict.fromkeys({EXTRAS_ONLY!r}))
    from digitlib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def without_extras(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *map(str, argv)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_train_predict_and_evaluate_need_no_extra(tmp_path):
    checkpoint = tmp_path / "cnn.pt"
    trained = without_extras("train", "--model", "cnn", "--limit", "2000", "--epochs", "1", "--out", checkpoint)
    assert trained.returncode == 0, trained.stderr
    seven = tmp_path / "seven.png"
    evaluation.as_drawing(data.load_mnist(train=False)[0][0]).save(seven)  # the first test image is a 7
    predicted = without_extras("predict", seven, "--model", checkpoint)
    assert predicted.returncode == 0 and "seven.png" in predicted.stdout, predicted.stderr
    evaluated = without_extras("evaluate", "--model", checkpoint, "--limit", "200", "--repeats", "2")
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout, evaluated.stderr

    exported = without_extras("export", "--model", checkpoint, "--out", tmp_path / "cnn.onnx")
    assert exported.returncode != 0 and "Traceback" not in exported.stderr
    assert exported.stderr.strip().endswith("pip install -e '.[export]')") and len(exported.stderr.splitlines()) == 1
    assert not (tmp_path / "cnn.onnx").exists()


def test_the_check_blocks_what_it_names():
    script = WITHOUT_EXTRAS.replace("from digitlib.cli import main", "import matplotlib.pyplot")
    blocked = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr and "matplotlib" in blocked.stderr
