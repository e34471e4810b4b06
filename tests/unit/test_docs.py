"""The docs do not drift from the code: the settings reference is generated from the settings classes, every
relative link and every `python -m` command the docs name exists, the tables' columns are those of the schemas,
and the reject reasons are the ones the code gives."""

import importlib.util
import re
from pathlib import Path

import pytest

from pipeline import schema as s

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "infra" / "README.md"]


def test_the_settings_reference_is_current():
    spec = importlib.util.spec_from_file_location("settings_table", REPO / "scripts/settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "docs" / "settings.md").read_text()
    start, end = module.readme_table(text)
    assert text[start:end] == module.table(), "run: python -m scripts.settings_table --write"


def test_the_readme_is_a_guide():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_exists():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = target.split("#")[0]
            if path and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert broken == []


def test_every_module_the_docs_run_exists():
    missing = []
    for doc in DOCS:
        for module in set(re.findall(r"python -m ((?:jobs|benchmarks|scripts)(?:\.\w+)+)", doc.read_text())):
            if not (REPO / (module.replace(".", "/") + ".py")).exists():
                missing.append(f"{doc.relative_to(REPO)}: {module}")
    assert missing == []


def test_the_tables_doc_names_every_column():
    text = (REPO / "docs" / "architecture.md").read_text()
    schemas = {
        "chunks": s.chunks_table_schema(4),
        "batches": s.BATCHES_SCHEMA,
        "runs": s.RUNS_SCHEMA,
        "rejects": s.REJECTS_SCHEMA,
    }
    unnamed = {}
    for table, schema in schemas.items():
        [row] = [line for line in text.splitlines() if line.startswith(f"| `{table}` |")]
        unnamed[table] = [f.name for f in schema if f"`{f.name}`" not in row]
    assert unnamed == {table: [] for table in schemas}


def test_the_reject_reasons_documented_are_the_codes():
    text = (REPO / "docs" / "architecture.md").read_text()
    [row] = [line for line in text.splitlines() if line.startswith("| `rejects` |")]
    documented = set(re.findall(r"`([a-z_0-9]+)`", row.split("`reason` (")[1].split(")")[0]))
    assert documented == {r.value for r in s.RejectReason}


def test_the_layout_table_names_every_module_of_the_library_and_no_other():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Layout: the packages and their order")[1].split("\n## ")[0]
    named = []
    for line in section.splitlines():
        if line.startswith("| ") and "`pipeline/" in line:
            cell = line.split("|")[2]
            for package, modules in re.findall(r"`(pipeline/(?:[a-z_]+/)*)`: ((?:`[a-z_]+`(?:, )?)+)", cell):
                named += [f"{package}{module}.py" for module in re.findall(r"`([a-z_]+)`", modules)]
    tree = {p.relative_to(REPO).as_posix() for p in (REPO / "pipeline").rglob("*.py") if p.name != "__init__.py"}
    assert len(named) == len(set(named)), "a module is named twice"
    assert sorted(set(named) - tree) == [], "named in the layout table, not in the tree"
    assert sorted(tree - set(named)) == [], "in the tree, not in the layout table"


def test_every_source_file_the_docs_name_exists():
    """A path such as `store/group_commit.py` or `tests/ray/test_reliability.py` in a doc names a file of the tree
    (relative to the repository or to pipeline/)."""
    missing = []
    for doc in DOCS:
        for path in set(re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)", doc.read_text())):
            if not ((REPO / path).exists() or (REPO / "pipeline" / path).exists()):
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert missing == []
