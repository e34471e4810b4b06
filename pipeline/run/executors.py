"""Which executor a run uses when it is given none (pipeline/run/executor.py has the protocol)."""

from __future__ import annotations

import os

from pipeline.run.executor import Executor


def default_executor() -> Executor:
    """A run's executor unless it is given one: Ray (the cluster RAY_ADDRESS names, else a local Ray)."""
    from pipeline.run.ray.executor import RayExecutor

    return RayExecutor()


def planning_executor() -> Executor:
    """What a dry run plans on: the cluster RAY_ADDRESS names, else this machine as a local Ray would see it (no Ray
    is started to plan)."""
    if os.environ.get("RAY_ADDRESS"):
        return default_executor()
    from pipeline.run.in_process import InProcessExecutor

    return InProcessExecutor()
