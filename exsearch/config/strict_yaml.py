"""YAML as DVC reads params.yaml (YAML 1.2), and a key given twice is an error naming both lines.

DVC parses params.yaml with ruamel.yaml's safe loader, which follows YAML 1.2: `on`, `yes` and
`off` are strings, `017` is seventeen, `0o17` is fifteen and `1e-4` a float. A YAML 1.1 reader
(PyYAML) disagrees on each of them, so the stages could run with another value than the one
DVC records in dvc.lock and shows in `dvc exp show`. Reading with the same parser removes the
disagreement; a value of the wrong type (`well_formed_only: on`) is then refused by the strict
sections rather than silently turned into a boolean.

Kept apart from the sections (`config`) because it knows nothing of them: it turns text into
plain mappings, and `config.load_params` turns its errors into `ConfigError`s.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import YAMLError

__all__ = ["DuplicateKeyError", "YAMLError", "load_yaml"]


class DuplicateKeyError(ValueError):
    """A key given twice in one mapping; `line` is the second, `first_line` the first (1-based)."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictConstructor(SafeConstructor):
    """ruamel.yaml's safe constructor, whose duplicate-key error names the key's first line.

    ruamel refuses duplicates too, but its error points at the mapping's start and the second
    key, and it does not look in a mapping that holds a `<<:` merge key. This check runs on the
    mapping's own keys before the merge is applied (a key a merge brings in may be overridden).
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list):  # `? [a, b]`: ruamel makes it a tuple
                key = tuple(key)
            if not isinstance(key, Hashable):
                continue  # ruamel's own error (an unhashable key) follows
            line = key_node.start_mark.line + 1
            if key in first:
                raise DuplicateKeyError(key, line, first[key])
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse one YAML document as DVC does (YAML 1.2, ruamel.yaml's safe loader).

    Raises:
        DuplicateKeyError: a mapping gives a key twice.
        YAMLError: the text is not valid YAML (ruamel's message names line and column).
    """
    yaml = YAML(typ="safe", pure=True)  # pure: the marks that name lines
    yaml.Constructor = _StrictConstructor
    return yaml.load(text)
