#!/usr/bin/env bash
# The CUDA check, in two halves (see CONTRIBUTING.md, "On a GPU"):
#   tools/gpu.sh prepare   here, with PyPI: wheels the GPU machine lacks -> .whl/, MNIST's files -> .gpu/
#   tools/gpu.sh test      there, no registry: install the wheels, then the CUDA tests and every notebook
#                          and solution in smoke mode on the GPU (make test-gpu)
# The GPU machine's python3 (3.12) has torch, torchvision, onnx, onnxruntime, onnxscript, pytest,
# matplotlib, seaborn, scikit-learn and pandas; the rest comes as wheels (20 MB), with the data (41 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    # Pure-Python wheels and the few compiled ones, for CPython 3.12 on x86-64 Linux.
    # (not debugpy, 4 MB: ipykernel runs without it, and the 64 MiB a call may carry are nearly all used)
    local kernel=(ipykernel ipython ipython-pygments-lexers jupyter-client jupyter-core pyzmq tornado traitlets comm
                  matplotlib-inline nest-asyncio jedi parso prompt-toolkit wcwidth decorator stack-data
                  executing asttokens pure-eval pexpect ptyprocess platformdirs)
    local notebooks=(nbval nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py
                     ipywidgets widgetsnbextension jupyterlab-widgets ipycanvas captum)
    bash ../shared/tools/gpu-wheels.sh .whl "${kernel[@]}" "${notebooks[@]}"
    mkdir -p .gpu/mnist .gpu/fashion
    cp ../shared/mnist/*.gz .gpu/mnist/
    local fashion=/usr/share/datasets/fashion-mnist
    if ls "$fashion"/*.gz >/dev/null 2>&1; then cp "$fashion"/*.gz .gpu/fashion/; fi
    grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    grep -qsx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    du -sh .whl .gpu
    echo "ready: run 'make test-gpu' on the GPU machine, carrying .whl and .gpu"
}

test_on_gpu() {
    python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: make test-gpu needs one')"
    [ -d .whl ] || { echo "no .whl/: run tools/gpu.sh prepare first, where PyPI is reachable"; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD NO_ALBUMENTATIONS_UPDATE=1 DIGITLIB_DATA=$PWD/data
    # `digitlib data` copies MNIST from ../shared/mnist and Fashion-MNIST from Debian's folder: stage both.
    mkdir -p ../shared && cp -r .gpu/mnist ../shared/
    python3 -m digitlib data --dataset mnist
    if ls .gpu/fashion/*.gz >/dev/null 2>&1; then
        mkdir -p data/FashionMNIST/raw && cp .gpu/fashion/*.gz data/FashionMNIST/raw/
        python3 -m digitlib data --dataset fashion || true
    fi
    python3 -m ipykernel install --user --name python3 >/dev/null  # the kernel nbval starts
    python3 -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
    python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
    DIGITLIB_SMOKE=1 python3 -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks
}

case "${1:-}" in
    prepare) prepare ;;
    test) test_on_gpu ;;
    *) echo "usage: tools/gpu.sh prepare|test"; exit 2 ;;
esac
