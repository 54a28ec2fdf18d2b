"""Writing raw record files for the reader tests: a JSON list, or JSON lines."""

import json
from pathlib import Path

RAW = Path(__file__).resolve().parents[1] / "data" / "raw"


def write(path: Path, records, *, jsonl: bool = False) -> Path:
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path
