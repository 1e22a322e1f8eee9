"""The house's import rules, read from the source with ``ast`` (nothing is imported):

- a service never imports another service: what two share lives in ``switchboard_core``;
- ``switchboard_core`` imports no service and no tool;
- no module imports, at its top level, a module that imports it back (an import cycle).

Tools (the CLI, the devstack) may import a service's public parts, as an operator would."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = frozenset(
    {"switchboard_router", "switchboard_catalog", "switchboard_metering", "switchboard_demo"}
)
TOOLS = frozenset({"switchboard_devstack", "switchboard_cli"})
CORE = "switchboard_core"
PACKAGE_DIRS = [*sorted((ROOT / "services").glob("*/switchboard_*")), ROOT / "cli/switchboard_cli"]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGE_DIRS:
        for path in package.rglob("*.py"):
            parts = list(path.relative_to(package.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """``(imported name, at top level)`` for every import in the module; an import under
    ``if TYPE_CHECKING:`` or inside a function is not at top level."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def walk(node: ast.AST, top: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                yield from ((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package[: len(package) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                yield base, top
                yield from ((f"{base}.{alias.name}", top) for alias in child.names)
            else:
                yield from walk(child, top and not _deferred(child))

    yield from walk(ast.parse(path.read_text(), str(path)), True)


def _deferred(node: ast.AST) -> bool:
    """Whether imports under ``node`` run later than the module's own import, or never."""
    if isinstance(node, ast.If):
        return "TYPE_CHECKING" in ast.unparse(node.test)
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)


def _resolve(name: str) -> str | None:
    """The module of ours ``name`` is (or is in), None for a third-party one."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges() -> list[tuple[str, str, bool]]:
    edges = set()
    for module, path in MODULES.items():
        for name, top in _imports(module, path):
            target = _resolve(name)
            if target is not None and target != module:
                edges.add((module, target, top))
    return sorted(edges)


EDGES = _edges()


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_scan_sees_the_code_base() -> None:
    """A scan that found nothing would pass every rule below."""
    assert {_package(m) for m in MODULES} == SERVICES | TOOLS | {CORE}
    assert ("switchboard_router.app", "switchboard_core.server", True) in EDGES


def test_services_never_import_each_other() -> None:
    crossing = [
        f"{source} -> {target}"
        for source, target, _ in EDGES
        if _package(source) in SERVICES
        and _package(target) != _package(source)
        and _package(target) != CORE
    ]
    assert not crossing, "a service imports another package than core: " + ", ".join(crossing)


def test_the_shared_library_imports_no_service_or_tool() -> None:
    upward = [
        f"{source} -> {target}"
        for source, target, _ in EDGES
        if _package(source) == CORE and _package(target) != CORE
    ]
    assert not upward, "switchboard_core imports: " + ", ".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_at_module_level() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for source, target, top in EDGES:
        if top:
            graph[source].add(target)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
