"""Reading a stage's input files: a missing or malformed one stops the stage with one line.

DVC hands a stage only files it has made, but the same stages run by hand (`python -m
stages.weigh --trajectories …`) get whatever path is typed. The readers in `exsearch` say what
is wrong with a file in a ValueError; a missing file is an OSError. Either becomes
`error: <file>: <what>` and exit status 1, before any model is loaded, instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stages import _common

T = TypeVar("T")


def read(reader: Callable[[Path], T], path: str | Path, made_by: str) -> T:
    """`reader(path)`, or one `error:` line naming the file; `made_by` says what writes it."""
    path = Path(path)
    if not path.exists():
        _common.fail(f"{path}: no such file or folder ({made_by})")
    try:
        return reader(path)
    except FileNotFoundError as e:  # a file the reader looked for inside `path`
        _common.fail(f"{e.filename}: no such file ({made_by})")
    except (ValueError, OSError) as e:
        message = str(e)
        _common.fail(message if message.startswith(str(path)) else f"{path}: {message}")
