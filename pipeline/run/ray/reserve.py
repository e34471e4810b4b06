"""What Ray Data leaves to the engines, kept in step with the bundles they still hold."""

from __future__ import annotations

import threading

import ray
import structlog
from ray.data import ExecutionResources
from ray.exceptions import RayError

from pipeline.plan.placement import held_by_engines
from pipeline.run.ray.engines import Engines

log = structlog.get_logger(__name__)
RESERVE_CHECK_S = 5.0
"""How often the engines' reserve in Ray Data's budget is checked against the nodes still alive."""


class EngineReserve(threading.Thread):
    """Keeps what Ray Data leaves to the engines in step with the bundles they still hold. Ray Data re-reads the
    cluster's size every few seconds but not what it was told to leave out: after a node is lost, the head's CPUs
    less every engine's bundle could leave it nothing to schedule on, and the run would wait for ever."""

    def __init__(self, options, engines: Engines):
        super().__init__(daemon=True, name="engine-reserve")
        self.options, self.engines, self.stop = options, engines, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(RESERVE_CHECK_S):
            try:
                alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            except RayError:
                continue
            held = held_by_engines(self.engines.bundle, self.engines.nodes, alive)
            if held["CPU"] != self.options.exclude_resources.cpu:
                log.warning("engine_reserve", cpus=held["CPU"], gpus=held["GPU"], reason="a node with engines is lost")
            self.options.exclude_resources = ExecutionResources(cpu=held["CPU"], gpu=held["GPU"])
