"""Where engines go, decided without a cluster: engines per GPU from the model's forward pass and the memory fit,
engines per node from each node's GPUs (a tensor-parallel group never spans nodes), what each engine reserves, and
refusals that name every node's GPUs instead of a placement Ray can never make."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.model_builders import TOKENIZER_FILES, minilm_dir
from benchmarks.model_configs import BERT_BASE, PHI3V, QWEN3
from pipeline.engine.vllm import engine_kwargs
from pipeline.errors import ConfigError
from pipeline.plan.compute import SATURATING_FORWARD_MS, forward_ms
from pipeline.plan.job import check_memory, place_engines, plan_lengths
from pipeline.plan.memory import GIB
from pipeline.plan.placement import (
    Cluster,
    Node,
    check_stage_room,
    choose_engines_per_device,
    engine_bundle,
    engines_per_node,
    lay_out,
    plan_partitions,
)
from pipeline.settings import Settings

pytestmark = pytest.mark.unit

H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_memory_bytes": 80 * GIB}


def model_dir(tmp_path, config: dict, name: str):
    """A model directory with `config` and MiniLM's tokenizer files, no weights (the planner counts from config)."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    for file in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / file, path / file)
    return path


def gpu_settings(path, run=None, **model) -> Settings:
    model = {"path": str(path), "device": "cuda", "dtype": "bfloat16", "max_num_batched_tokens": 8192, **model}
    return Settings(model=model, run=run or {})


def nodes(*gpus: float, cpus: float = 16, **device) -> Cluster:
    return Cluster(tuple(Node(f"n{i}", f"10.0.0.{i}", cpus, g, **device) for i, g in enumerate(gpus)))


def test_a_large_model_gets_one_engine_per_gpu_though_memory_fits_more(tmp_path):
    """The issue's case: the 4B default on an 80 GiB GPU fits several engines, but one fills the GPU."""
    phi3v = model_dir(tmp_path, PHI3V, "vlm2vec")
    settings = gpu_settings(phi3v)
    lengths = plan_lengths(settings)
    assert forward_ms(lengths.model.shape, 8192, 2000, 989.0) > SATURATING_FORWARD_MS  # ~63 ms at the H100 peak
    plan = place_engines(settings, lengths, nodes(1, **H100))
    assert plan.engine.engines_per_device == 1 and plan.actors == 1
    assert plan.placement.bundle == {"CPU": 1.0, "GPU": 1.0}
    assert any("one engine keeps the GPU busy" in n for n in plan.notes)
    four = place_engines(gpu_settings(phi3v, run={"engines_per_device": 4}), lengths, nodes(1, **H100))
    assert four.engine.engines_per_device == 4  # the memory does fit four: a setting may ask for them


def test_a_small_model_shares_a_gpu_as_its_forward_pass_and_the_memory_allow(tmp_path):
    bert = model_dir(tmp_path, BERT_BASE, "bert")
    settings = gpu_settings(bert, max_model_len=512)
    lengths = plan_lengths(settings)
    short = forward_ms(lengths.model.shape, 8192, lengths.chunk.max_tokens, 989.0)
    assert short < SATURATING_FORWARD_MS / 4  # ~1.6 ms: one engine would leave the GPU idle between passes
    plan = place_engines(settings, lengths, nodes(2, **H100))
    assert plan.engine.engines_per_device == 4 and plan.actors == 8  # the cap, on each of the two GPUs
    assert plan.placement.bundle == {"CPU": 1.0, "GPU": 0.25}
    assert engine_kwargs(plan.engine)["gpu_memory_utilization"] == pytest.approx(0.9 / 4)
    unknown_gpu = place_engines(settings, lengths, nodes(2, gpu_name="Acme X1", gpu_memory_bytes=80 * GIB))
    assert unknown_gpu.engine.engines_per_device == 1  # no peak to compute with: the safe default
    assert any("peak is unknown" in n for n in unknown_gpu.notes)


