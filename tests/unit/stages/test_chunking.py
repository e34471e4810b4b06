from __future__ import annotations

import itertools

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import schema as s
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.stages.chunking import BREAK_NONE, BREAK_PARAGRAPH, Chunker, split_spans
from pipeline.stages.documents import text_hash
from pipeline.stages.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit

WORDS = st.sampled_from(
    'the engine embeds chunks of tokens ; naïve café Straße 3.14 x2 -- (parenthesis) "quoted" don\'t '
    "Übermaß internationalization tokenizer's ⟨angle⟩ 東京 emoji🙂 foo_bar".split()
)
SENTENCE = st.lists(WORDS, min_size=1, max_size=25).map(lambda ws: " ".join(ws) + st_choice_end(ws))
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=8).map(" ".join)
DOCUMENT = st.lists(PARAGRAPH, min_size=1, max_size=12).map("\n\n".join)


def st_choice_end(words: list[str]) -> str:
    return "?!."[len(words) % 3]


@pytest.fixture(scope="module", params=["minilm", "bpe"])
def tokenizer(request, minilm_path, bpe_tokenizer_path):
    return load_tokenizer(minilm_path if request.param == "minilm" else bpe_tokenizer_path)


def docs_table(texts: list[str]) -> pa.Table:
    rows = [
        {s.DOC_ID: f"d{i}", s.SOURCE: "mem", s.LINE: i, s.TEXT: t, s.DOC_HASH: text_hash(t)}
        for i, t in enumerate(texts)
    ]
    return pa.Table.from_pylist(rows, schema=s.DOC_SCHEMA)


def token_starts(tokenizer, text: str) -> tuple[list[int], dict[int, list[int]]]:
    """Token ids and, per character offset, the tokens starting there (several for zero-width tokens)."""
    ids, offsets = tokenizer.encode(text)
    starting = {}
    for i, (start, _) in enumerate(offsets):
        starting.setdefault(start, []).append(i)
    return ids, starting


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=DOCUMENT, max_tokens=st.integers(16, 300), overlap_frac=st.sampled_from([0.0, 0.1, 0.3]))
def test_chunks_are_exact_bounded_ordered_and_cover_the_document(tokenizer, text, max_tokens, overlap_frac):
    overlap = int((max_tokens - tokenizer.num_special_tokens) * overlap_frac) // 2
    plan = ChunkPlan(max_tokens=max_tokens, overlap_tokens=overlap, boundary_window=0.15, model_id="m")
    chunks = Chunker(tokenizer, plan).chunk(docs_table([text])).to_pylist()
    doc_ids, first_token_at = token_starts(tokenizer, text)

    assert [c[s.CHUNK_INDEX] for c in chunks] == list(range(len(chunks)))
    assert all(c[s.DOC_CHUNKS] == len(chunks) for c in chunks)
    spans = []
    for c in chunks:
        ids = c[s.TOKEN_IDS]
        assert len(ids) == c[s.N_TOKENS] <= max_tokens
        assert tuple(ids[: len(tokenizer.prefix_ids)]) == tokenizer.prefix_ids
        assert tuple(ids[len(ids) - len(tokenizer.suffix_ids) :]) == tokenizer.suffix_ids
        content = ids[len(tokenizer.prefix_ids) : len(ids) - len(tokenizer.suffix_ids)]
        assert c[s.TEXT] == text[c[s.CHAR_START] : c[s.CHAR_END]]
        matches = [i for i in first_token_at[c[s.CHAR_START]] if doc_ids[i : i + len(content)] == content]
        assert matches, "chunk tokens are not a span of the document's tokens"
        start = matches[0]
        spans.append((start, start + len(content)))

    assert spans[0][0] == 0 and spans[-1][1] == len(doc_ids)
    for (s0, e0), (s1, e1) in itertools.pairwise(spans):
        assert s0 < s1 <= e0 < e1
        assert e0 - s1 >= overlap
        if overlap == 0:
            assert s1 == e0


def test_chunk_ids_are_stable_and_depend_on_content_and_settings(minilm_path, sample_texts):
    tok = load_tokenizer(minilm_path)
    plan = ChunkPlan(max_tokens=128, overlap_tokens=0, boundary_window=0.15, model_id="m")
    first = Chunker(tok, plan).chunk(docs_table(sample_texts[:3])).column(s.CHUNK_ID).to_pylist()
    again = Chunker(load_tokenizer(minilm_path), plan).chunk(docs_table(sample_texts[:3])).column(s.CHUNK_ID)
    assert first == again.to_pylist()
    assert len(set(first)) == len(first)
    other_plan = ChunkPlan(max_tokens=129, overlap_tokens=0, boundary_window=0.15, model_id="m")
    assert set(first).isdisjoint(
        Chunker(tok, other_plan).chunk(docs_table(sample_texts[:3])).column(s.CHUNK_ID).to_pylist()
    )


def test_short_document_is_one_chunk_with_specials(minilm_path):
    tok = load_tokenizer(minilm_path)
    plan = ChunkPlan(max_tokens=2000, overlap_tokens=0, boundary_window=0.15, model_id="m")
    [chunk] = Chunker(tok, plan).chunk(docs_table(["  A short document.  "])).to_pylist()
    assert chunk[s.TEXT] == "A short document."
    assert chunk[s.TOKEN_IDS] == [101, *tok.encode("A short document.")[0], 102]


def test_cut_prefers_a_paragraph_break_inside_the_window(minilm_path):
    tok = load_tokenizer(minilm_path)
    para = " ".join(["word"] * 90) + "."
    text = para + "\n\n" + " ".join(["more"] * 200)
    plan = ChunkPlan(max_tokens=102, overlap_tokens=0, boundary_window=0.15, model_id="m")
    first = Chunker(tok, plan).chunk(docs_table([text])).to_pylist()[0]
    assert first[s.TEXT] == para  # 91 tokens: the break at 91 lies in the window [85, 100]


def test_text_the_tokenizer_cannot_see_is_rejected_not_dropped(minilm_path):
    tok = load_tokenizer(minilm_path)
    plan = ChunkPlan(max_tokens=64, overlap_tokens=0, boundary_window=0.15, model_id="m")
    [row] = Chunker(tok, plan).chunk(docs_table(["\u200b\u200b"])).to_pylist()
    assert row[s.REJECT_REASON] == "no_tokens" and row[s.CHUNK_ID] is None


def test_split_spans_never_stalls_on_text_without_breaks():
    spans = split_spans(1000, budget=50, overlap=20, window=7, strength=lambda i: BREAK_NONE)
    assert all(e - b <= 50 for b, e in spans)
    assert spans[-1][1] == 1000 and all(b1 > b0 for (b0, _), (b1, _) in itertools.pairwise(spans))


def test_split_spans_takes_the_latest_strongest_break():
    breaks = {45: BREAK_PARAGRAPH, 48: BREAK_PARAGRAPH, 49: 1}
    spans = split_spans(120, budget=50, overlap=0, window=10, strength=lambda i: breaks.get(i, BREAK_NONE))
    assert spans[0] == (0, 48)


def test_the_tokenizer_protocol_declares_what_the_query_path_calls(minilm_path):
    from pipeline.stages.tokenizer import Tokenizer

    class EncodeOnly:
        prefix_ids, suffix_ids = (101,), (102,)

        def encode(self, text):
            return [], []

    assert isinstance(load_tokenizer(minilm_path), Tokenizer)
    assert not isinstance(EncodeOnly(), Tokenizer)  # query_token_ids needs with_special_tokens too
