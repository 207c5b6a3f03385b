"""The YAML reader of scenario files: PyYAML's safe loader with YAML 1.2 floats and no duplicate keys.

Why this module exists: PyYAML implements YAML 1.1, where a float needs a dot, so ``lr: 1e-3`` and ``1.0e6`` are
read as *strings* and fail validation with a baffling ``Got '1e-3'``. YAML 1.2 (the current standard, and what
most editors and other languages' parsers follow) reads ``1e-3``, ``-2E5`` and ``.5e1`` as floats. PyYAML also
lets a later key silently replace an earlier one (``rounds: 10`` ... ``rounds: 3``); here a repeated key is an
error naming the key and both lines. Everything else (booleans, integers, null) stays as PyYAML reads it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError

_FLOAT_TAG = "tag:yaml.org,2002:float"

# YAML 1.2 core schema floats (https://yaml.org/spec/1.2.2/#10214-floating-point), restricted to forms with a dot
# or an exponent so plain integers keep resolving as ints (PyYAML tries the float resolver before the int one).
FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9]+[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping repeats a key (PyYAML would keep the last value silently)."""


class ScenarioLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise DuplicateKeyError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first on line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# A copy of the safe loader's implicit resolvers, with the YAML 1.1 float rule replaced by the YAML 1.2 one.
ScenarioLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag != _FLOAT_TAG]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ScenarioLoader.add_implicit_resolver(_FLOAT_TAG, FLOAT_12, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`ScenarioLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=ScenarioLoader)  # noqa: S506  (a SafeLoader subclass)


__all__ = ["FLOAT_12", "ConstructorError", "DuplicateKeyError", "ScenarioLoader", "load_yaml"]
