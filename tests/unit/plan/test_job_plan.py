from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.errors import ConfigError
from pipeline.plan.job import place_engines, plan_lengths
from pipeline.plan.placement import Cluster
from pipeline.settings import Settings
from tests.support.plans import plan_on_one_node

pytestmark = pytest.mark.unit


def settings(model_path, chunk=None, **model):
    return Settings(model={"path": str(model_path), **model}, chunk=chunk or {})


def test_minilm_serving_limit_lowers_the_default_chunk_size_and_says_so(minilm_path):
    plan = plan_on_one_node(settings(minilm_path), num_special_tokens=2, gpus=0, cpus=2)
    assert plan.engine.max_model_len == 256  # sentence_bert_config.json max_seq_length, below its 512 positions
    assert plan.chunk.max_tokens == 255  # max_model_len - 1
    assert any("lowered from 2000 to 255" in n for n in plan.notes)
    assert any("serving limit (max_seq_length 256 in sentence_bert_config.json" in n for n in plan.notes)
    assert not plan.engine.allow_long_max_model_len  # vLLM serves 256 on its own
    assert plan.engine.device == "cpu" and plan.actors == 1 and plan.engine.cpu_threads == 2


def test_going_past_the_serving_limit_needs_the_opt_in(minilm_path):
    with pytest.raises(
        ConfigError,
        match=r"max_model_len=512 is past the 256 tokens the model is served at.*"
        r"allow_long_max_model_len = true",
    ):
        plan_on_one_node(settings(minilm_path, max_model_len=512), 2, 0, 2)
    explicit = plan_on_one_node(settings(minilm_path, max_model_len=512, allow_long_max_model_len=True), 2, 0, 2)
    default = plan_on_one_node(settings(minilm_path, allow_long_max_model_len=True), 2, 0, 2)
    assert explicit.engine.max_model_len == default.engine.max_model_len == 512  # up to the positions
    assert explicit.engine.allow_long_max_model_len and default.engine.allow_long_max_model_len
    assert any("allow_long_max_model_len: past max_seq_length 256" in n for n in default.notes)


def test_a_tokenizer_limit_below_the_positions_is_the_serving_limit(tiny_model_path, tmp_path):
    import json
    import shutil

    model = shutil.copytree(tiny_model_path, tmp_path / "m")
    (model / "sentence_bert_config.json").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 1024}))
    plan = plan_on_one_node(settings(model), 2, 0, 2)
    assert plan.engine.max_model_len == 1024 and plan.chunk.max_tokens == 1023
    assert any("model_max_length 1024 in tokenizer_config.json" in n for n in plan.notes)
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 1e30}))  # "none stated"
    assert plan_on_one_node(settings(model), 2, 0, 2).engine.max_model_len == 2001  # chunk.tokens + 1, below 4096


def test_max_model_len_defaults_to_chunk_plus_one_below_the_model_limit(tiny_model_path):
    plan = plan_on_one_node(settings(tiny_model_path), num_special_tokens=2, gpus=0, cpus=2)
    assert (plan.engine.max_model_len, plan.chunk.max_tokens) == (2001, 2000)
    assert any("instead of the model's serving limit (max_seq_length 4096" in n for n in plan.notes)


def test_explicit_chunk_size_that_does_not_fit_is_refused(minilm_path):
    with pytest.raises(
        ConfigError, match=r"chunk.tokens=600 does not fit model.max_model_len=256.*lower chunk.tokens"
    ):
        plan_on_one_node(settings(minilm_path, chunk={"tokens": 600}), 2, 0, 2)


def test_max_model_len_above_the_model_is_refused_unless_allowed(minilm_path):
    with pytest.raises(ConfigError, match="exceeds the model's limit of 512"):
        plan_on_one_node(settings(minilm_path, max_model_len=1024), 2, 0, 2)
    plan = plan_on_one_node(settings(minilm_path, max_model_len=1024, allow_long_max_model_len=True), 2, 0, 2)
    assert plan.engine.max_model_len == 1024


def test_batched_tokens_below_max_model_len_is_refused(tiny_model_path):
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens=1024 is below model.max_model_len=2001"):
        plan_on_one_node(settings(tiny_model_path, max_num_batched_tokens=1024), 2, 0, 2)


def test_gpu_actors_follow_the_gpus_and_tensor_parallel_size(tiny_model_path):
    plan = plan_on_one_node(settings(tiny_model_path, tensor_parallel_size=2), 2, gpus=8, cpus=64)
    assert (plan.engine.device, plan.actors) == ("cuda", 4)
    with pytest.raises(ConfigError, match=r"run\.actors=4 engines of \{CPU: 3, GPU: 2\} do not fit.* at most 2"):
        plan_on_one_node(
            Settings(model={"path": str(tiny_model_path), "tensor_parallel_size": 2}, run={"actors": 4}),
            2,
            gpus=4,
            cpus=64,
        )


def test_missing_model_directory_or_tokenizer(tmp_path):
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        plan_on_one_node(settings(tmp_path / "nope"), 2, 0, 2)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 512}')
    with pytest.raises(ConfigError, match="has no tokenizer files"):
        plan_on_one_node(settings(tmp_path), 2, 0, 2)


