"""What each task of the plan's keyed shuffle asks Ray for. Ray Data 2.60 plans `repartition(keys=...)` with its
SHUFFLE_V2 operators, whose map and reduce tasks ask a whole CPU each with no setting to change it: the map's ask is
a keyword default bound when its class was defined, the reduce's a class constant. A whole CPU free on one node may
never come while the engines and chunk actors hold theirs (seen: a head with 0 CPUs and a worker of 2 with an engine
and a chunk actor waited forever on `HashShuffleMap` tasks asking CPU 1.0). A shuffle task hashes or concatenates
blocks: it needs no whole CPU."""

from __future__ import annotations

from ray.data import DataContext
from ray.data._internal.execution.operators.hash_shuffle import HashShufflingOperatorBase
from ray.data._internal.execution.operators.shuffle_operators.disk_shuffle_map_operator import DiskHashShuffleMapOp
from ray.data._internal.execution.operators.shuffle_operators.disk_shuffle_reduce_operator import (
    DiskHashShuffleReduceOp,
)
from ray.data._internal.execution.operators.shuffle_operators.shuffle_map_operator import ShuffleMapOp
from ray.data._internal.execution.operators.shuffle_operators.shuffle_reduce_operator import ShuffleReduceOp
from ray.data.context import ShuffleStrategy

from pipeline.errors import PipelineError

MAP_OPS = (ShuffleMapOp, DiskHashShuffleMapOp)
REDUCE_OPS = (ShuffleReduceOp, DiskHashShuffleReduceOp)


def ask_shuffle_cpus(cpus: float) -> None:
    """Make every task of a keyed repartition ask `cpus`, whichever of Ray Data's shuffles plans it. Raises if Ray
    Data's operators no longer have the defaults this sets (a Ray upgrade): the run would otherwise stall again
    without a word."""
    for op in MAP_OPS:
        defaults = op.__init__.__kwdefaults__ or {}
        if "map_cpus" not in defaults or not hasattr(op, "_DEFAULT_SHUFFLE_MAP_TASK_NUM_CPUS"):
            raise _changed(op.__name__, "map_cpus")
        op._DEFAULT_SHUFFLE_MAP_TASK_NUM_CPUS = cpus  # noqa: SLF001
        defaults["map_cpus"] = cpus
    for op in REDUCE_OPS:
        if not hasattr(op, "_DEFAULT_SHUFFLE_REDUCE_TASK_NUM_CPUS"):
            raise _changed(op.__name__, "_DEFAULT_SHUFFLE_REDUCE_TASK_NUM_CPUS")
        op._DEFAULT_SHUFFLE_REDUCE_TASK_NUM_CPUS = cpus  # noqa: SLF001
    HashShufflingOperatorBase._DEFAULT_SHUFFLE_BLOCK_NUM_CPUS = cpus  # noqa: SLF001 - HASH_SHUFFLE's, if chosen
    if DataContext.get_current().shuffle_strategy == ShuffleStrategy.GPU_SHUFFLE:
        msg = "RAY_DATA_DEFAULT_SHUFFLE_STRATEGY=gpu_shuffle: the run's plan shuffle runs on CPUs; unset it"
        raise PipelineError(msg)


def _changed(op: str, name: str) -> PipelineError:
    return PipelineError(
        f"Ray Data's {op} has no {name} any more (pyproject pins ray 2.60): the run cannot size its shuffle tasks "
        f"and would stall on a busy node; install the pinned Ray, or update pipeline/run/ray/shuffle.py"
    )
