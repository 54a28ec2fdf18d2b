"""The benchmark logs kept in bench/results/ speak of the project, not of the machine they ran on."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|opt)/[^\s:'\"]+")


def test_the_machine_paths_check_finds_absolute_paths_and_spares_relative_ones():
    assert ABSOLUTE.findall("/work/main/.venv/lib/x.py:3: FutureWarning") == [
        "/work/main/.venv/lib/x.py"
    ]
    assert ABSOLUTE.findall(".venv/lib/python3.11/site-packages/x.py and runs/iter_0/a") == []


def test_no_benchmark_log_carries_an_absolute_path():
    for log in sorted((ROOT / "bench" / "results").glob("*")):
        found = ABSOLUTE.findall(log.read_text(encoding="utf-8", errors="replace"))
        assert not found, f"bench/results/{log.name}: print paths relative to the project: {found}"
