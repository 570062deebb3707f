"""The --show_config listing of the entry points: every field of a config, its value and what it does.

The descriptions live in one dict beside each config family (configs/recipe.py FIELDS for train.py,
configs/glue.py FIELDS for eval_glue.py), keyed by dotted field name; a key may be a pattern with "*"
("task_overrides.*"). The unset (None) fields of a group are one line.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping

import ml_collections

UNDESCRIBED = "(no description)"
MAX_ALIGN = 56  # descriptions start in one column unless a name and value are longer than this


def leaves(config: ml_collections.ConfigDict | Mapping, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted name, value) of every field that is not a group, in the config's order.

    A dict-valued field that the config keeps as one value (e.g. model_overrides, whose keys vary) is a
    group here too: its entries are listed one by one.
    """
    for name, value in config.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict | Mapping) and value:
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


def describe(name: str, descriptions: Mapping[str, str]) -> str:
    """The description of a dotted field name: its own entry, else the first matching pattern entry, else
    its group's entry (model_overrides.dtype -> model_overrides)."""
    if name in descriptions:
        return descriptions[name]
    for pattern, text in descriptions.items():
        if "*" in pattern and fnmatch.fnmatchcase(name, pattern):
            return text
    group = name.rpartition(".")[0]
    return describe(group, descriptions) if group else UNDESCRIBED


def undescribed(config: ml_collections.ConfigDict, descriptions: Mapping[str, str]) -> list[str]:
    """The fields of `config` without a description (a test keeps this empty for the shipped configs)."""
    return [name for name, _ in leaves(config) if describe(name, descriptions) == UNDESCRIBED]


def listing(config: ml_collections.ConfigDict, descriptions: Mapping[str, str]) -> str:
    """One line per field, `name = value  # description`, in the order of `descriptions` (then the rest);
    the unset (None) fields of a group as one line, `group.* = None`."""
    order = list(descriptions)

    def rank(name: str) -> int:
        text = describe(name, descriptions)
        return next((i for i, key in enumerate(order) if descriptions[key] == text), len(order))

    rows: list[tuple[str, str, str]] = []
    collapsed: set[str] = set()
    for name, value in sorted(leaves(config), key=lambda item: rank(item[0])):
        group = name.rpartition(".")[0]
        if value is None and group:
            if group not in collapsed:
                collapsed.add(group)
                rows.append((f"{group}.*", "None", f"unset: {describe(group, descriptions)}"))
            continue
        rows.append((name, repr(value), describe(name, descriptions)))
    width = min(MAX_ALIGN, max(len(f"{name} = {value}") for name, value, _ in rows))
    return "\n".join(f"{f'{name} = {value}':<{width}}  # {text}" for name, value, text in rows)
