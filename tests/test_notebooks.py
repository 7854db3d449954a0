"""The notebooks run wherever a learner opens them, and quick mode never costs a trained model.

CI has no GPU, so device placement is checked in the notebooks' source, by the rule CONTRIBUTING.md
states: every model a notebook builds or loads is put on one stated device (``.to(device)``, ``fit``,
``device=``), and the library moves inputs to the model. ``make test-gpu`` runs them on CUDA.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import digitlib as dl
from digitlib.config import repo_root

ROOT = repo_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
IDS = [path.relative_to(ROOT / "notebooks").as_posix() for path in NOTEBOOKS]

MODEL_BUILDERS = {"DigitCNN", "DigitResNet", "build_model"}
#: Calls that put a model handed to them on a device themselves.
PLACING_CALLS = {"fit", "load_checkpoint"}
#: Calls that only look at a model built inside them: `count_parameters(DigitCNN())` needs no device.
LOOKING_CALLS = {"count_parameters"}
LOADERS = {"load_or_train", "load_models"}  # must be told the device and the notebook's mode


def code_of(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def called_name(call: ast.Call) -> str:
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def model_classes(tree: ast.Module) -> set[str]:
    """The model builders plus the nn.Module subclasses a notebook defines."""
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               and any(ast.unparse(base).split(".")[-1] in {"Module", *MODEL_BUILDERS, "BasicBlock"}
                       for base in node.bases)}
    return MODEL_BUILDERS | defined


def unplaced_models(source: str) -> list[str]:
    """Lines where a model is built and never put on a device."""
    tree = ast.parse(source)
    builders = model_classes(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    placed_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and called_name(node) in PLACING_CALLS and node.args:
            placed_names |= {ast.unparse(argument) for argument in [*node.args, *(k.value for k in node.keywords)]}
        if isinstance(node, ast.Attribute) and node.attr == "to" and isinstance(node.value, ast.Name):
            placed_names.add(node.value.id)
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and called_name(node) in builders):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr == "to":
            continue  # Model().to(device)
        if isinstance(parent, ast.Call) and called_name(parent) in PLACING_CALLS | LOOKING_CALLS:
            continue  # fit(Model(), ...), count_parameters(Model()), load_checkpoint(..., model=Model())
        if isinstance(parent, ast.keyword) and called_name(parents[parent]) in PLACING_CALLS:
            continue
        if isinstance(parent, ast.Call) and called_name(parent) in builders:
            continue  # a block class handed to a model builder: the outer model is checked
        if isinstance(parent, ast.keyword) and called_name(parents[parent]) in builders:
            continue
        target = parent.targets[0] if isinstance(parent, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in placed_names:
            continue  # model = Model(), later fit(model, ...) or model.to(device)
        problems.append(source.splitlines()[node.lineno - 1].strip())
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_model_a_notebook_builds_goes_to_one_device(path):
    assert unplaced_models(code_of(path)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_loaded_models_go_to_a_stated_device_and_follow_the_notebooks_mode(path):
    tree = ast.parse(code_of(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and called_name(node) in LOADERS:
            keywords = {keyword.arg for keyword in node.keywords}
            assert {"device", "quick"} <= keywords, f"{ast.unparse(node)}: pass device= and quick=smoke_test"
        if isinstance(node, ast.Call) and called_name(node) == "models_dir":
            assert node.args or node.keywords, f"{ast.unparse(node)}: pass the notebook's smoke_test"


def test_the_check_catches_a_model_left_behind():
    assert unplaced_models("model = dl.models.DigitCNN()\nh = model(x)") == ["model = dl.models.DigitCNN()"]
    assert unplaced_models("model = DigitResNet().eval()") == ["model = DigitResNet().eval()"]
    assert unplaced_models("class Small(nn.Module):\n    pass\nm = Small()") == ["m = Small()"]
    placed = ("a = dl.models.DigitCNN().to(device)\nb = dl.models.DigitCNN()\nfit(b, x, y, 1, device=device)\n"
              "n = count_parameters(DigitCNN())\nc = DigitResNet(block=Plain).to(device)")
    assert unplaced_models(placed) == []
    counted_only = "m = DigitResNet()\nn = count_parameters(m)\nm(x)"   # counting a model does not place it
    assert unplaced_models(counted_only) == ["m = DigitResNet()"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_opening_says_how_to_choose_quick_or_full_mode(path):
    cells = json.loads(path.read_text())["cells"]
    opening = "".join(cells[0]["source"])
    assert "**Quick or full mode.**" in opening and "smoke_test = True" in opening
    assert re.search(r"^smoke_test = dl\.smoke_test\(\)", code_of(path), re.MULTILINE)


def test_checkpoint_paths_keep_trained_models(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITLIB_MODELS", str(tmp_path))
    said: list[str] = []
    assert dl.config.checkpoint_path("cnn", quick=False, log=said.append) == tmp_path / "cnn.pt"  # nothing there yet
    (tmp_path / "cnn.pt").write_bytes(b"trained")
    assert dl.config.checkpoint_path("cnn", quick=True, log=said.append) == tmp_path / "smoke" / "cnn.pt"
    assert said == []
    beside = dl.config.checkpoint_path("cnn", quick=False, log=said.append)
    assert beside.parent == tmp_path / "runs" and beside.name.startswith("cnn-") and beside.suffix == ".pt"
    assert said == [f"{tmp_path / 'cnn.pt'} holds a trained cnn and is kept: this run saves to {beside}. "
                    "To replace it instead, set replace_trained = True in the parameters cell."]
    assert dl.config.checkpoint_path("cnn", quick=False, replace=True, log=said.append) == tmp_path / "cnn.pt"


@pytest.mark.slow
def test_quick_mode_chosen_in_the_cnn_notebook_leaves_the_trained_model_alone(tmp_path):
    """What a learner does in JupyterLab: edit the parameters cell to smoke_test = True and run it all,
    with no DIGITLIB_SMOKE in the environment."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    models = tmp_path / "models"
    models.mkdir()
    trained = models / "cnn.pt"
    shutil.copy(ROOT / "tests" / "helpers.py", trained)  # any bytes: the notebook must not touch them
    before = trained.read_bytes()
    notebook = nbformat.read(ROOT / "notebooks" / "03_cnn_training.ipynb", as_version=4)
    parameters = next(cell for cell in notebook.cells
                      if cell.cell_type == "code" and "smoke_test = dl.smoke_test()" in cell.source)
    parameters.source = re.sub(r"^smoke_test = dl\.smoke_test\(\).*$", "smoke_test = True", parameters.source,
                               count=1, flags=re.MULTILINE)
    env = {key: value for key, value in os.environ.items() if key != "DIGITLIB_SMOKE"}
    env.update(DIGITLIB_MODELS=str(models), DIGITLIB_FIGURES=str(tmp_path / "figures"))
    old_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    assert trained.read_bytes() == before
    assert (models / "smoke" / "cnn.pt").exists() and not (models / "runs").exists()