def test_model_that_ships_its_own_code_needs_trust_remote_code(tiny_model_path, tmp_path):
    import json
    import shutil

    model = tmp_path / "remote"
    shutil.copytree(tiny_model_path, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="acme-embedder", architectures=["AcmeModel"], auto_map={"AutoModel": "acme.AcmeModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "acme.py").write_text("raise RuntimeError('remote code ran')\n")
    with pytest.raises(ConfigError, match=r"ships its own code .* set model.trust_remote_code = true"):
        plan_on_one_node(settings(model), 2, 0, 2)
    assert settings(model).model.trust_remote_code is False  # off unless a config turns it on


def test_a_model_that_cannot_fit_the_device_is_refused_with_advice(tiny_model_path):
    from pipeline.plan.job import check_memory
    from pipeline.plan.memory import GIB

    s = Settings(model={"path": str(tiny_model_path), "device": "cuda", "dtype": "float32"})
    plan = plan_on_one_node(s, 2, gpus=1, cpus=8)
    memory = check_memory(s, replace(plan, device_memory_bytes=2 * GIB))
    assert memory.fits is True and memory.weight_bytes == 4_713_088 * 4
    with pytest.raises(ConfigError, match=r"does not fit: each engine needs 0\.\d\d GiB .* gets 0\.\d\d GiB"):
        check_memory(s, replace(plan, device_memory_bytes=GIB // 2))
    unknown = check_memory(s, replace(plan, device_memory_bytes=None))
    assert unknown.fits is None and any("device memory unknown" in w for w in unknown.warnings)


def test_a_last_token_pooling_decoder_may_have_a_budget_below_max_model_len(tmp_path):
    from benchmarks.model_builders import build_tiny_qwen3

    model = build_tiny_qwen3(tmp_path / "qwen")
    plan = plan_on_one_node(settings(model, max_model_len=2048, max_num_batched_tokens=512), 2, 0, 2)
    assert plan.engine.max_model_len == 2048
    assert any("splits longer prompts" in n for n in plan.notes)


def test_eager_by_default_on_cpu_only_and_the_compile_cache_that_loads(minilm_path):
    from pipeline.engine.vllm import engine_environment, engine_kwargs

    cpu = plan_on_one_node(settings(minilm_path), 2, gpus=0, cpus=2)
    gpu = plan_on_one_node(settings(minilm_path), 2, gpus=1, cpus=8)
    compiled = plan_on_one_node(settings(minilm_path, enforce_eager=False), 2, gpus=0, cpus=2)
    assert engine_kwargs(cpu.engine)["enforce_eager"] is True and any("enforce_eager on" in n for n in cpu.notes)
    assert engine_kwargs(gpu.engine)["enforce_eager"] is False and not any("enforce_eager" in n for n in gpu.notes)
    assert engine_kwargs(compiled.engine)["enforce_eager"] is False
    for env in (engine_environment(compiled.engine), engine_environment(gpu.engine)):  # the same load path
        assert env["VLLM_USE_AOT_COMPILE"] == "0" and env["VLLM_NO_USAGE_STATS"] == "1"
    # Inductor's compile workers: the engine's share of the node's 8 CPUs
    assert engine_environment(gpu.engine)["TORCHINDUCTOR_COMPILE_THREADS"] == str(8 // gpu.actors)


def test_chunk_room_counts_the_tokenizers_special_tokens(minilm_path):
    chunk = {"tokens": 200, "overlap_tokens": 99}
    assert (
        plan_on_one_node(settings(minilm_path, chunk=chunk), num_special_tokens=1, gpus=0, cpus=2).chunk.max_tokens
        == 200
    )
    with pytest.raises(ConfigError, match=r"overlap_tokens=99 leaves no room: chunks hold 198 tokens besides the 2 "):
        plan_on_one_node(settings(minilm_path, chunk=chunk), num_special_tokens=2, gpus=0, cpus=2)


def test_engines_share_a_gpu_as_the_memory_planner_fits_them(minilm_path):
    from pipeline.plan.memory import PlanRequest, engines_that_fit

    settings = Settings(
        model={"path": str(minilm_path), "gpu_memory_utilization": 0.5}, run={"max_engines_per_device": 64}
    )
    lengths = plan_lengths(settings)
    fit = engines_that_fit(
        lengths.model.config,
        PlanRequest(max_model_len=lengths.max_model_len, gpu_memory_utilization=0.5, device_memory_bytes=8 * 2**30),
        lengths.model.checkpoint,
    )
    gpu = {"gpu_name": "NVIDIA H100 80GB HBM3"}  # MiniLM's forward pass is ~0.4 ms there: one engine idles it
    plan = place_engines(settings, lengths, Cluster.one_node(1, 8, gpu_memory_bytes=8 * 2**30, **gpu))
    assert plan.engine.device == "cuda" and plan.engine.engines_per_device == plan.actors == fit > 1
    small = place_engines(settings, lengths, Cluster.one_node(1, 8, gpu_memory_bytes=2 * 2**30, **gpu))
    assert 1 <= small.engine.engines_per_device < fit
