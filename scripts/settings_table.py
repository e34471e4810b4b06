"""Print (or with --write, put into docs/settings.md) the settings reference table, generated from pipeline/settings.py
and the benchmark's own section (benchmarks/settings.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from benchmarks.settings import BenchJobSettings

README = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
HEADER = "| setting | default | meaning |"


def table() -> str:
    rows = [HEADER, "|---|---|---|"]
    for section, field in BenchJobSettings.model_fields.items():
        for name, f in field.annotation.model_fields.items():
            if f.default_factory is not None:
                default = str(f.default_factory())
            else:
                default = "required" if f.default is PydanticUndefined else str(f.default)
            rows.append(f"| `{section}.{name}` | `{default}` | {' '.join((f.description or '').split())} |")
    return "\n".join(rows)


def readme_table(text: str) -> tuple[int, int]:
    start = text.index(HEADER)
    end = text.find("\n\n", start)
    return start, len(text.rstrip("\n")) if end == -1 else end


if __name__ == "__main__":
    if "--write" in sys.argv:
        text = README.read_text()
        start, end = readme_table(text)
        README.write_text(text[:start] + table() + text[end:])
    else:
        print(table())
