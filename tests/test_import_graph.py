"""The house rules of the code, read from the source: layers, no import cycles, private stays
private."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.import_graph import PACKAGES, direct_imports, imported_names

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
ORCHESTRATION = ("dvc", "prefect", "mlflow", "tracking")


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
    assert not used, f"{rel(path)} imports {used}: that belongs in stages/, flows/ or tracking/"


@pytest.mark.parametrize("path", sorted((ROOT / "tracking").rglob("*.py")), ids=rel)
def test_tracking_imports_no_stage_or_flow(path):
    used = [m for m, _ in imported_names(ROOT, path) if m.split(".")[0] in ("stages", "flows")]
    assert not used, f"{rel(path)} imports {used}: stages and flows use tracking, not the reverse"


def role_packages(root: Path) -> dict[str, Path]:
    """Every package by role (exsearch.<role>, tracking) → its folder."""
    found = {"tracking": root / "tracking"} if (root / "tracking" / "__init__.py").is_file() else {}
    for init in sorted((root / "exsearch").glob("*/__init__.py")):
        found[f"exsearch.{init.parent.name}"] = init.parent
    return found


def exported(init: Path) -> set[str]:
    """The names a package's `__init__` lists in `__all__`."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return {elt.value for elt in node.value.elts}
    return set()


def crossings(root: Path, path: Path) -> list[str]:
    """Imports of `path` that reach into another package past what its `__init__` exports."""
    packages = role_packages(root)
    bad = []
    for module, name in imported_names(root, path):
        owner = next((p for p in packages if module == p or module.startswith(p + ".")), None)
        if owner is None or path.is_relative_to(packages[owner]):
            continue
        if module != owner:
            bad.append(f"{module}.{name}" if name else module)
        elif name and name not in exported(packages[owner] / "__init__.py"):
            bad.append(f"{module}.{name}")
    return bad


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_other_packages_are_used_only_through_what_their_init_exports(path):
    bad = crossings(ROOT, path)
    assert not bad, (
        f"{rel(path)} imports {bad}: import from the package, and add the name to its "
        "__init__'s __all__ if other packages need it"
    )


def test_the_export_rule_catches_a_module_path_and_an_unexported_name(tmp_path):
    agent = tmp_path / "exsearch" / "agent"
    agent.mkdir(parents=True)
    (tmp_path / "exsearch" / "__init__.py").write_text("")
    (agent / "__init__.py").write_text('from exsearch.agent.loop import run\n__all__ = ["run"]\n')
    (agent / "loop.py").write_text("def run(): ...\ndef helper(): ...\n")
    user = tmp_path / "exsearch" / "user.py"
    user.write_text(
        "from exsearch.agent import run\n"
        "from exsearch.agent import helper\n"
        "from exsearch.agent.loop import run as again\n"
    )
    assert crossings(tmp_path, user) == ["exsearch.agent.helper", "exsearch.agent.loop.run"]
    assert crossings(tmp_path, agent / "__init__.py") == []  # inside its own package


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    package = tmp_path / "exsearch"
    package.mkdir()
    (package / "a.py").write_text("from exsearch.b import x\n")
    (package / "b.py").write_text("def f():\n    from exsearch import a\n")
    (package / "c.py").write_text("from exsearch import a\n")
    found = cycles(tmp_path, sorted(package.glob("*.py")))
    assert found == [["exsearch/a.py", "exsearch/b.py"]]
