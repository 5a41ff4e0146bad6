"""The codebase's shape, guarded: imports point down the layers, no package cycle, every stage's
code is a dependency of its ``dvc.yaml`` stage, and modules and functions stay readable.

The layers (README, "Architecture"), top to bottom; a module may import its own layer or lower:

4 apps      ``cli``, ``predict``, ``presets``, ``comparison``, ``ablation``, ``ablation_report``, ``receptive_fields``, ``data_events``, ``__main__``; ``pipelines/``
3 stages    ``stages``
2 services  ``layout``, ``tracking``, ``registry``, ``ops``
1 domain    ``data``, ``model``, ``train``, ``evaluate`` (no MLflow, DVC, Prefect, file layout)
0 base      ``config``, ``errors``, ``atomic_files``, ``device``

Imports inside functions count, and so do module names in strings (``importlib`` tables such
as the source adapters'), since both run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from pspnet.stages import STAGE_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
PIPELINES = REPO_ROOT / "pipelines"

#: Top-level unit of ``pspnet`` (or ``pipelines``) -> its layer.
LAYERS: dict[str, int] = {
    "pspnet": 0,  # the package's own __init__
    "pspnet.config": 0,
    "pspnet.errors": 0,
    "pspnet.atomic_files": 0,
    "pspnet.device": 0,
    "pspnet.data": 1,
    "pspnet.model": 1,
    "pspnet.train": 1,
    "pspnet.evaluate": 1,
    "pspnet.layout": 2,
    "pspnet.tracking": 2,
    "pspnet.registry": 2,
    "pspnet.ops": 2,
    "pspnet.stages": 3,
    "pspnet.cli": 4,
    "pspnet.predict": 4,
    "pspnet.presets": 4,
    "pspnet.comparison": 4,
    "pspnet.ablation": 4,
    "pspnet.ablation_report": 4,
    "pspnet.receptive_fields": 4,
    "pspnet.data_events": 4,
    "pspnet.__main__": 4,
    "pipelines": 4,
}
LAYER_NAMES = {0: "base", 1: "domain", 2: "services", 3: "stages", 4: "apps"}
DOMAIN_LAYER = 1
#: Libraries the domain layer must not know (it takes paths and callbacks instead).
DOMAIN_FORBIDDEN = ("mlflow", "dvc", "prefect", "great_expectations")
#: The one domain module allowed to drive Great Expectations: the validation suite's adapter.
GE_ADAPTER = "pspnet.data.validation.expectations"
#: A module or function over these sizes needs a ``# size: <reason>`` comment (see below).
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
SIZE_REASON = "# size:"


@dataclass(frozen=True)
class Import:
    """One import (or module name in a string) found in ``module`` at ``line``."""

    module: str
    target: str
    line: int
    text: str


@cache
def module_files() -> dict[str, Path]:
    """Every module of ``src/pspnet`` and ``pipelines/`` by dotted name."""
    found: dict[str, Path] = {}
    for base, files in ((SRC, SRC.joinpath("pspnet").rglob("*.py")), (REPO_ROOT, PIPELINES.glob("*.py"))):
        for path in files:
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def unit_of(module: str) -> str:
    """The top-level unit (key of :data:`LAYERS`) that ``module`` belongs to."""
    parts = module.split(".")
    if parts[0] == "pipelines":
        return "pipelines"
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """The known module that ``name`` (a module, or ``module.attribute``) refers to."""
    known = set(known)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    """Every first-party import of ``module``: statements anywhere in it, and module names in
    string constants (``"pspnet.data.sources.camvid:camvid_source"``)."""
    files = module_files()
    path = files[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    source = path.read_text(encoding="utf-8")
    found: dict[tuple[str, int], Import] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(("pspnet.", "pipelines.")):
            names = [node.value.split(":")[0]]
        for name in names:
            target = _resolve(name, files)
            if target is not None and target != module:
                found.setdefault((target, node.lineno), Import(module, target, node.lineno, ast.get_source_segment(source, node) or name))
    return tuple(found.values())


def third_party_imports(module: str) -> Iterator[tuple[str, int]]:
    """Top-level names of the non-first-party libraries ``module`` imports, with their lines."""
    tree = ast.parse(module_files()[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0], node.lineno


def _where(module: str, line: int) -> str:
    return f"{module_files()[module].relative_to(REPO_ROOT)}:{line}"


def layer_violations(modules: Iterable[str]) -> list[str]:
    """``file:line: module (layer) imports target (higher layer)`` for each upward import."""
    problems = []
    for module in modules:
        own = LAYERS.get(unit_of(module))
        for imp in imports_of(module):
            theirs = LAYERS.get(unit_of(imp.target))
            if own is not None and theirs is not None and theirs > own:  # no layer: its own test says so
                problems.append(
                    f"{_where(module, imp.line)}: {module} ({LAYER_NAMES[own]}) imports {imp.target} "
                    f"({LAYER_NAMES[theirs]}): `{imp.text}`"
                )
    return problems


def test_every_module_has_a_layer() -> None:
    missing = sorted({unit_of(m) for m in module_files()} - set(LAYERS))
    assert not missing, f"modules with no layer in LAYERS (add them, README architecture table too): {missing}"


def test_imports_point_down_the_layers() -> None:
    problems = layer_violations(module_files())
    assert not problems, "imports that point up the layers (move the code down, or pass the value in):\n" + "\n".join(problems)


def test_domain_knows_nothing_of_mlflow_dvc_prefect() -> None:
    problems = []
    for module in module_files():
        if LAYERS.get(unit_of(module)) != DOMAIN_LAYER:
            continue
        for name, line in third_party_imports(module):
            if name in DOMAIN_FORBIDDEN and not (name == "great_expectations" and module == GE_ADAPTER):
                problems.append(f"{_where(module, line)}: {module} imports {name}")
    assert not problems, "domain modules importing orchestration libraries (do it in a stage or service):\n" + "\n".join(problems)


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in module_files():
        unit = unit_of(module)
        graph.setdefault(unit, set()).update(unit_of(i.target) for i in imports_of(module) if unit_of(i.target) != unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_package_import_cycle() -> None:
    cycle = find_cycle(unit_graph())
    assert cycle is None, "package import cycle: " + " -> ".join(cycle or [])


def _with_parents(module: str) -> set[str]:
    """``module`` and the packages whose ``__init__`` importing it runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_closure(module: str) -> set[str]:
    """Every first-party module that importing and running ``module`` may execute."""
    files = module_files()
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in _with_parents(current):
            if name in files and name not in seen:
                seen.add(name)
                todo.extend(i.target for i in imports_of(name))
    return seen


