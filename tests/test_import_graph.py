"""The house rules of the code, read from the source: layers, no import cycles, private stays
private."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.import_graph import PACKAGES, direct_imports, imported_names

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
ORCHESTRATION = ("dvc", "prefect", "mlflow")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def cycles(root: Path = ROOT, files: list[Path] = FILES) -> list[list[str]]:
    """The import cycles among `files` (Tarjan's strongly connected components)."""
    graph = {f: direct_imports(root, f, with_packages=False) for f in files}
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    found = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted(str(p.relative_to(root)) for p in [v, *component]))

    for f in files:
        if f not in index:
            visit(f)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles() == []


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_no_private_name_is_imported_from_another_module(path):
    private = [
        f"{module}.{name}"
        for module, name in imported_names(ROOT, path)
        if module.split(".")[0] in PACKAGES
        and name.startswith("_")
        # a package's private module (stages/_common.py) serves the modules of that package
        and not (ROOT.joinpath(*module.split("."), f"{name}.py").is_file())
    ]
    assert not private, f"{rel(path)} imports private names {private}"


@pytest.mark.parametrize("path", sorted((ROOT / "exsearch").rglob("*.py")), ids=rel)
def test_the_library_knows_nothing_of_the_orchestration(path):
    used = [m for m, _ in imported_names(ROOT, path) if m.split(".")[0] in ORCHESTRATION]
    assert not used, f"{rel(path)} imports {used}: that belongs in stages/ or flows/"


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    package = tmp_path / "exsearch"
    package.mkdir()
    (package / "a.py").write_text("from exsearch.b import x\n")
    (package / "b.py").write_text("def f():\n    from exsearch import a\n")
    (package / "c.py").write_text("from exsearch import a\n")
    found = cycles(tmp_path, sorted(package.glob("*.py")))
    assert found == [["exsearch/a.py", "exsearch/b.py"]]
