"""The package's layers hold: lower modules never import (even indirectly, even inside a function) the higher ones.

Imports are read from the source with `ast`, so nothing is imported to check them. `if TYPE_CHECKING:` blocks are
skipped: they never run. The top package's `rcdm/__init__.py` (the public API, which gathers every layer) is not
followed: the layers are those of the modules themselves.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import rcdm

SRC = Path(rcdm.__file__).resolve().parent  # src/rcdm


def _module_file(module: str) -> Path | None:
    """'rcdm.encoders.cifar' -> its .py file (a package -> its __init__.py); None for a name that is no module."""
    rel = Path(*module.split(".")[1:])
    for path in (SRC / rel / "__init__.py", (SRC / rel).with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST):
    """Every node of `tree`, except those under `if TYPE_CHECKING:` (their `else:` is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


@functools.cache
def direct_imports(module: str) -> frozenset[str]:
    """The rcdm modules that `module`'s source imports, wherever the import statement is.

    `from .x import y` counts rcdm...x and, when y is a submodule, rcdm...x.y; importing rcdm.a.b also runs
    rcdm.a's __init__.py, so the parent packages count too.
    """
    path = _module_file(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "rcdm")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "rcdm":
                target = node.module
            else:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if _module_file(f"{target}.{a.name}"))
    with_parents = {".".join(m.split(".")[:i]) for m in found for i in range(2, m.count(".") + 2)}
    return frozenset(m for m in with_parents if _module_file(m) and m != module)


def reachable(module: str) -> set[str]:
    """The transitive closure of `direct_imports` from `module` (not counting `module` itself)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for m in direct_imports(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen - {module}


def path_to(start: str, goal: str) -> list[str]:
    """One import chain start -> ... -> goal (for the failure message)."""
    before: dict[str, str] = {}
    todo = [start]
    while todo:
        m = todo.pop(0)
        if m == goal:
            chain = [m]
            while chain[-1] != start:
                chain.append(before[chain[-1]])
            return chain[::-1]
        for n in sorted(direct_imports(m)):
            if n not in before and n != start:
                before[n] = m
                todo.append(n)
    return []


def modules_under(package: str) -> list[str]:
    """`package` and every module in its folder, subpackages included (a subpackage by its name)."""
    folder = SRC / Path(*package.split(".")[1:])
    names = {
        ".".join(
            ("rcdm", *(p.parent if p.name == "__init__.py" else p.with_suffix("")).relative_to(SRC).parts)
        )
        for p in folder.rglob("*.py")
    }
    return sorted(names)


def _assert_not_reached(module: str, forbidden: tuple[str, ...]) -> None:
    reached = reachable(module)
    for goal in forbidden:
        assert goal not in reached, f"{module} reaches {goal}: {' -> '.join(path_to(module, goal))}"


def test_the_closure_follows_relative_package_and_function_level_imports():
    assert "rcdm.errors" in direct_imports("rcdm.locks")
    assert "rcdm.encoders" in reachable("rcdm.encoders.cifar")  # ..x from inside a package: its __init__
    assert "rcdm.model" in reachable("rcdm.train")
    assert "rcdm.encoders.cifar" in reachable("rcdm.commands.encode")
    assert "rcdm.app" in direct_imports("rcdm.commands.app")  # imported inside a function


@pytest.mark.parametrize("module", ["rcdm.data", *modules_under("rcdm.encoders")])
def test_data_and_encoders_stay_below_the_network_and_training(module):
    _assert_not_reached(module, ("rcdm.model", "rcdm.train"))


@pytest.mark.parametrize("module", modules_under("rcdm.app"))
def test_the_app_does_not_reach_training(module):
    _assert_not_reached(module, ("rcdm.train",))


@pytest.mark.parametrize("module", [*modules_under("rcdm.analysis"), *modules_under("rcdm.metrics")])
def test_analyses_and_metrics_do_not_reach_the_cli(module):
    _assert_not_reached(module, ("rcdm.commands", "rcdm.cli"))


@pytest.mark.parametrize("module", ["rcdm.files", "rcdm.checks"])
def test_file_helpers_and_validators_stay_leaves(module):
    _assert_not_reached(module, ("rcdm.model", "rcdm.diffusion", "rcdm.encoders", "rcdm.runs"))


def test_reading_a_bundle_needs_no_encoder_model_or_training_code():
    _assert_not_reached("rcdm.bundle", ("rcdm.encoders", "rcdm.model", "rcdm.train", "rcdm.pack"))
