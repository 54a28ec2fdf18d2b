"""The project's own import graph, read from the source with `ast` (nothing is imported).

Used by the tests that hold `dvc.yaml` to the code: a stage must depend on every project
module it runs, or changing that module would leave its results stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("exsearch", "stages", "flows", "tracking")


def _module_file(root: Path, dotted: str, script_dir: Path | None = None) -> Path | None:
    """The file a dotted project module name lives in, or None if it is not one of ours.

    A script (a file outside the packages) also imports its neighbours by their bare names.
    """
    if script_dir is not None and (script_dir / f"{dotted}.py").is_file():
        return script_dir / f"{dotted}.py"
    if dotted.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(root: Path, dotted: str) -> list[Path]:
    """The `__init__.py` of every package on the way to `dotted` (importing runs them)."""
    parts = dotted.split(".")
    inits = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts))]
    return [p for p in inits if p.is_file()]


def imported_names(root: Path, path: Path) -> list[tuple[str, str]]:
    """(module, name) of every import in `path`, relative modules resolved; name "" for
    `import module`. Imports inside functions count too."""
    package = list(path.relative_to(root).parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{module}" if module else base
            out.extend((module, alias.name) for alias in node.names)
    return out


def direct_imports(root: Path, path: Path, *, with_packages: bool = True) -> set[Path]:
    """The project files that `path` imports, at module level or inside functions.

    With `with_packages`, also the `__init__.py` of every package on the way, which Python runs
    first (what a stage's results depend on); without, only the modules the code names (the
    graph whose cycles matter).
    """
    script_dir = None if (path.parent / "__init__.py").is_file() else path.parent
    found: set[Path] = set()

    def add(dotted: str) -> None:
        if (f := _module_file(root, dotted, script_dir)) is not None:
            found.add(f)
            if with_packages:
                found.update(_package_inits(root, dotted))

    for module, name in imported_names(root, path):
        add(module)
        if name:  # `from pkg import module` imports the module
            add(f"{module}.{name}")
    found.discard(path)
    return found


def transitive_imports(root: Path, entry: Path) -> set[Path]:
    """`entry` and every project file it imports, directly or through others."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(direct_imports(root, path) - seen)
    return seen
