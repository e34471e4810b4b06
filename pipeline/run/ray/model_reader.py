"""The model's small facts read where the model is: a RayJob's driver runs on the head, which mounts no model
volume, so the run reads the model directory (config, pooling, limits, the weights' safetensors headers) and its
tokenizer by a task on a node that has it, and the driver gets metadata only."""

from __future__ import annotations

import ray
import structlog
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.errors import ConfigError, ModelNotHere
from pipeline.plan.model_dir import ModelDir
from pipeline.plan.placement import Cluster
from pipeline.settings import ModelSettings
from pipeline.stages.tokenizer import FastTokenizer, load_tokenizer

log = structlog.get_logger(__name__)
READ_TIMEOUT_S = 120.0


@ray.remote(num_cpus=0, max_retries=0)
def _read(path: str, name: str | None) -> ModelDir | str:
    try:
        return ModelDir.read(path, name)
    except ModelNotHere as exc:
        return str(exc)


@ray.remote(num_cpus=0, max_retries=0)
def _tokenizer(path: str, trust_remote_code: bool) -> FastTokenizer:
    return load_tokenizer(path, trust_remote_code)


def read_model_on_cluster(
    model: ModelSettings, cluster: Cluster, here: ModelNotHere, device: str
) -> tuple[ModelDir, FastTokenizer]:
    """The model and its tokenizer, read on the first node (of those that would host engines: GPU nodes for
    `device` cuda) that has `model.path`; ConfigError naming every node's answer when none has it."""
    driver = ray.get_runtime_context().get_node_id()
    candidates = [n for n in cluster.nodes if n.node_id != driver and (device != "cuda" or n.gpus > 0)]
    pending = {
        _read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(
            model.path, model.name
        ): n
        for n in candidates
    }
    answers: dict[str, str] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=READ_TIMEOUT_S)
        if not done:
            answers.update({n.address: f"no answer in {READ_TIMEOUT_S:g} s" for n in pending.values()})
            break
        node = pending.pop(done[0])
        try:
            found = ray.get(done[0])
        except ray.exceptions.RayError as exc:
            answers[node.address] = f"could not be asked ({type(exc).__name__})"
            continue
        if isinstance(found, str):
            answers[node.address] = found
            continue
        for ref in pending:
            ray.cancel(ref)
        log.info("model_read_on_node", node=node.address, model=found.model_id, reason="not on the driver's node")
        strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        loading = _tokenizer.options(scheduling_strategy=strategy).remote(str(found.path), model.trust_remote_code)
        try:
            return found, ray.get(loading)
        except ray.exceptions.RayTaskError as exc:  # the tokenizer's own message, not Ray's traceback around it
            if isinstance(exc.cause, ConfigError):
                raise ConfigError(str(exc.cause)) from None
            raise
    asked = "; ".join(f"{address}: {answer}" for address, answer in answers.items()) or "no other node to ask"
    which = "GPU nodes" if device == "cuda" else "nodes"
    msg = (
        f"no node of the cluster has the model: {here} (on the driver's node), and the {which} answered: {asked}. "
        f"Mount the model directory at {model.path} on the nodes that run engines (infra/README.md: the models "
        f"volume)"
    )
    raise ConfigError(msg)
