"""The progress arithmetic: expected tokens from the bytes still queued, the sliding rate, the ETA, the line."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.run.progress import (
    Progress,
    Rate,
    chunked_counts,
    duration,
    embedded_counts,
    eta_s,
    planned_counts,
    progress_line,
)
from pipeline.run.progress_display import ProgressDisplay

pytestmark = pytest.mark.unit


def test_expected_tokens_scale_the_queued_bytes_by_the_tokens_per_byte_so_far():
    p = Progress(docs_planned=10, bytes_planned=10_000, docs_chunked=2, bytes_chunked=2_000, tokens_chunked=500)
    assert p.tokens_expected() == 500 + 8_000 * 500 // 2_000 == 2_500
    assert Progress(bytes_planned=10_000).tokens_expected() is None  # nothing chunked: no ratio yet
    p.add({"bytes_chunked": 8_000, "tokens_chunked": 1_900, "docs_chunked": 8})
    assert p.tokens_expected() == 2_400  # all chunked: the expected total is what the chunks hold


def test_eta_is_the_tokens_left_over_the_rate_and_unknown_without_either():
    p = Progress(bytes_planned=4_000, bytes_chunked=1_000, tokens_chunked=1_000, tokens_embedded=600)
    assert eta_s(p, 100.0) == pytest.approx((4_000 - 600) / 100.0)
    assert eta_s(p, None) is None and eta_s(Progress(), 100.0) is None
    done = Progress(bytes_planned=10, bytes_chunked=10, tokens_chunked=50, tokens_embedded=50)
    assert eta_s(done, 10.0) == 0.0


def test_rate_uses_the_sliding_window():
    rate = Rate(window_s=10)
    assert rate.tokens_per_s() is None
    for t, n in ((0, 0), (5, 1_000), (10, 2_000), (20, 12_000)):
        rate.observe(t, n)
    assert rate.tokens_per_s() == pytest.approx((12_000 - 2_000) / 10)  # t=0 and t=5 fell out of the window


def test_counts_from_arrow_batches_follow_the_fates():
    docs = pa.table(
        {
            s.DOC_ID: ["a", "b", "c", "d"],
            s.TEXT: ["héllo", "xx", "yyy", "z"],
            s.FATE: ["new", "unchanged", "changed", None],
            s.REJECT_REASON: [None, None, None, "binary"],
        }
    )
    assert planned_counts(docs) == {"docs_planned": 2, "bytes_planned": len("héllo".encode()) + 3}
    chunks = pa.table({s.N_TOKENS: pa.array([7, None, 5], pa.int32())})  # a reject row has no tokens
    assert chunked_counts(docs, chunks) == {
        "docs_chunked": 2,
        "bytes_chunked": 9,
        "chunks_made": 2,
        "tokens_chunked": 12,
    }
    assert embedded_counts(chunks) == {"chunks_embedded": 2, "tokens_embedded": 12}


def test_the_line_and_the_display():
    assert [duration(x) for x in (None, 5, 65, 3_725)] == ["--", "5s", "1m05s", "1h02m"]
    p = Progress(
        docs_planned=100,
        bytes_planned=100_000,
        docs_chunked=40,
        bytes_chunked=40_000,
        tokens_chunked=10_000,
        chunks_made=40,
        engines_ready=1,
        chunks_embedded=30,
        tokens_embedded=7_000,
        rejected=2,
    )
    line = progress_line(p, 70.0, 1_000.0)
    assert line == "1m10s · docs 40/100 · chunks 30/40 · tokens 7.0k/25.0k · 1,000 tok/s · ETA 18s · 2 rejected"
    assert "starting engines" in progress_line(Progress(), 3.0, None)
    assert "-- tok/s" in progress_line(Progress(engines_ready=1), 3.0, None)

    screen = io.StringIO()
    board = dict(docs_planned=4, bytes_planned=400, bytes_chunked=100, tokens_chunked=50, docs_chunked=1)
    board.update(chunks_made=1, engines_ready=1, chunks_embedded=0, tokens_embedded=0)
    display = ProgressDisplay(lambda: board, lambda: {"chunks_written": 0}, tty=True, stream=screen)
    display.tick()
    board.update(chunks_embedded=1, tokens_embedded=50)
    display.rate.points[0] = (display.rate.points[0][0] - 1.0, 0)  # one second earlier
    display.tick()
    assert screen.getvalue().count("\r\x1b[2K") == 2 and "tokens 50/200" in display.last_line
    assert "ETA" in display.last_line and "--" not in display.last_line.split("ETA")[1]


def test_log_lines_print_above_the_live_line_and_redraw_it(capsys):
    import structlog

    from pipeline.log import configure_logging, set_live_line

    configure_logging("INFO", json_format=True)
    set_live_line(lambda: "LIVE 1m05s")
    try:
        structlog.get_logger().info("rows_committed", chunks=3)
    finally:
        set_live_line(None)
    err = capsys.readouterr().err
    assert err.startswith("\r\x1b[2K{") and err.endswith("}\nLIVE 1m05s") and '"chunks": 3' in err
    structlog.get_logger().info("after")
    assert capsys.readouterr().err.startswith("{")  # no display: plain lines again
