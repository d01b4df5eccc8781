"""How the modules of src/ninefold depend on each other, read from their source:

- the deciders (ninefold.decide) do no I/O: neither they nor any ninefold
  module they import, however indirectly, imports asyncio, subprocess, socket,
  the store or the supervisor;
- there is no import cycle among the modules at run time (imports under
  `if TYPE_CHECKING:` do not count; imports inside functions do).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "ninefold"
IO = ("asyncio", "subprocess", "socket", "ninefold.store", "ninefold.supervisor")


def module_files() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, leaving out the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module `module` imports at run time (absolute names; for
    `from X import Y`, X.Y when that is a module of ours, else X)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return frozenset(found)


def ours(module: str, importer: str) -> set[str]:
    """The modules of ours that importing `module` runs: it and the packages
    above it that `importer` is not itself inside of."""
    out = set()
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in MODULES and not (importer == name or importer.startswith(name + ".")):
            out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    return {
        module: {dep for imported in imports_of(module) for dep in ours(imported, module)}
        for module in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(edges.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for dep in edges.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def io_imports(module: str) -> list[str]:
    return sorted(
        name
        for name in imports_of(module)
        if any(name == io or name.startswith(io + ".") for io in IO)
    )


def test_the_deciders_do_no_io() -> None:
    edges = graph()
    deciders = [m for m in MODULES if m == "ninefold.decide" or m.startswith("ninefold.decide.")]
    assert len(deciders) > 1
    problems = []
    for decider in deciders:
        for module in sorted(reachable(decider, edges)):
            for name in io_imports(module):
                via = "" if module == decider else f" (through {module})"
                problems.append(f"{decider} imports {name}{via}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def package(module: str) -> str:
    """`ninefold.agent.daemon` -> `ninefold.agent`: the top-level part it belongs to."""
    return ".".join(module.split(".")[:2])


def test_no_cycles_between_the_parts() -> None:
    """Nor between the parts (agent, api, state, store, ...): the agent may use
    the API, but the API never the agent."""
    edges: dict[str, set[str]] = {}
    for module, deps in graph().items():
        for dep in deps:
            if package(dep) != package(module):
                edges.setdefault(package(module), set()).add(package(dep))
    found = cycles(edges)
    assert not found, "cycles between parts:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_see_what_they_look_for() -> None:
    """The readers above find imports where they are, and skip TYPE_CHECKING."""
    assert "asyncio" in io_imports("ninefold.agent.daemon")
    assert "ninefold.store.base" in imports_of("ninefold.agent.daemon")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # gateway/routes.py imports the spec's models only under TYPE_CHECKING, if at all.
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n")
    assert not any(isinstance(n, ast.Import) for n in _runtime_nodes(tree))
