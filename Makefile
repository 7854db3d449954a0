# The course in a few commands. Each target creates or refreshes .venv, installs what it needs and makes MNIST ready.
#   make lab       set up the course (the notebooks' extras), then open it in JupyterLab
#   make test      set up everything, then lint (ruff, mypy) and run every test: pytest (with the quick-mode book, read in Chromium) and all notebooks in smoke mode (nbval)
#   make test-gpu  on a machine with a CUDA GPU: the CUDA tests and every notebook in smoke mode on the GPU
#   make course    set up the course, then execute every notebook in full mode into build/
#   make book      set up the book, then build the course as a website into build/book/ (QUICK=1: quick mode, build/book-quick/)
#   make figures   build the book, then copy its key figures, small, to docs/ for the README (QUICK=1 from the quick book)
#   make app       set up the app, then serve the drawing pad app (app/drawing_pad.ipynb) on localhost with Voila
#   make models    set up the core, train both models with the full-run settings over SEEDS seeds, and record
#                  their ensembles (each model's seeds, both models', and the one chosen on validation)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup data lint lab test test-gpu gpu-wheels course book figures app models clean

SEEDS ?= 1
# Waiting OpenMP threads sleep instead of spinning, in everything make starts (notebook kernels included,
# which import torch before digitlib could set it): beside another busy process, spinning costs several times over
# (README, "Sharing the machine"). Set OMP_WAIT_POLICY=ACTIVE to spin.
export OMP_WAIT_POLICY ?= PASSIVE

# One virtual environment. $(VENV)/.installed-X installs digitlib with the extra X (core: none); each
# re-installs when pyproject.toml changes, and pip keeps what is already satisfied.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".$(if $(filter core,$*),,[$*])"
	$(BIN)/python -c "import torchvision.ops; print('torch', __import__('torch').__version__, 'torchvision', torchvision.__version__)"
	touch $@

INSTALLED := $(VENV)/.installed-test

setup: $(INSTALLED) data

# Copies MNIST from ../shared/mnist when it is there, else torchvision downloads it. Fashion-MNIST too,
# when Debian's package dataset-fashion-mnist has put its files in $(FASHION_MNIST) (one command either way).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
data: $(VENV)/.installed-core
	$(BIN)/python -m digitlib data --dataset mnist $(if $(wildcard $(FASHION_MNIST)/*.gz),fashion)

lab: $(VENV)/.installed-course data
	$(BIN)/jupyter lab notebooks/

lint: $(INSTALLED)
	$(BIN)/ruff check digitlib tests notebooks app book tools
	$(BIN)/mypy

test: setup lint
	DIGITLIB_SMOKE=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env tests notebooks

# The CUDA check for a machine with a GPU and no package registry (CONTRIBUTING.md): `make gpu-wheels`
# here, then `make test-gpu` there. It uses that machine's python3, not .venv.
gpu-wheels:
	bash tools/gpu.sh prepare

test-gpu:
	bash tools/gpu.sh test

# transport_encryption=auto: nbconvert gives each kernel CurveZMQ keys (its kernelspec declares
# support), so the kernel's localhost TCP traffic is encrypted and ipykernel no longer warns about
# plain text once per notebook. (transport=ipc would bind sockets relative to the notebook's folder.)
course: $(VENV)/.installed-course data
	mkdir -p build/notebooks
	$(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
		--KernelManager.transport_encryption=auto --output-dir build/notebooks notebooks/*.ipynb
	@echo "executed notebooks in build/notebooks, figures in build/figures"

# The course as a website (book/conf.py): the README as front page, every notebook and solution executed
# (full mode; QUICK=1 for quick mode, into its own folder and cache), navigation and search. Execution is
# cached in build/book-cache/: a rebuild executes only the notebooks whose code changed (all of them
# after the library, the mode or the trained models changed). Open build/book/index.html.
BOOK_MODE := $(if $(filter-out 0,$(QUICK)),quick,full)
BOOK_DIR := build/book$(if $(filter quick,$(BOOK_MODE)),-quick)
book: $(VENV)/.installed-book data
	DIGITLIB_SMOKE=$(if $(filter quick,$(BOOK_MODE)),1,0) $(BIN)/python -m sphinx -b html -c book \
		-d build/book-doctrees/$(BOOK_MODE) . $(BOOK_DIR)
	@echo "the book ($(BOOK_MODE) mode): $(BOOK_DIR)/index.html"

# The README's figures (docs/*.png), small, from the book's build (full mode unless QUICK=1).
figures: book
	$(BIN)/python book/figures.py $(BOOK_DIR)

models: data
	$(BIN)/python -m digitlib models --seeds $(SEEDS) --record models
	$(BIN)/python -m digitlib results --ensemble models-cnn > /dev/null
	$(BIN)/python -m digitlib results --ensemble models-resnet > /dev/null
	$(BIN)/python -m digitlib results --ensemble models-cnn models-resnet

# The pad alone, no code. Voila reads app/voila.py from its working folder (template, port, kernel
# shutdown and culling) and finds the app's template, which loads nothing from other hosts, through JUPYTER_PATH.
app: $(VENV)/.installed-app data
	cd app && JUPYTER_PATH=$(CURDIR)/app/jupyter $(CURDIR)/$(BIN)/voila drawing_pad.ipynb

clean:
	rm -rf $(VENV) build .pytest_cache
