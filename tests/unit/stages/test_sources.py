from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import InputSettings
from pipeline.stages.sources import list_shards

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.jsonl").write_text("{}\n")
    (tmp_path / "a" / "two.parquet").write_bytes(b"")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "note.md").write_text("x")
    (tmp_path / "a" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "x.txt").write_text("x")
    return tmp_path


def test_directory_lists_known_formats_with_ids_relative_to_the_root(tree):
    _, shards = list_shards(InputSettings(paths=[str(tree / "a")]))
    assert [(sh.format, sh.text_doc_id) for sh in shards] == [
        ("jsonl", "one.jsonl"),
        ("text", "sub/note.md"),
        ("parquet", "two.parquet"),
    ]


def test_globs_and_files_and_dedup(tree):
    _, shards = list_shards(InputSettings(paths=[str(tree / "a" / "*.jsonl"), str(tree / "a" / "one.jsonl")]))
    assert [sh.path for sh in shards] == [str(tree / "a" / "one.jsonl")]
    _, shards = list_shards(InputSettings(paths=[str(tree / "a" / "**" / "*.md")]))
    assert [sh.text_doc_id for sh in shards] == ["sub/note.md"]


def test_file_uri(tree):
    _, shards = list_shards(InputSettings(paths=[f"file://{tree}/a/one.jsonl"]))
    assert shards[0].format == "jsonl"


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ([], "input.paths is empty"),
        (["{root}/missing"], "does not exist"),
        (["{root}/a/*.csv"], "matches no files"),
        (["{root}/a/image.png"], "cannot tell the format"),
    ],
)
def test_bad_inputs_fail_before_work_starts(tree, paths, message):
    with pytest.raises(ConfigError, match=message):
        list_shards(InputSettings(paths=[p.format(root=tree) for p in paths]))


def test_directory_without_readable_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="matched no readable files"):
        list_shards(InputSettings(paths=[str(tmp_path)]))


def test_a_local_source_is_relative_to_the_input_root_never_this_machines_absolute_path(tree, monkeypatch):
    _, shards = list_shards(InputSettings(paths=[str(tree / "a")]))
    assert [sh.source for sh in shards] == ["one.jsonl", "sub/note.md", "two.parquet"]
    _, shards = list_shards(InputSettings(paths=[str(tree / "a" / "sub" / "note.md")]))
    assert [sh.source for sh in shards] == ["note.md"]
    (tree / "b").mkdir()
    (tree / "b" / "one.jsonl").write_text("{}\n")
    _, shards = list_shards(InputSettings(paths=[str(tree / "a" / "*.jsonl"), str(tree / "b")]))
    assert [sh.source for sh in shards] == ["a/one.jsonl", "b/one.jsonl"]  # two roots: from their common directory
    monkeypatch.chdir(tree)
    _, shards = list_shards(InputSettings(paths=["a/sub"]))
    assert [(sh.source, sh.path) for sh in shards] == [("note.md", str(tree / "a" / "sub" / "note.md"))]
