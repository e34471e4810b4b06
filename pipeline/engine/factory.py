"""Which class hosts an engine (model.embedder): vLLM, or a class the settings name, such as the stand-in that
tests place on a cluster of logical GPUs. No ray or vllm imports."""

from __future__ import annotations

import importlib

from pipeline.engine.vllm import VllmEmbedder
from pipeline.errors import ConfigError
from pipeline.plan.engine_spec import EngineSpec
from pipeline.stages.embed import Embedder


def make_embedder(spec: EngineSpec, slot: int | None = None) -> Embedder:
    """The engine for `spec`, started: `slot` is its place among the engines sharing its node or GPU."""
    if spec.embedder == "vllm":
        return VllmEmbedder(spec, slot)
    module_name, _, class_name = spec.embedder.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        msg = f"model.embedder={spec.embedder!r} names no class ({exc}); use 'vllm' or 'module:Class'"
        raise ConfigError(msg) from None
    return cls(spec, slot)
