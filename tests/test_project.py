"""The project around the library: dependency lists, committed notebooks, torchvision, CI and README."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import torch
import yaml
from packaging.requirements import Requirement

from digitlib.config import repo_root

ROOT = repo_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = ROOT / "notebooks" / "solutions"


def _requirements(lines) -> dict[str, str]:
    """{normalised name: specifier} for requirement strings."""
    parsed = [Requirement(line) for line in lines]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): str(r.specifier) for r in parsed}


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    own = [line for lines in extras.values() for line in lines if Requirement(line).name == project["name"]]
    everything = project["dependencies"] + [line for lines in extras.values() for line in lines if line not in own]
    expected = _requirements(everything)

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert len(pip_sections) == 1, "environment.yml should have one pip: section"
    pip_lines = [line for line in pip_sections[0] if not line.startswith("-e")]
    assert "-e ." in pip_sections[0], "environment.yml should install digitlib itself (-e .)"

    listed = _requirements(pip_lines)
    assert len(listed) == len(pip_lines), "a package is listed twice in environment.yml"
    assert listed == expected, (
        f"only in environment.yml: {sorted(listed.items() - expected.items())}; "
        f"only in pyproject.toml: {sorted(expected.items() - listed.items())}"
    )


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


@pytest.mark.parametrize("path", NOTEBOOKS + sorted(SOLUTIONS.glob("*.ipynb")),
                         ids=lambda path: path.relative_to(ROOT / "notebooks").as_posix())
def test_committed_notebook_has_no_outputs(path):
    dirty = [
        index for index, cell in enumerate(_cells(path))
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"


def _exercise_count(path) -> int:
    """How many numbered exercises the notebook's '## Exercises' section lists (0 without one)."""
    markdown = "\n".join(_source(cell) for cell in _cells(path) if cell["cell_type"] == "markdown")
    if "## Exercises" not in markdown:
        return 0
    section = re.split(r"^## ", markdown.split("## Exercises", 1)[1], flags=re.MULTILINE)[0]
    return len(re.findall(r"^\d+\. ", section, flags=re.MULTILINE))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_exercises_have_a_worked_solution_each(path):
    exercises = _exercise_count(path)
    solution = SOLUTIONS / path.name
    assert exercises == 0 or solution.exists(), (
        f"{path.name} has {exercises} exercises but no notebooks/solutions/{path.name}: add one, a section per exercise"
    )
    if not solution.exists():
        return
    cells = _cells(solution)
    markdown = [_source(cell) for cell in cells if cell["cell_type"] == "markdown"]
    assert markdown and re.match(rf"# {path.name[:2]} · Solutions", markdown[0]), (
        f"solutions/{path.name}: the first cell should start with '# {path.name[:2]} · Solutions: ...'"
    )
    assert any("dl.smoke_test()" in _source(cell) for cell in cells if cell["cell_type"] == "code"), (
        f"solutions/{path.name}: no parameters cell calls dl.smoke_test()"
    )
    sections = [line for source in markdown for line in source.splitlines() if re.match(r"## \d+\.", line)]
    assert len(sections) == exercises, (
        f"solutions/{path.name} has {len(sections)} numbered sections for the {exercises} exercises of {path.name}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_the_house_shape(path):
    cells = _cells(path)
    markdown = [_source(cell) for cell in cells if cell["cell_type"] == "markdown"]
    code = [_source(cell) for cell in cells if cell["cell_type"] == "code"]
    assert markdown and code, f"{path.name} has no markdown or no code"

    title = re.match(r"# (\d{2})\s", markdown[0])
    assert title, f"{path.name}: the first markdown cell should start with '# NN · Title', not {markdown[0][:40]!r}"
    assert title.group(1) == path.name[:2], f"{path.name}: title number {title.group(1)} does not match the file name"

    assert any("dl.smoke_test()" in source for source in code), f"{path.name}: no parameters cell calls dl.smoke_test()"

    headings = [line for source in markdown for line in source.splitlines() if line.startswith("## ")]
    assert "## Summary" in headings, f"{path.name}: no '## Summary'"
    assert "## Exercises" in headings, f"{path.name}: no '## Exercises'"

    # Every numbered section (from its heading to the next '## ' heading) ends in checks.
    sections: dict[str, list[str]] = {}
    current = None
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in _source(cell).splitlines():
                if line.startswith("## "):
                    current = line if re.match(r"## \d+\.", line) else None
                    if current:
                        sections[current] = []
        elif current:
            sections[current].append(_source(cell))
    assert sections, f"{path.name}: no numbered sections ('## 1. ...')"
    numbers = [int(re.match(r"## (\d+)\.", heading).group(1)) for heading in sections]
    assert numbers == list(range(1, len(numbers) + 1)), f"{path.name}: sections numbered {numbers}"
    unchecked = [heading for heading, sources in sections.items()
                 if not any(re.search(r"^\s*assert\b", source, re.MULTILINE) for source in sources)]
    assert not unchecked, f"{path.name}: sections without an assert cell: {unchecked}"


def test_torchvision_works_with_the_installed_torch():
    import torchvision
    from torchvision import models, ops
    from torchvision.transforms import v2

    assert torchvision.__version__
    transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.25])])
    image = torch.full((1, 4, 4), 255, dtype=torch.uint8)
    torch.testing.assert_close(transform(image), torch.full((1, 4, 4), 2.0))

    model = models.resnet18(weights=None).eval()
    with torch.no_grad():
        scores = model(torch.randn(1, 3, 64, 64))
    assert scores.shape == (1, 1000) and torch.isfinite(scores).all()

    # nms is a compiled operator: it is what fails first when torchvision was built for another torch.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    kept = ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert kept.tolist() == [0, 2]


def test_ci_runs_make_test():
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert "make test" in commands


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
