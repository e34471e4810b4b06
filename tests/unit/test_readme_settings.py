"""The README's settings reference is generated from the settings classes; it must not drift from them."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_settings_table_is_current():
    spec = importlib.util.spec_from_file_location("settings_table", REPO / "scripts/settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "README.md").read_text()
    start, end = module.readme_table(text)
    assert text[start:end] == module.table(), "run: python -m scripts.settings_table --write"
