"""Rewrite dvc.yaml's code deps from the imports: `python -m tests.stage_deps_sync`.

Each stage's deps start with the file its command runs; the project modules it imports follow,
sorted, then the data deps. This replaces the project-module lines of every stage with what the
entry file imports (transitively), and leaves everything else (data deps, comments, layout) as
written. tests/test_stage_deps.py fails while the two disagree and names this command.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.import_graph import transitive_imports

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("exsearch/", "stages/", "tracking/", "flows/", "scripts/")
_STAGE = re.compile(r"^  (\w+):\s*$")
_CMD = re.compile(r"python (?:-m ([\w.]+)|(\S+\.py))")
_ITEM = re.compile(r"^(\s+)- (\S+)\s*$")


def _entry(cmd_text: str) -> Path | None:
    if not (m := _CMD.search(cmd_text)):
        return None
    return (
        ROOT.joinpath(*m.group(1).split(".")).with_suffix(".py")
        if m.group(1)
        else ROOT / m.group(2)
    )


def _is_code(dep: str) -> bool:
    return dep.endswith(".py") and dep.startswith(CODE_DIRS)


def synced(text: str) -> str:
    """`text` (dvc.yaml) with each stage's module deps replaced by what its command imports."""
    lines, out, entry, in_deps = text.splitlines(keepends=True), [], None, False
    for i, line in enumerate(lines):
        if _STAGE.match(line):
            block = "".join(lines[i : i + 8])  # the command follows the stage name closely
            entry, in_deps = _entry(block), False
        if line.strip() == "deps:":
            in_deps = True
            out.append(line)
            continue
        item = _ITEM.match(line)
        if in_deps and item is None and not line.strip().startswith("#"):
            in_deps = False
        if in_deps and item and entry is not None and _is_code(item.group(2)):
            if item.group(2) == str(entry.relative_to(ROOT)):
                needed = sorted(str(p.relative_to(ROOT)) for p in transitive_imports(ROOT, entry))
                out.append(line)
                out.extend(f"{item.group(1)}- {p}\n" for p in needed if p != item.group(2))
            continue
        out.append(line)
    return "".join(out)


def main() -> int:
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new = synced(text)
    if new != text:
        path.write_text(new)
        print("dvc.yaml: module deps rewritten from the imports")
    else:
        print("dvc.yaml: module deps already match the imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
