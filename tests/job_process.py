"""Jobs as a user runs them: `python -m jobs.<name>` in its own process, from the repository root, on a local Ray
that the job starts for itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL_RAY = {
    "EMBEDPIPE_RUN__NUM_CPUS": "2",
    "EMBEDPIPE_RUN__OBJECT_STORE_MB": "256",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}
"""A local Ray sized for these machines (2 cores), without Ray Data's progress bars in the captured output."""


def job_env(**extra: str) -> dict[str, str]:
    """This process's environment plus `extra`, without RAY_ADDRESS: a job that finds one joins that cluster
    instead of starting its own Ray."""
    env = {**os.environ, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def job_command(module: str, *args: str, config: str = "conf/local.toml") -> list[str]:
    return [sys.executable, "-m", module, "--config", config, *args]
