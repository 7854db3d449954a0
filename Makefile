# The course in a few commands. Each target creates or refreshes .venv and makes MNIST ready.
#   make lab     set up, then open the course in JupyterLab
#   make test    set up, then lint (ruff, mypy) and run every test: pytest and all notebooks in smoke mode (nbval)
#   make course  set up, then execute every notebook in full mode into build/
#   make app     set up, then serve the drawing pad (notebook 05) as a web page with Voila
#   make models  set up, then train both models with the full-run settings (SEEDS=5 for an ensemble)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup data lint lab test course app models clean

SEEDS ?= 1

# Re-installs whenever pyproject.toml changes; pip keeps what is already satisfied.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -c "import torchvision.ops; print('torch', __import__('torch').__version__, 'torchvision', torchvision.__version__)"
	touch $@

setup: $(INSTALLED) data

# Copies MNIST from ../shared/mnist when it is there, else torchvision downloads it.
data: $(INSTALLED)
	$(BIN)/python -m digitlib data

lab: setup
	$(BIN)/jupyter lab notebooks/

lint: $(INSTALLED)
	$(BIN)/ruff check digitlib tests notebooks
	$(BIN)/mypy

test: setup lint
	DIGITLIB_SMOKE=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env tests notebooks

course: setup
	mkdir -p build/notebooks
	$(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
		--output-dir build/notebooks notebooks/*.ipynb
	@echo "executed notebooks in build/notebooks, figures in build/figures"

models: setup
	$(BIN)/python -m digitlib models --seeds $(SEEDS)

app: setup
	$(BIN)/voila notebooks/05_drawing_pad.ipynb

clean:
	rm -rf $(VENV) build .pytest_cache
