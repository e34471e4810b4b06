"""A server a test starts on loopback (moto's S3, Prometheus, a Pushgateway): started, waited for until it answers,
stopped by its own process id."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def binary(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is needed (make test installs Debian's prometheus and prometheus-pushgateway)"
    return found


@contextmanager
def served(args: list[str], ready_url: str, timeout_s: float = 30) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{Path(args[0]).name} did not answer at {ready_url}") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def prometheus(
    port: int, targets: list[str], workdir: Path, interval_s: float = 1.0, honor_labels: bool = False
) -> Iterator[str]:
    """A real Prometheus (Debian's) scraping `targets` (host:port) every `interval_s`; yields its URL.
    `honor_labels` keeps the scraped series' own `job` label, as a scrape of a Pushgateway is set up."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
                "scrape_configs": [
                    {"job_name": "scraped", "honor_labels": honor_labels, "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    url = f"http://127.0.0.1:{port}"
    args = [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}"]
    with served([*args, f"--web.listen-address=127.0.0.1:{port}"], f"{url}/-/ready"):
        yield url


def query_until(url: str, expr: str, timeout_s: float = 30) -> list[dict]:
    """`query`, repeated until it finds a series (Prometheus sees a target's series at its next scrape)."""
    deadline = time.monotonic() + timeout_s
    while not (found := query(url, expr)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def query(url: str, expr: str) -> list[dict]:
    """An instant query through Prometheus's HTTP API: the result's samples."""
    body = urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10)
    answer = json.loads(body.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]
