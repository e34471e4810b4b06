"""The per-process CPU table from recorded samples: roles from process titles, CPU inside the window only, a
worker's CPU counted for what it ran."""

from __future__ import annotations

import pytest

from benchmarks.cpu_use import Sample, cpu_by_role, role_of

pytestmark = pytest.mark.unit


def test_roles_from_ray_process_titles():
    assert role_of("ray::EngineActor.embed", 7, 1) == "engine actors"
    assert role_of("ray::MapWorker(MapBatches(EngineFeeder))", 7, 1) == "engine feeders"
    assert role_of("ray::MapWorker(MapBatches(ChunkActor))", 7, 1) == "chunk actors"
    assert role_of("ray::MapBatches(_write)", 7, 1) == "write tasks"
    assert role_of("/x/ray/core/src/ray/raylet/raylet --node_id=...", 7, 1) == "raylet"
    assert role_of("/x/ray/core/src/ray/gcs/gcs_server --port 0", 7, 1) == "Ray GCS"
    assert role_of("python -u /x/ray/dashboard/agent.py --node-ip-address=...", 7, 1) == "dashboard agent"
    assert role_of("ray::IDLE", 7, 1) == "idle Ray workers"
    assert role_of("ray::DashboardAgent", 7, 1) == "dashboard agent"  # Ray renames its agents' processes
    assert role_of("ray::RuntimeEnvAgent", 7, 1) == "runtime-env agent"
    assert role_of("ray::ActorLocationTracker", 7, 1) == "Ray Data coordinator actors"
    assert role_of("python -m benchmarks.bench", 1, 1) == "driver"
    assert role_of("sleep 5", 7, 1) == "other processes"


def test_cpu_is_counted_inside_the_window_in_proportion():
    samples = [Sample(t, 10, "raylet", cpu) for t, cpu in [(0, 0.0), (10, 2.0), (20, 4.0)]]
    table = cpu_by_role(samples, start=5, end=15)
    assert table["raylet"]["cpu_s"] == pytest.approx(2.0)  # half of each 2-second interval
    assert table["raylet"]["processes"] == 1
    assert cpu_by_role(samples, start=30, end=40) == {}


def test_a_worker_that_changes_task_counts_for_each_role_it_held():
    samples = [
        Sample(0, 5, "idle Ray workers", 0.0),
        Sample(1, 5, "write tasks", 0.8),
        Sample(2, 5, "idle Ray workers", 0.9),
    ]
    samples += [Sample(0, 6, "engine actors", 10.0), Sample(2, 6, "engine actors", 12.0)]
    table = cpu_by_role(samples, start=0, end=2)
    assert table["write tasks"]["cpu_s"] == pytest.approx(0.8)
    assert table["idle Ray workers"]["cpu_s"] == pytest.approx(0.1)
    assert table["engine actors"]["cpu_s"] == pytest.approx(2.0)


def test_the_sampler_sees_this_process_and_a_child(tmp_path):
    import subprocess
    import sys
    import time

    from benchmarks.cpu_use import CpuSampler

    with CpuSampler(interval_s=0.1) as sampler:
        child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"])
        child.wait()
        time.sleep(0.15)
    table = cpu_by_role(sampler.samples, 0, time.time())
    assert table["other processes"]["cpu_s"] > 0.1  # the busy child, sampled while it ran
    assert "driver" in {s.role for s in sampler.samples}
