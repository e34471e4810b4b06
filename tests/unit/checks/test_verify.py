"""What jobs.verify calls a pass: the report's verdict, including a run that wrote no chunks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.checks.verify import VerifyReport

pytestmark = pytest.mark.unit

GOOD = VerifyReport("r1", 5, 0.9999, 1.0, 0, 0, 5, True, {"runs.chunks = chunks rows": [5, 5]})


def test_a_run_that_wrote_no_chunks_passes_on_its_accounting_alone():
    nothing = replace(GOOD, checked=0, min_cosine=float("nan"), mean_cosine=float("nan"), self_found_first=0)
    assert nothing.ok(0.999)  # a re-run over an unchanged corpus is a run verify must not call failed
    assert nothing.lines()[0] == "run r1 wrote no chunks: no vectors to re-embed"
    assert not replace(nothing, accounting_ok=False).ok(0.999)
    assert not replace(nothing, over_limit=1).ok(0.999)


def test_vectors_must_match_and_find_their_own_chunk():
    assert GOOD.ok(0.999)
    assert not replace(GOOD, min_cosine=0.99).ok(0.999)
    assert not replace(GOOD, self_found_first=4).ok(0.999)
    assert not replace(GOOD, accounting_ok=False).ok(0.999)
