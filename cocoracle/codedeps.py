"""Each step's code dependencies, read from the code: the package modules its command imports, transitively.

`cocoracle <command>` runs cli.py, which imports the modules its own top level names, then the handler
`cmd_<command>` imports what that step needs (cli.py keeps those imports inside the handlers, so each
step depends on its own modules only). The closure follows every `import` of a package module anywhere
in a module (a function-level import counts: it runs when the function does), and each package's
`__init__.py` on the way. Each command's closure is read once per process.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from cocoracle.config import InputError

PACKAGE = "cocoracle"
ROOT = Path(__file__).resolve().parent.parent  # the directory that holds this package's sources


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a package module (`cocoracle.oracle.train`) under root, or None if it is not one."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(nodes: Iterable[ast.AST], package: str, root: Path) -> set[str]:
    """Package modules named by the import statements in and under nodes (`package` resolves relative ones)."""
    found: set[str] = set()
    for node in (inner for outer in nodes for inner in ast.walk(outer)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m, root)}


def _with_parents(module: str) -> set[str]:
    """A module and the packages whose `__init__` importing it runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def _direct_imports(module: str, root: Path) -> frozenset[str]:
    path = module_file(module, root)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return frozenset(_imported([ast.parse(path.read_text(), str(path))], package, root))


def import_closure(modules: set[str], root: Path = ROOT) -> set[str]:
    """Every package module that importing `modules` can run."""
    todo = [parent for module in modules for parent in _with_parents(module)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(parent for imported in _direct_imports(module, root) for parent in _with_parents(imported))
    return seen


def _cli_tree(root: Path) -> ast.Module:
    path = module_file(f"{PACKAGE}.cli", root)
    if path is None:
        raise InputError(f"{root}: no {PACKAGE}/cli.py here; the step's code is read from the repository root")
    return ast.parse(path.read_text(), str(path))


def handler_name(command: str) -> str:
    """cli.py's function for `cocoracle <command>`."""
    return "cmd_" + command.replace("-", "_")


@cache
def command_modules(command: str, root: Path = ROOT) -> frozenset[str]:
    """The package modules `cocoracle <command>` imports: cli.py's top level and its handler's."""
    tree = _cli_tree(root)
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    handlers = [node for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name == handler_name(command)]
    if not handlers:
        raise KeyError(f"cocoracle/cli.py has no {handler_name(command)} for `cocoracle {command}`")
    # cli.py itself runs, but only its top level and this handler: its other handlers' imports do not
    imported = _imported(top, PACKAGE, root) | _imported(handlers[:1], PACKAGE, root)
    return frozenset(import_closure(imported, root) | {f"{PACKAGE}.cli"})


def code_files(command: str, root: str | Path = ROOT) -> list[str]:
    """The source files `cocoracle <command>` runs, relative to root (the repository's), sorted."""
    root = Path(root).resolve()
    files = (module_file(m, root) for m in command_modules(command, root))
    return sorted(str(path.relative_to(root)) for path in files if path is not None)
