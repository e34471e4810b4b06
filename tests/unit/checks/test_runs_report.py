"""`python -m jobs.runs` on a store two runs filled (in this process, with the fake engine): the table and the JSON
say what the runs rows say, and the HTML report, opened in a real headless browser (Debian's chromium), shows the
newest run's tokens, its engines and its stages, and the history, and renders to a screenshot that is not blank."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import lancedb
import pytest
from PIL import Image

from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.settings import Settings
from tests.fakes import FakeEmbedder
from tests.job_process import REPO, job_command, job_env

pytestmark = pytest.mark.unit


def ingest(model: Path, corpus: Path, db: Path) -> None:
    settings = Settings(
        input={"paths": [str(corpus)]},
        model={"path": str(model), "device": "cpu"},
        store={"uri": str(db)},
        run={"device_hour_price": 3.0, "batch_rows": 4},
        index={"after_run": False},
    )
    result = run_ingest(settings, InProcessExecutor(FakeEmbedder(dim=16)))
    assert re.search(r"; engines 1 x [\d.,]+ s, busy \d+%, [\d.e-]+ device-hours; cost ", result.summary_line())


@pytest.fixture(scope="module")
def store(minilm_path, sample_texts, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs-report")
    corpus, db = root / "corpus", root / "db"
    corpus.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i]}) for i in range(12)]
    (corpus / "a.jsonl").write_text("\n".join(lines[:8]) + "\n")
    ingest(minilm_path, corpus, db)
    (corpus / "b.jsonl").write_text("\n".join(lines[8:]) + "\n")
    ingest(minilm_path, corpus, db)
    return db


def runs_rows(db: Path) -> list[dict]:
    rows = lancedb.connect(str(db)).open_table("runs").to_arrow().to_pylist()
    return sorted(rows, key=lambda r: r["started_at"], reverse=True)


def jobs_runs(db: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        job_command("jobs.runs", "--db", str(db), *args), cwd=REPO, env=job_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_the_table_and_the_json_say_what_the_runs_rows_say(store):
    rows = runs_rows(store)
    listed = json.loads(jobs_runs(store, "--json").stdout)
    assert [r["run_id"] for r in listed] == [r["run_id"] for r in rows]
    for got, row in zip(listed, rows, strict=True):
        for key in ("status", "added", "skipped", "tokens", "tokens_per_s", "engine_s", "device_hours", "cost"):
            assert got[key] == row[key], key
    newest, first = rows
    assert newest["added"] == 4 and newest["skipped"] == 8 and first["added"] == 8
    assert newest["cost"] == pytest.approx(newest["device_hours"] * 3.0)
    assert newest["cost_per_million_tokens"] == pytest.approx(newest["cost"] / newest["tokens"] * 1e6)
    assert 0 < newest["engine_busy"] <= 1
    table = jobs_runs(store).stdout.splitlines()
    assert [line.split()[-1] for line in table[1:]] == [r["run_id"] for r in rows]


def test_the_html_report_renders_in_a_browser(store, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    page = tmp_path / "runs.html"
    jobs_runs(store, "--html", str(page))
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1000,1400"]
    dom = subprocess.run([*browse, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    newest = runs_rows(store)[0]
    batches = lancedb.connect(str(store)).open_table("batches").to_arrow().to_pylist()
    engines = {b["actor"] for b in batches if b["run_id"] == newest["run_id"]}
    assert newest["run_id"] in re.search(r"<p id=\"summary\">.*?</p>", dom).group(0)
    assert re.search(r'<span id="tokens">([\d,]+)</span>', dom).group(1) == f"{newest['tokens']:,}"
    assert dom.count("<circle") >= 3  # points of the tokens/s chart and of the history
    engines_table = re.search(r'<table id="engines".*?</table>', dom).group(0)
    assert engines_table.count("<tr>") == len(engines) >= 1
    assert all(r["run_id"] in dom or r["started_at"].isoformat() in dom for r in runs_rows(store))
    shot = tmp_path / "runs.png"
    subprocess.run([*browse, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1400)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 20 and any(c[1] == (42, 111, 219) for c in colors)  # text, and the bars' blue
