"""YAML as params.yaml is read: `1e-4` is a float, and a key given twice is an error.

Kept apart from the sections (`config`) because it knows nothing of them: it turns text into
plain mappings, and `config.load_params` turns its errors into `ConfigError`s.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping; `line` is the second, `first_line` the first (1-based)."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter and closer to what researchers write.

    YAML 1.1 reads `1e-4` as a string: the exponent forms are floats here. A key given twice in
    one mapping is an error: PyYAML silently keeps the last one, so a forgotten earlier line
    would win over the one being edited (or the reverse).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in first:
                raise DuplicateKeyError(key, line, first[key])
            first.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse one YAML document with `StrictLoader`.

    Raises:
        DuplicateKeyError: a mapping gives a key twice.
        yaml.YAMLError: the text is not valid YAML.
    """
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506