#: Calls that make a choice from the data they are given: training (its best epoch), a timing race, a
#: temperature fit, a threshold search. None may be given test data, unless the line says "on purpose".
CHOOSING_CALLS = {"fit", "time_to_accuracy", "fit_temperature", "confidence_threshold"}


def test_set_choices(source: str) -> list[str]:
    """Lines where a choosing call is handed something named like test data, without '# on purpose'."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and called_name(node) in CHOOSING_CALLS:
            arguments = [ast.unparse(argument) for argument in [*node.args, *(k.value for k in node.keywords)]]
            line = lines[node.lineno - 1]
            if any(re.search(r"\btest", argument) for argument in arguments) and "on purpose" not in line:
                found.append(line.strip())
    return found


test_set_choices.__test__ = False  # type: ignore[attr-defined]  # a helper, named for what it finds


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_nothing_is_chosen_on_the_test_set(path):
    assert test_set_choices(code_of(path)) == []


def test_the_test_set_check_catches_a_choice_on_test_data():
    choice = "h = fit(model, train_loader, test_loader, 1)"
    assert test_set_choices(choice) == [choice]
    assert test_set_choices("t = fit_temperature(test_logits, test_labels)") != []
    assert test_set_choices("t = fit_temperature(test_logits, test_labels)  # on purpose") == []
    assert test_set_choices("h = fit(model, train_loader, val_loader, 1)") == []


# --- Taught before used -----------------------------------------------------------------------------
# The course builds each piece in view before the library takes over: notebook 02 writes the training
# loop by hand, 03 the convolution (then `fit` as that loop plus what a long run needs), 04 the residual
# block and batch norm. A notebook calls digitlib's training, model, loader and checkpoint code only
# once a notebook up to its own has taught it.

TAUGHT_MODULES = ("training", "models", "loaders", "checkpoints", "zoo")

#: The notebook, by number, that teaches each name: builds it by hand first, or explains it before use.
TAUGHT_IN = {
    "dl.loaders.DigitDataset": 2,          # the Dataset of the hand-written minibatch loop
    "dl.loaders.make_loaders": 3,          # the same batches, made a whole batch at a time
    "dl.loaders.DeviceLoader": 7,          # the on-device pipeline, taken apart in training fast
    "dl.models.DigitCNN": 3,
    "dl.models.count_parameters": 3,       # after counting a convolution's parameters by hand
    "dl.training.train_step": 3,           # checked step for step against the loop of notebook 02
    "dl.training.train_batch": 3,          # train_step's one batch, shown beside it
    "dl.training.test_step": 3,
    "dl.training.fit": 3,
    "dl.training.History": 3,
    "dl.training.make_optimizer": 3,       # AdamW and one-cycle
    "dl.training.learning_rates": 3,
    "dl.checkpoints.read_checkpoint": 3,
    "dl.checkpoints.update_checkpoint": 3,
    "dl.checkpoints.run_metadata": 3,
    "dl.checkpoints.load_checkpoint": 3,
    "dl.models.BasicBlock": 4,             # the residual block, its fallback and its projection
    "dl.models.DigitResNet": 4,
    "dl.models.build_model": 4,            # either model by name, once both are taught
    "dl.zoo.load_or_train": 4,             # the trained checkpoint of an earlier notebook
    "dl.zoo.load_model": 9,                # a checkpoint or an exported ONNX file, alike
    "dl.checkpoints.normalization": 4,
}

#: Solutions whose exercise itself sends the learner ahead, and the names that allows.
LOOKING_AHEAD = {
    "solutions/01_data_exploration.ipynb": {  # exercise 6: check an augmentation limit with a model (notebook 03)
        "dl.training.fit", "dl.models.DigitCNN", "dl.loaders.make_loaders", "dl.loaders.DeviceLoader",
        "dl.zoo.load_or_train", "dl.checkpoints.normalization",
    },
}


def library_names(source: str) -> set[str]:
    """The ``dl.<module>.<name>`` of the taught modules that ``source`` mentions."""
    return set(re.findall(rf"\bdl\.(?:{'|'.join(TAUGHT_MODULES)})\.\w+", source))


def used_before_taught(source: str, number: int, allowed: frozenset[str] = frozenset()) -> list[str]:
    """Names ``source`` (of notebook ``number``) uses before the notebook that teaches them, or that no
    notebook teaches (missing from TAUGHT_IN)."""
    return sorted(name for name in library_names(source) - allowed if TAUGHT_IN.get(name, 100) > number)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_a_notebook_uses_only_library_names_taught_by_then(path):
    relative = path.relative_to(ROOT / "notebooks").as_posix()
    early = used_before_taught(code_of(path), int(path.name[:2]), frozenset(LOOKING_AHEAD.get(relative, ())))
    assert early == [], f"{relative} uses, before they are taught: " + ", ".join(
        f"{name} (taught in {TAUGHT_IN[name]:02d})" if name in TAUGHT_IN else f"{name} (in no notebook of TAUGHT_IN)"
        for name in early
    )


def test_the_table_names_what_the_library_has_and_the_notebooks_use():
    for name in TAUGHT_IN:
        _, module, attribute = name.split(".")
        assert hasattr(getattr(dl, module), attribute), f"{name} is not in digitlib"
    used = set().union(*(library_names(code_of(path)) for path in NOTEBOOKS))
    assert set(TAUGHT_IN) <= used, f"taught but used nowhere: {sorted(set(TAUGHT_IN) - used)}"


def test_the_check_catches_a_name_used_too_early():
    source = "history = dl.training.fit(model, train_loader, val_loader, 2, device=device)"
    assert used_before_taught(source, 2) == ["dl.training.fit"]
    assert used_before_taught(source, 3) == []
    assert used_before_taught("dl.models.DigitResNet().to(device)", 3) == ["dl.models.DigitResNet"]
    assert used_before_taught("dl.training.new_helper(model)", 9) == ["dl.training.new_helper"]
    assert used_before_taught("dl.data.load_splits(seed=0); dl.plots.image_grid(x)", 1) == []   # tools, not lessons
