"""A run's figures reach Prometheus the way batch jobs' do: pushed to a real Pushgateway (Debian's
prometheus-pushgateway) at the run's end (the run in this process: where its stages ran does not change what it
pushes), equal to its runs row, and read back through a real Prometheus that scrapes the gateway; a failed run keeps
the last success's time; a gateway that is down never fails a run. The alert rules load and fire as their unit
tests say (Prometheus' promtool)."""

import json
import subprocess
import urllib.request

import lancedb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.run.pushed_metrics import RunFigures, push_run
from pipeline.settings import Settings
from tests.fakes import FakeEmbedder
from tests.job_process import REPO
from tests.local_cluster import free_port
from tests.local_server import binary, prometheus, query, query_until, served

pytestmark = pytest.mark.unit

MONITORING = REPO / "infra" / "monitoring"


@pytest.fixture
def gateway(tmp_path):
    port = free_port()
    # a file of its own: Debian's build persists to /var/lib/prometheus by default, and reloads it at start
    persisted = tmp_path / "pushgateway.data"
    args = [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}"
    with served([*args, f"--persistence.file={persisted}"], f"{url}/-/ready"):
        yield url


def scraped(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("embedpipe_"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("instance",)))
                out[(sample.name, labels)] = sample.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    matches = [v for (n, ls), v in metrics.items() if n == name and all((k, v2) in ls for k, v2 in labels.items())]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def figures(succeeded: bool, ended_at: float, tokens: int) -> RunFigures:
    return RunFigures(succeeded, ended_at, {"run_tokens": tokens, "run_cost": None}, {"added": 3, "rejected": 1})


def test_a_failed_run_keeps_the_last_successs_time_and_a_down_gateway_fails_nothing(gateway):
    assert push_run(gateway, "j", "s3://b/db", figures(True, 1000.0, 50), timeout_s=5)
    assert push_run(gateway, "j", "s3://b/db", figures(False, 2000.0, 7), timeout_s=5)
    metrics = scraped(gateway)
    assert value(metrics, "embedpipe_last_run_success", store="s3://b/db") == 0
    assert value(metrics, "embedpipe_last_run_timestamp_seconds") == 2000.0
    assert value(metrics, "embedpipe_last_success_timestamp_seconds") == 1000.0
    assert value(metrics, "embedpipe_run_tokens") == 7 and value(metrics, "embedpipe_run_documents", fate="added") == 3
    assert not any(n == "embedpipe_run_cost" for n, _ in metrics)  # no price, no cost
    assert not push_run(f"http://127.0.0.1:{free_port()}", "j", "db", figures(True, 1.0, 1), timeout_s=2)


def test_a_run_pushes_its_runs_row_and_prometheus_scrapes_it(gateway, minilm_path, sample_texts, tmp_path):
    corpus, db = tmp_path / "corpus", tmp_path / "db"
    corpus.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i]}) for i in range(6)] + ["{not json"]
    (corpus / "a.jsonl").write_text("\n".join(lines) + "\n")
    settings = Settings(
        input={"paths": [str(corpus)]},
        model={"path": str(minilm_path), "device": "cpu"},
        store={"uri": str(db)},
        run={"device_hour_price": 2.0},
        metrics={"pushgateway": gateway},
    )
    run_ingest(settings, InProcessExecutor(FakeEmbedder(dim=16)))
    [run] = lancedb.connect(str(db)).open_table("runs").to_arrow().to_pylist()
    metrics = scraped(gateway)
    store = str(db)
    assert value(metrics, "embedpipe_last_run_success", job="embedpipe_ingest", store=store) == 1
    assert value(metrics, "embedpipe_last_success_timestamp_seconds") >= run["finished_at"].timestamp() - 5
    for name, column in (
        ("embedpipe_run_tokens", "tokens"),
        ("embedpipe_run_chunks", "chunks"),
        ("embedpipe_run_documents_in", "docs_in"),
        ("embedpipe_run_duration_seconds", "wall_s"),
        ("embedpipe_run_device_hours", "device_hours"),
        ("embedpipe_run_cost", "cost"),
        ("embedpipe_run_tokens_per_second", "tokens_per_s"),
    ):
        assert value(metrics, name) == pytest.approx(run[column]), name
    assert value(metrics, "embedpipe_run_documents", fate="added") == run["added"] == 6
    assert value(metrics, "embedpipe_run_documents", fate="rejected") == run["rejected"] == 1
    target = [gateway.removeprefix("http://")]
    with prometheus(free_port(), target, tmp_path / "prometheus", honor_labels=True) as server:
        labels = f'job="embedpipe_ingest", store="{store}"'
        [tokens] = query_until(server, f"embedpipe_run_tokens{{{labels}}}")
        assert float(tokens["value"][1]) == run["tokens"]
        [success] = query(server, f"embedpipe_last_run_success{{{labels}}}")
        assert float(success["value"][1]) == 1
        assert query(server, f"time() - embedpipe_last_success_timestamp_seconds{{{labels}}} > 3600") == []


def test_the_alert_rules_load_and_fire_as_their_tests_say():
    promtool = binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "embedpipe-alerts.yml"], cwd=MONITORING, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    tests = subprocess.run([promtool, "test", "rules", "alerts-test.yml"], cwd=MONITORING, capture_output=True)
    assert tests.returncode == 0, tests.stdout.decode() + tests.stderr.decode()