def code_deps(stage: str) -> list[str]:
    """The ``src/`` entries among ``dvc.yaml``'s deps of ``stage``."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return [d for d in stages[stage]["deps"] if isinstance(d, str) and d.startswith("src/")]


def missing_deps(stage: str) -> list[str]:
    """Files of the stage's import closure that no ``dvc.yaml`` dep of the stage covers."""
    deps = [d.rstrip("/") for d in code_deps(stage)]
    files = module_files()
    missing = []
    for module in sorted(import_closure(f"pspnet.stages.{stage}")):
        rel = files[module].relative_to(REPO_ROOT).as_posix()
        if not any(rel == d or rel.startswith(d + "/") for d in deps):
            missing.append(f"{rel} ({module})")
    return missing


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_dvc_yaml_lists_every_module_the_stage_runs(stage: str) -> None:
    missing = missing_deps(stage)
    assert not missing, (
        f"dvc.yaml stage {stage!r} does not depend on code it runs, so `dvc repro` would not rerun it after "
        f"an edit there; add these (or their folder) to its deps: {missing}"
    )


def _has_reason(lines: list[str], line: int) -> bool:
    """A ``# size: <reason>`` comment on the line above ``line`` (1-based), decorators skipped."""
    index = line - 2
    while index >= 0 and lines[index].lstrip().startswith("@"):
        index -= 1
    return index >= 0 and lines[index].strip().startswith(SIZE_REASON)


def oversized(path: Path) -> list[str]:
    """Functions over :data:`MAX_FUNCTION_LINES` and a module over :data:`MAX_MODULE_LINES` lines
    without a ``# size:`` reason (for a module: a top-level ``# size:`` comment)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    rel = path.relative_to(REPO_ROOT)
    problems = []
    if len(lines) > MAX_MODULE_LINES and not any(line.startswith(SIZE_REASON) for line in lines):
        problems.append(f"{rel}: {len(lines)} lines (max {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            size = node.end_lineno - node.lineno + 1
            if size > MAX_FUNCTION_LINES and not _has_reason(lines, node.lineno):
                problems.append(f"{rel}:{node.lineno}: {node.name} is {size} lines (max {MAX_FUNCTION_LINES})")
    return problems


def test_modules_and_functions_fit_a_reader() -> None:
    problems = [p for path in module_files().values() for p in oversized(path)]
    assert not problems, (
        "split these into pieces of one job, or write the reason on the line above (`# size: why`):\n" + "\n".join(problems)
    )