def test_a_mid_sized_model_gets_as_many_engines_as_fill_the_saturating_time(tmp_path):
    qwen = model_dir(tmp_path, QWEN3, "qwen3")
    settings = gpu_settings(qwen)
    lengths = plan_lengths(settings)
    ms = forward_ms(lengths.model.shape, 8192, lengths.chunk.max_tokens, 989.0)
    plan = place_engines(settings, lengths, nodes(1, **H100))
    expected = min(-(-SATURATING_FORWARD_MS // ms), 4)
    assert plan.engine.engines_per_device == expected == 3, ms  # 0.6B: ~9 ms a pass at 8,192 tokens


def test_actors_alone_never_leave_a_share_of_a_gpu_idle(tmp_path):
    """run.actors = 1 (as conf/gpu.toml had it) on a GPU that fits more: its engine takes the whole GPU and the whole
    memory share."""
    bert = model_dir(tmp_path, BERT_BASE, "bert")
    settings = gpu_settings(bert, run={"actors": 1}, max_model_len=512)
    plan = place_engines(settings, plan_lengths(settings), nodes(1, **H100))
    assert (plan.actors, plan.engine.engines_per_device, plan.placement.bundle["GPU"]) == (1, 1, 1.0)
    assert engine_kwargs(plan.engine)["gpu_memory_utilization"] == pytest.approx(0.9)
    three = gpu_settings(bert, run={"actors": 3}, max_model_len=512)
    plan = place_engines(three, plan_lengths(three), nodes(1, 1, **H100))
    assert (plan.actors, plan.engine.engines_per_device) == (3, 2)
    assert any("leaves part of a GPU idle" in n for n in plan.notes)


def test_the_device_memory_comes_from_the_probed_gpu_never_the_driver(tmp_path):
    bert = model_dir(tmp_path, BERT_BASE, "bert")
    settings = gpu_settings(bert, max_model_len=512)
    lengths = plan_lengths(settings)
    mixed = Cluster((Node("a", "a", 8, 1, "NVIDIA H100", 80 * GIB), Node("b", "b", 8, 1, "NVIDIA L4", 24 * GIB)))
    plan = place_engines(settings, lengths, mixed)
    assert plan.device_memory_bytes == 24 * GIB  # engines must fit the smallest GPU
    assert check_memory(settings, plan).per_rank["budget"] == int(24 * GIB * 0.9) // plan.engine.engines_per_device
    unread = place_engines(settings, lengths, nodes(1))
    assert unread.device_memory_bytes is None and unread.engine.engines_per_device == 1
    assert any("device memory unknown" in n for n in unread.notes)
    given = place_engines(gpu_settings(bert, max_model_len=512, device_memory_gib=40), lengths, nodes(1))
    assert given.device_memory_bytes == 40 * GIB


def test_tensor_parallel_engines_are_planned_per_node():
    assert lay_out(nodes(8, 8), "cuda", 3, 1, None).per_node == {"10.0.0.0": 2, "10.0.0.1": 2}  # floor(8 / 3)
    mixed = lay_out(nodes(1, 1, 2), "cuda", 2, 1, None)
    assert mixed.actors == 1 and mixed.per_node == {"10.0.0.0": 0, "10.0.0.1": 0, "10.0.0.2": 1}
    assert mixed.bundle == {"CPU": 3.0, "GPU": 2.0}  # the engine's process and one worker process per GPU


def test_a_plan_no_node_can_hold_is_refused_naming_every_nodes_gpus():
    with pytest.raises(ConfigError) as refused:
        lay_out(nodes(1, 1), "cuda", 2, 1, None)
    message = str(refused.value)
    assert "model.tensor_parallel_size=2" in message and "{CPU: 3, GPU: 2}" in message
    assert "10.0.0.0 1, 10.0.0.1 1" in message and "lower model.tensor_parallel_size to at most 1" in message
    with pytest.raises(ConfigError, match=r"add GPU nodes, or set model.device = cpu"):
        lay_out(nodes(0, 0), "cuda", 1, 1, None)
    with pytest.raises(ConfigError, match=r"needs 3 CPUs beside its GPUs.*10\.0\.0\.0 2 CPUs"):
        lay_out(nodes(2, cpus=2), "cuda", 2, 1, None)


def test_more_actors_than_the_nodes_hold_is_refused_with_the_capacity():
    with pytest.raises(ConfigError, match=r"run\.actors=5 .* nodes hold 10\.0\.0\.0 2, 10\.0\.0\.1 2.* at most 4"):
        lay_out(nodes(2, 2), "cuda", 1, 1, 5)
    assert lay_out(nodes(2, 2), "cuda", 1, 2, 5).actors == 5  # two per GPU hold eight


def test_what_each_engine_reserves():
    assert engine_bundle("cpu", 1, 1) == {"CPU": 1.0}
    assert engine_bundle("cpu", 1, 4) == {"CPU": 0.25}  # CPU engines split one CPU's worth; cores come from binding
    assert engine_bundle("cuda", 1, 4) == {"CPU": 1.0, "GPU": 0.25}  # each drives the GPU and runs a scheduler
    assert engine_bundle("cuda", 4, 1) == {"CPU": 5.0, "GPU": 4.0}
    assert lay_out(nodes(0), "cpu", 1, 2, None).actors == 2


def test_engines_per_device_rule():
    share = choose_engines_per_device(None, 4, "cuda", 1, fitting=9, cores=16, forward_ms=0.5)
    assert share.engines_per_device == 4 and "max_engines_per_device=4" in share.note
    assert choose_engines_per_device(None, 8, "cuda", 1, fitting=3, cores=16, forward_ms=0.5).engines_per_device == 3
    assert choose_engines_per_device(None, 8, "cuda", 1, fitting=9, cores=16, forward_ms=7.0).engines_per_device == 3
    assert choose_engines_per_device(None, 8, "cuda", 1, fitting=9, cores=16, forward_ms=25).engines_per_device == 1
    assert choose_engines_per_device(None, 4, "cuda", 1, fitting=None, cores=16).engines_per_device == 1
    assert choose_engines_per_device(None, 4, "cuda", 1, fitting=0, cores=16, forward_ms=0.5).engines_per_device == 1
    with pytest.raises(ConfigError, match=r"lower run\.engines_per_device to 2"):
        choose_engines_per_device(5, 8, "cuda", 1, fitting=2, cores=16)
    assert choose_engines_per_device(2, 8, "cuda", 1, fitting=2, cores=16).engines_per_device == 2


def test_tensor_parallel_engines_never_share():
    assert choose_engines_per_device(None, 4, "cuda", 2, fitting=9, cores=16, forward_ms=0.1).engines_per_device == 1
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        choose_engines_per_device(2, 4, "cuda", 2, fitting=9, cores=16)


def test_cpu_default_is_one_engine_and_more_engines_than_cores_is_refused():
    assert choose_engines_per_device(None, 4, "cpu", 1, fitting=None, cores=2).engines_per_device == 1
    assert choose_engines_per_device(2, 4, "cpu", 1, fitting=None, cores=2).engines_per_device == 2
    with pytest.raises(ConfigError, match="at most 2"):
        choose_engines_per_device(3, 4, "cpu", 1, fitting=None, cores=2)


def test_the_engines_arguments_per_device_and_tensor_parallel_size(tmp_path):
    phi3v = model_dir(tmp_path, {**PHI3V, "img_processor": {"name": "clip_vision_model"}}, "vlm2vec")
    bert = model_dir(tmp_path, BERT_BASE, "bert")
    on = {}
    for name, path, tp, gpus, run in (
        ("phi3v tp1", phi3v, 1, 1, {}),
        ("phi3v tp2", phi3v, 2, 2, {}),
        ("bert shared", bert, 1, 1, {"engines_per_device": 2}),
    ):
        settings = gpu_settings(path, run=run, tensor_parallel_size=tp, max_model_len=512 if path == bert else None)
        on[name] = engine_kwargs(place_engines(settings, plan_lengths(settings), nodes(gpus, **H100)).engine)
    assert on["phi3v tp1"]["distributed_executor_backend"] == "uni" and on["phi3v tp1"]["language_model_only"]
    assert (on["phi3v tp2"]["distributed_executor_backend"], on["phi3v tp2"]["tensor_parallel_size"]) == ("mp", 2)
    assert on["phi3v tp2"]["gpu_memory_utilization"] == pytest.approx(0.9)  # TP engines never share a GPU
    shared = on["bert shared"]
    assert shared["gpu_memory_utilization"] == pytest.approx(0.45) and "language_model_only" not in shared
    assert "kv_cache_memory_bytes" not in shared  # engines sharing a GPU start one after another instead


def test_engines_leave_the_other_stages_room_or_the_plan_says_so():
    """An engine on each of two 2-CPU nodes leaves a CPU on each: the chunk actors take half a CPU each, and the
    shuffle's tasks (a quarter CPU each, as the run sets them) run beside them."""
    two = nodes(0, 0, cpus=2)
    placement = lay_out(two, "cpu", 1, 1, 2)
    assert engines_per_node(two, placement, "cpu") == {"n0": 1, "n1": 1}
    check_stage_room(two, placement, "cpu", chunk_actors=3)
    with pytest.raises(ConfigError, match=r"after its 4 chunk actors take 0\.5 CPU each"):
        check_stage_room(two, placement, "cpu", chunk_actors=4)  # two on each node: no CPU left anywhere
    with pytest.raises(ConfigError) as refused:
        check_stage_room(two, lay_out(two, "cpu", 1, 1, 4), "cpu", chunk_actors=1)
    assert "10.0.0.0: 2 CPUs, 2 engines (2 CPUs), 0 free" in str(refused.value)
    assert "a node with 0.5 free CPU for its largest task (read 0.5)" in str(refused.value)
    one = nodes(0, cpus=2)  # one engine and the chunk actor on a 2-CPU node leave half a CPU: room for the shuffle
    check_stage_room(one, lay_out(one, "cpu", 1, 1, 1), "cpu", chunk_actors=1)
    with pytest.raises(ConfigError, match="no room"):
        check_stage_room(one, lay_out(one, "cpu", 1, 1, 1), "cpu", chunk_actors=2)
    # infra/kuberay's shape: a head with 0 CPUs takes no stage, however many the plan puts on the worker
    kuberay = Cluster((Node("head", "10.0.0.1", 0, 0), Node("worker", "10.0.0.2", 2, 0)))
    check_stage_room(kuberay, lay_out(kuberay, "cpu", 1, 1, 1), "cpu", chunk_actors=1)
    with pytest.raises(ConfigError) as refused:
        check_stage_room(kuberay, lay_out(kuberay, "cpu", 1, 1, 1), "cpu", chunk_actors=2)
    assert "10.0.0.1: 0 CPUs, 0 engines (0 CPUs), 0 free; 10.0.0.2: 2 CPUs, 1 engines" in str(refused.value)
    local = Cluster.one_node(0, 2)  # the same machine as the local Ray a job starts: one logical CPU more
    check_stage_room(local, lay_out(local, "cpu", 1, 1, 1), "cpu", chunk_actors=1)
    gpu_pods = nodes(8, 8, cpus=8)  # 8 GPUs and 8 CPUs a node: eight one-CPU engines would take every CPU
    with pytest.raises(ConfigError, match="no room"):
        check_stage_room(gpu_pods, lay_out(gpu_pods, "cuda", 1, 1, None), "cuda", chunk_actors=1)


def test_unset_actors_are_capped_to_leave_room_and_set_ones_are_refused(tmp_path):
    bert = model_dir(tmp_path, BERT_BASE, "bert")
    settings = gpu_settings(bert, run={"engines_per_device": 1}, max_model_len=512)
    plan = place_engines(settings, plan_lengths(settings), nodes(4, cpus=4, **H100))
    assert plan.actors == 3 and any("3 engines, not 4: the rest of the run needs CPUs" in n for n in plan.notes)
    pinned = gpu_settings(bert, run={"engines_per_device": 1, "actors": 4}, max_model_len=512)
    with pytest.raises(ConfigError, match="the engines leave the other stages no room"):
        place_engines(pinned, plan_lengths(pinned), nodes(4, cpus=4, **H100))


def test_a_lost_nodes_engines_hold_nothing_and_ray_data_may_use_the_rest():
    from pipeline.plan.placement import held_by_engines

    bundle = {"CPU": 1.0, "GPU": 0.5}
    assert held_by_engines(bundle, ["a", "b", "b"], alive={"a", "b"}) == {"CPU": 3.0, "GPU": 1.5}
    assert held_by_engines(bundle, ["a", "b", "b"], alive={"a"}) == {"CPU": 1.0, "GPU": 0.5}
    assert held_by_engines({"CPU": 0.5}, ["a"], alive=set()) == {"CPU": 0.0, "GPU": 0.0}


def test_min_engines_above_the_planned_engines_is_refused(tiny_model_path):
    settings = Settings(model={"path": str(tiny_model_path), "device": "cpu"}, run={"actors": 2, "min_engines": 3})
    with pytest.raises(ConfigError, match=r"run.min_engines=3 is more than the 2 engines"):
        place_engines(settings, plan_lengths(settings), nodes(0, 0, cpus=4))


def test_gpu_nodes_with_a_driver_too_old_for_the_images_cuda_are_refused_by_name(tiny_model_path):
    settings = Settings(model={"path": str(tiny_model_path), "device": "cuda"})
    old = Node("n1", "10.0.0.9", 8, 1, driver_version="550.54.15", **H100)
    new = Node("n0", "10.0.0.8", 8, 1, driver_version="580.65.06", **H100)
    with pytest.raises(ConfigError, match=r"older than 580\.0.*: 10\.0\.0\.9 driver 550\.54\.15; upgrade") as refused:
        place_engines(settings, plan_lengths(settings), Cluster((new, old)))
    assert "10.0.0.8" not in str(refused.value)
    place_engines(settings, plan_lengths(settings), Cluster((new,)))  # unread drivers are not refused either
    place_engines(settings, plan_lengths(settings), Cluster((Node("n2", "10.0.0.7", 8, 1, **H100),)))


def test_chunk_actors_keep_the_engines_fed_as_far_as_the_cpus_beside_them_allow(tmp_path):
    """A 4B model on 64 GPUs embeds millions of tokens a second (FLOP rule): it wants chunk actors by the ratio of
    the engines' expected rate to one chunk actor's, and gets what the nodes' spare CPUs hold; the plan says so."""
    from pipeline.plan.chunk_actors import CHUNK_TOKENS_PER_S, chunk_actors_for, engines_tokens_per_s

    phi3v = model_dir(tmp_path, PHI3V, "vlm2vec")
    settings = gpu_settings(phi3v)
    lengths = plan_lengths(settings)
    rate = engines_tokens_per_s(lengths.model.shape, lengths.chunk.max_tokens, 64, 989.0)
    wanted = chunk_actors_for(rate)
    assert rate > 2e6 and wanted == -(-rate // CHUNK_TOKENS_PER_S) > 5
    eight = (8,) * 8
    roomy = place_engines(settings, lengths, nodes(*eight, cpus=64, **H100))  # 56 spare CPUs a node
    assert roomy.actors == 64 and roomy.chunk_actors == wanted
    assert any(n.startswith(f"chunk_actors {wanted}: the engines' expected") for n in roomy.notes)
    tight = place_engines(settings, lengths, nodes(*eight, cpus=8.5, **H100))  # half a CPU spare a node
    assert tight.chunk_actors == 7 < wanted and any("the CPUs beside the engines hold 7" in n for n in tight.notes)
    assert place_engines(gpu_settings(phi3v, run={"chunk_actors": 2}), lengths, nodes(8, **H100)).chunk_actors == 2
    on_cpu = Settings(model={"path": str(phi3v), "device": "cpu"})
    assert place_engines(on_cpu, lengths, nodes(0, cpus=4)).chunk_actors == 1


def test_the_plans_shuffle_has_a_partition_per_block_at_most_the_cpus_and_64():
    assert plan_partitions(None, cpus=18, blocks=1) == 1  # one small file: one reduce task, not 18
    assert plan_partitions(None, cpus=18, blocks=5) == 5
    assert plan_partitions(None, cpus=18, blocks=4000) == 18
    assert plan_partitions(None, cpus=1024, blocks=4000) == 64
    assert plan_partitions(None, cpus=0, blocks=3) == 1  # a head of 0 CPUs before its workers joined
    assert plan_partitions(None, cpus=8, blocks=0) == 1  # nothing to read
    assert plan_partitions(7, cpus=2, blocks=1) == 7  # run.plan_partitions decides when set
