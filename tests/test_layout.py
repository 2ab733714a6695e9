"""The layout holds: every import goes down the layers written in docs/layout.md, no two modules import each
other in a circle, and each module opens with a sentence saying its job."""

from __future__ import annotations

import ast
import functools
import re

import pytest

from conftest import ROOT

# Not part of the program: its tests, benchmarks, docs scripts and virtual environments.
OUTSIDE = ("tests", "benchmarks", "docs", "examples", "outputs")


@functools.cache
def project_modules() -> dict[str, ast.Module]:
    """Every module of the program by dotted name, parsed."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in OUTSIDE or relative.parts[0].startswith("."):
            continue
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = ast.parse(path.read_text(encoding="utf-8"))
    return modules


def layers() -> dict[str, int]:
    """Each top-level unit (a package or a top-level module) and its layer, from docs/layout.md."""
    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    listed = text.split("<!-- layers:", 1)[1].split("\n\n", 1)[0]
    return {
        unit: int(number)
        for number, units in re.findall(r"^(\d+)\. (.+)$", listed, flags=re.M)
        for unit in re.findall(r"`([\w.]+)`", units)
    }


def imports(tree: ast.Module, modules: dict) -> set[str]:
    """The project modules a module imports, anywhere in it (function bodies too)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import module` names a module; `from module import name` names the module
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        found |= {name for name in names if name in modules}
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: imports(tree, modules) for name, tree in modules.items()
    }  # a fresh copy: tests may change it


def layer_violations(edges: dict[str, set[str]], order: dict[str, int]) -> list[str]:
    unit = lambda name: name.split(".")[0]
    return [
        f"{source} imports {target}: layer {order[unit(source)]} may not import layer {order[unit(target)]}"
        for source, targets in sorted(edges.items())
        for target in sorted(targets)
        if order[unit(target)] > order[unit(source)]
    ]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each as the path that closes it (depth-first search)."""
    found, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            found.append(path[path.index(name) :] + [name])
            return
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, path + [name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])
    return found


def test_every_unit_of_the_program_has_a_layer():
    units = {name.split(".")[0] for name in project_modules()}
    assert units <= set(layers()), f"not in docs/layout.md's layers: {sorted(units - set(layers()))}"


def test_imports_go_down_the_layers():
    assert layer_violations(graph(), layers()) == []


def test_no_module_imports_itself_through_others():
    assert circles(graph()) == []


def test_a_reporting_module_importing_the_model_breaks_the_layers():
    edges = graph()
    edges["reporting.summary"] = edges["reporting.summary"] | {"model"}
    assert layer_violations(edges, layers()) == [
        "reporting.summary imports model: layer 6 may not import layer 9"
    ]
    edges["model"] = edges["model"] | {"reporting.summary"}
    assert ["model", "reporting.summary", "model"] in circles(edges)


@pytest.mark.parametrize("name", sorted(project_modules()))
def test_each_module_opens_with_its_job(name):
    docstring = ast.get_docstring(project_modules()[name])
    assert docstring and docstring.split()[0][0].isupper(), f"{name} has no opening sentence saying its job"


# What a task declares for its own methods (Task.lacks, Task.problems) to read; no module outside tasks/ reads it.
TASK_FLAGS = {"label_sets", "calibrates", "text_classes", "labels_on_positions", "pooled_head"}
# Where a task's name may stand outside tasks/: the config's default task, and the task of records made before
# there were tasks.
NAMING_A_TASK = {"config", "records.results"}


def task_knowledge(modules: dict[str, ast.Module]) -> list[str]:
    """Every place outside tasks/ that reads a task's flag, names a task, or names a task's class."""
    from tasks import TASKS

    classes = {type(task).__name__ for task in TASKS.values()}
    found = []
    for name, tree in sorted(modules.items()):
        if name.split(".")[0] == "tasks":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in TASK_FLAGS:
                found.append(f"{name}:{node.lineno} reads the task flag {node.attr}")
            elif isinstance(node, ast.Constant) and node.value in TASKS and name not in NAMING_A_TASK:
                found.append(f"{name}:{node.lineno} names the task {node.value}")
            elif isinstance(node, ast.Name) and node.id in classes:
                found.append(f"{name}:{node.lineno} names the task class {node.id}")
    return found


def test_no_module_outside_tasks_reads_a_task_flag_or_names_a_task():
    assert task_knowledge(project_modules()) == []


def test_a_module_branching_on_a_task_is_found():
    modules = dict(project_modules())
    modules["serving.export"] = ast.parse(
        "if task.label_sets or cfg.data.task == 'multi_label' or isinstance(task, MultiLabel):\n    pass\n"
    )
    assert task_knowledge(modules) == [
        "serving.export:1 reads the task flag label_sets",
        "serving.export:1 names the task multi_label",
        "serving.export:1 names the task class MultiLabel",
    ]
