"""The run's plan as the job makes it (`plan_run`), on a one-node cluster the test describes."""

from pipeline.plan.job import RunPlan, check_chunk_room, plan_run
from pipeline.plan.placement import Cluster
from pipeline.settings import Settings


def plan_on_one_node(settings: Settings, num_special_tokens: int, gpus: float, cpus: int, **device) -> RunPlan:
    """plan_run on one node of `gpus` and `cpus` (`device`: its GPU's name and memory), with the chunk's room
    checked for a tokenizer of `num_special_tokens`, as the run checks it when its tokenizer loads."""
    plan = plan_run(settings, Cluster.one_node(gpus, cpus, **device))
    check_chunk_room(settings, plan.chunk, num_special_tokens)
    return plan
