"""The values an engine starts with, resolved on the driver before any engine exists. No ray or vllm imports."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.settings import ModelSettings


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs, resolved on the driver: the values it starts with and nothing else."""

    model_dir: str
    max_model_len: int
    max_num_batched_tokens: int
    device: str
    """'cpu' or 'cuda' ('auto' resolved against the cluster)."""
    cpu_threads: int
    allow_long_max_model_len: bool
    engine_log_level: str
    dtype: str = "auto"
    """As set; 'auto' is vLLM's choice from the checkpoint."""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = True
    trust_remote_code: bool = False
    engines_per_device: int = 1
    """Engines sharing this engine's GPU or CPU node."""
    language_model_only: bool = False
    """The model has encoders besides the text one (vision, audio) that vLLM should not build: only token ids
    are ever sent."""
    embedder: str = "vllm"
    """model.embedder: which class hosts the engine (see pipeline.engine.factory)."""

    @classmethod
    def resolve(cls, model: ModelSettings, *, device: str, **resolved) -> EngineSpec:
        """The spec for `model`'s settings on `device`, with the values the planner resolved (`model_dir`,
        `max_model_len`, `cpu_threads`, ...)."""
        return cls(
            device=device,
            max_num_batched_tokens=model.max_num_batched_tokens,
            dtype=model.dtype,
            tensor_parallel_size=model.tensor_parallel_size,
            gpu_memory_utilization=model.gpu_memory_utilization,
            enforce_eager=eager(model.enforce_eager, device),
            trust_remote_code=model.trust_remote_code,
            embedder=model.embedder,
            **resolved,
        )


def eager(setting: bool | None, device: str) -> bool:
    """model.enforce_eager resolved: unset means eager on the CPU backend only."""
    return device == "cpu" if setting is None else setting
