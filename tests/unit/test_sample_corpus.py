"""The benchmark corpora made offline: clipping at a paragraph break, and the installed packages' READMEs."""

from __future__ import annotations

import pytest

from pipeline.sample_corpus import clip, package_documents, write_text_files

pytestmark = pytest.mark.unit


def test_clip_cuts_at_the_last_paragraph_break_within_the_limit():
    text = "first paragraph\n\nsecond paragraph\n\nthird"
    assert clip(text, 100) == text
    assert clip(text, 30) == "first paragraph"
    assert clip("no breaks at all here", 8) == "no break"


def test_package_readmes_are_one_clipped_document_per_installed_package(tmp_path):
    docs = list(package_documents(max_chars=4000, min_chars=3000))
    ids = [d["id"] for d in docs]
    assert len(docs) >= 5  # the project's own dependencies ship long READMEs
    assert len(ids) == len(set(ids)) and ids == sorted(ids)
    assert "packages/embedpipe" not in ids  # the project's own README changes with every commit
    assert all(0 < len(d["text"]) <= 4000 for d in docs)
    assert write_text_files(tmp_path, docs) == len(docs)
    assert sorted(p.read_text(encoding="utf-8") for p in tmp_path.glob("*.md")) == sorted(d["text"] for d in docs)
