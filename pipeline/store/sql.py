"""SQL literals for Lance filters. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Sequence[str]) -> str:
    return ", ".join(sql_str(v) for v in values)
