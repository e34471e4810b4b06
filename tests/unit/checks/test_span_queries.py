"""The span-query sampler: question-sized sentences from inside documents, the same ones whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.checks.retrieval import SPAN_WORDS, pick_documents, sample_spans, sentences

pytestmark = pytest.mark.unit

DOC = (
    "Short one. This sentence has exactly eight words in it. "
    + " ".join(["word"] * 45)
    + ". Does the gzip module read concatenated members of one file?\n\nA heading\n\n"
    "Another sentence that is long enough to be a query here!"
)


def test_sentences_keep_only_question_sized_ones_with_whitespace_folded():
    got = sentences(DOC)
    assert got == [
        "This sentence has exactly eight words in it.",
        "Does the gzip module read concatenated members of one file?",
        "Another sentence that is long enough to be a query here!",
    ]
    assert all(SPAN_WORDS[0] <= len(x.split()) <= SPAN_WORDS[1] for x in got)
    assert sentences("Too short.\n\nAlso short.") == []


def test_documents_and_spans_do_not_depend_on_row_order_duplicates_or_other_documents():
    ids = [f"d{i}" for i in range(50)]
    picked = pick_documents(ids * 3, 10, seed=1)
    assert picked == pick_documents(list(reversed(ids)), 10, seed=1) and len(set(picked)) == 10
    assert pick_documents(ids, 10, seed=2) != picked
    alone = sample_spans({"d1": DOC}, seed=5)
    with_others = sample_spans({"d1": DOC, "d2": "Nothing long enough.", "d3": DOC}, seed=5)
    assert alone == [x for x in with_others if x[0] == "d1"]
    assert [d for d, _ in with_others] == ["d1", "d3"]  # d2 has no sentence of the right size


@given(st.lists(st.text(alphabet="abc .!?\n", min_size=0, max_size=400), min_size=1, max_size=8), st.integers(0, 9))
def test_every_span_is_a_sentence_of_its_own_document(texts, seed):
    docs = {f"d{i}": t for i, t in enumerate(texts)}
    for doc_id, span in sample_spans(docs, seed):
        assert span in sentences(docs[doc_id])
        assert span in " ".join(docs[doc_id].split())
