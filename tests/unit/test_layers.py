"""The architecture's rules, checked on the source itself (docs/ARCHITECTURE.md draws them).

- imports go one way between the layers (the import-linter contracts in pyproject.toml, run here);
- no import cycles between modules, function-level imports included;
- a function-level import of the project's own modules only where it defers a heavy third-party import on
  purpose, said by a `# deferred: <what>` comment, and only when the module it imports really does import
  one of those libraries at its top level (directly or through the project's modules);
- no module over 400 lines; no function over 60 lines without a `# long: <why>` comment at its start.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import grimp
import pytest

from tests.paths import REPO_ROOT

ROOT_PACKAGES = ("foldstack", "flows", "tasks")
# What a function-level import may defer: libraries whose import costs seconds or starts threads.
HEAVY_LIBRARIES = frozenset({
    "torch", "transformers", "tokenizers", "sentence_transformers", "great_expectations", "prefect", "prefect_ray",
    "ray", "wandb", "gto", "dvc", "dvc_data", "fastapi", "uvicorn", "starlette", "matplotlib", "scmrepo",
    "pyarrow", "datasketch", "sklearn", "scipy", "pandas",
})
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for package in ROOT_PACKAGES for p in (REPO_ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _trees() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"))) for p in _sources()}


def _imported_modules(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the importing package
        base = importer.split(".")[: -node.level or None]
        return [".".join([*base, node.module]) if node.module else ".".join(base)]
    names = [node.module or ""]
    # `from foldstack.models import hf` imports the submodule foldstack.models.hf
    names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _project_module(name: str) -> str | None:
    """The project module `name` refers to (a module, or the package holding an imported attribute)."""
    trees = _trees()
    while name:
        if name in trees:
            return name
        name = name.rpartition(".")[0]
    return None


def test_import_linter_contracts_are_kept() -> None:
    """The real tool on the contracts in pyproject.toml, as a user would run it (`lint-imports`)."""
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache",
                           str(REPO_ROOT / "pyproject.toml")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stdout[proc.stdout.find("Broken contracts"):] or proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout, proc.stdout


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*ROOT_PACKAGES, cache_dir=None)
    modules = sorted(m for m in graph.modules if m.split(".")[0] in ROOT_PACKAGES)
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def strongconnect(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                strongconnect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            strongconnect(module)
    assert cycles == [], f"import cycles: {cycles}"


@cache
def _imports_heavy_library(module: str) -> bool:
    """Whether importing `module` imports a heavy library at some module's top level."""
    path, tree = _trees()[module]
    for node in tree.body:
        stmts = [node]
        if isinstance(node, ast.If | ast.Try):  # top-level guards (`if TYPE_CHECKING` excepted below)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            stmts = list(ast.walk(node))
        for stmt in stmts:
            if not isinstance(stmt, ast.Import | ast.ImportFrom):
                continue
            for name in _imported_modules(stmt, module):
                if name.split(".")[0] in HEAVY_LIBRARIES:
                    return True
                target = _project_module(name)
                if target and target != module and _imports_heavy_library(target):
                    return True
    return False


def _function_level_imports() -> list[tuple[str, Path, int, str, str]]:
    found = []
    for module, (path, tree) in _trees().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                for name in _imported_modules(node, module):
                    target = _project_module(name) if name.split(".")[0] in ROOT_PACKAGES else None
                    if target:
                        source = " ".join(lines[node.lineno - 1: node.end_lineno])
                        found.append((module, path, node.lineno, target, source))
                        break
    return found


def test_function_level_imports_of_the_project_only_defer_heavy_libraries() -> None:
    problems = []
    for module, path, line, target, source in _function_level_imports():
        where = f"{path.relative_to(REPO_ROOT)}:{line} imports {target} inside a function"
        if "# deferred:" not in source:
            problems.append(f"{where} without a `# deferred: <what>` comment (import it at the top instead)")
        elif not _imports_heavy_library(target):
            problems.append(f"{where} to defer a heavy import, but {target} imports none of "
                            f"{', '.join(sorted(HEAVY_LIBRARIES))} at its top level")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_module_and_function_sizes(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{len(lines)} lines; split it by concern (at most {MAX_MODULE_LINES})"
    tree = _trees()[_module_name(path)][1]
    long_functions = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            head = lines[node.lineno - 1: min(node.end_lineno, node.body[0].lineno + 3)]
            if length > MAX_FUNCTION_LINES and not any("# long:" in line for line in head):
                long_functions.append(f"{node.name} ({length} lines)")
    assert long_functions == [], (f"over {MAX_FUNCTION_LINES} lines without a `# long: <why>` comment at the "
                                  f"start: {', '.join(long_functions)}")
