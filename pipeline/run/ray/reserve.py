"""What Ray Data leaves to the engines, kept in step with the bundles they still hold."""

from __future__ import annotations

import threading

import ray
import structlog
from ray.exceptions import RayError

from pipeline.plan.placement import held_by_engines
from pipeline.run.ray.engines import Engines
from pipeline.run.ray.stages import stage_limits

log = structlog.get_logger(__name__)
RESERVE_CHECK_S = 5.0
"""How often the engines' reserve in Ray Data's budget is checked against the nodes still alive."""


class EngineReserve(threading.Thread):
    """Keeps Ray Data's limits (the alive nodes' resources less the engines' bundles) in step with the cluster:
    after a node is lost, the head's CPUs less every engine's bundle could leave it nothing to schedule on, and the
    run would wait for ever; nodes an autoscaler adds raise them."""

    def __init__(self, options, engines: Engines):
        super().__init__(daemon=True, name="engine-reserve")
        self.options, self.engines, self.stop = options, engines, threading.Event()
        self.held = held_by_engines(engines.bundle, engines.nodes, set(engines.nodes))

    def run(self) -> None:
        while not self.stop.wait(RESERVE_CHECK_S):
            try:
                nodes = [n for n in ray.nodes() if n.get("Alive")]
            except RayError:
                continue
            alive = {n["NodeID"] for n in nodes}
            cluster = {k: sum(n.get("Resources", {}).get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
            held = held_by_engines(self.engines.bundle, self.engines.nodes, alive)
            if held["CPU"] != self.held["CPU"]:
                log.warning("engine_reserve", cpus=held["CPU"], gpus=held["GPU"], reason="a node with engines is lost")
            self.held = held
            self.options.resource_limits = stage_limits(cluster, held)
