"""What can be checked about infra/ without a cluster: manifests parse, their entrypoints name modules and
config files that exist and load, versions agree with pyproject.toml, GPU requests agree with the config's
tensor-parallel size, and the head's services stay inside the cluster."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from pipeline import __version__
from pipeline.settings import load_settings
from tests.support.manifests import INFRA, MANIFESTS, cluster_specs, docs

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = (REPO / "pyproject.toml").read_text()
RAY_PIN = re.search(r'"ray\[[\w,]+\]==([\d.]+)"', PYPROJECT).group(1)
REQUIRES_PYTHON = SpecifierSet(re.search(r'requires-python = "([^"]+)"', PYPROJECT).group(1))


def entrypoints() -> list[tuple[str, str]]:
    found = []
    for path in MANIFESTS:
        for doc in docs(path):
            if doc.get("kind") == "RayJob":
                found.append((path.name, doc["spec"]["entrypoint"]))
            for container in _containers(doc):
                command = " ".join(container.get("command", []) + container.get("args", []))
                if "jobs." in command:
                    found.append((path.name, command))
    for path in sorted((INFRA / "schedule").glob("*.service")):
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                found.append((path.name, line.removeprefix("ExecStart=").split(" -- ", 1)[-1]))
    return found


def _containers(doc: dict) -> list[dict]:
    text = yaml.safe_dump(doc)
    if "containers" not in text:
        return []
    stack, out = [doc], []
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.extend(node.get("containers", []) if isinstance(node.get("containers"), list) else [])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def test_manifests_parse_and_there_are_some():
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-ingest.yaml"}
    for path in MANIFESTS:
        assert docs(path), path


@pytest.mark.parametrize(("where", "command"), entrypoints())
def test_entrypoints_name_modules_and_configs_that_exist(where, command):
    args = shlex.split(command)
    module = args[args.index("-m") + 1]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{where}: no module {module}"
    config = args[args.index("--config") + 1]
    assert (REPO / config).is_file(), f"{where}: no config {config}"
    settings = load_settings(REPO / config)  # validates every field of the file
    assert settings.input.paths


def test_ray_python_and_project_versions_agree_with_pyproject():
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == RAY_PIN, name
    gpu_from = re.search(
        r"^FROM rayproject/ray:([\d.]+)-py(\d)(\d+)-", (INFRA / "docker/Dockerfile.gpu").read_text(), re.M
    )
    assert gpu_from.group(1) == RAY_PIN
    python = f"{gpu_from.group(2)}.{gpu_from.group(3)}"
    cpu_from = re.search(r"^FROM python:(\d+\.\d+)", (INFRA / "docker/Dockerfile.cpu").read_text(), re.M)
    for version in (python, cpu_from.group(1)):
        assert version + ".0" in REQUIRES_PYTHON, version
    for path in MANIFESTS:
        for doc in docs(path):
            for container in _containers(doc):
                assert container["image"].endswith(f":{__version__}"), (path.name, container["image"])


def test_gpu_requests_agree_with_tensor_parallel_size_and_the_plan_uses_every_gpu():
    from pipeline.plan.chunk_plan import ChunkPlan
    from pipeline.plan.job import LengthPlan, place_engines
    from pipeline.plan.model_dir import ModelDir, ModelLimits, Pooling
    from pipeline.plan.placement import Cluster, Node

    settings = load_settings(REPO / "conf/cluster.toml")
    m = settings.model
    tp = m.tensor_parallel_size
    chunk = ChunkPlan(settings.chunk.tokens, settings.chunk.overlap_tokens, settings.chunk.boundary_window, m.name)
    # the cluster's model directory is not on this machine: the placement needs only its id
    unread = ModelLimits("unknown", None, None, None)
    model = ModelDir(Path(m.path), m.name, {}, unread, Pooling("mean", True, False), None, "", ships_code=False)
    lengths = LengthPlan(model, m.max_model_len, chunk, allow_long_max_model_len=False)
    for name, spec in cluster_specs():
        pods = []
        for group in spec["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                requests, limits = container["resources"]["requests"], container["resources"]["limits"]
                gpus = int(requests.get("nvidia.com/gpu", 0))
                assert gpus == int(limits.get("nvidia.com/gpu", 0)), name
                assert gpus >= tp and gpus % tp == 0, f"{name}: {gpus} GPUs per pod for tensor_parallel_size {tp}"
                pods += [
                    Node(f"{group['groupName']}-{i}", "pod", int(requests["cpu"]), gpus)
                    for i in range(group["replicas"])
                ]
        total_gpus = sum(pod.gpus for pod in pods)
        plan = place_engines(settings, lengths, Cluster(tuple(pods)))
        assert plan.engine.device == "cuda", name
        assert plan.actors * tp == total_gpus * plan.engine.engines_per_device, (
            f"{name}: a requested GPU runs no engine"
        )


def test_head_runs_no_work_and_is_not_exposed():
    for name, spec in cluster_specs():
        head = spec["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP", name  # set, not KubeRay's default: never a public address
        assert head["rayStartParams"].get("num-cpus") == "0", name
        # set, not defaulted: the dashboard (the job submission API) listens on the pod's network, reached through
        # that ClusterIP service only
        assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", name
        for container in _containers(head):
            for port in container.get("ports", []):
                assert "hostPort" not in port, name


def test_every_pod_of_a_cluster_reaches_the_store_authenticates_and_gpu_pods_keep_a_compile_cache():
    for name, spec in cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for container in _containers(group):
                secrets = {s["secretRef"]["name"] for s in container.get("envFrom", [])}
                assert {"embedpipe-object-store", "embedpipe-ray-token"} <= secrets, (name, container["name"])
                if "nvidia.com/gpu" not in container["resources"]["requests"]:
                    continue
                env = {e["name"]: e["value"] for e in container.get("env", [])}
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
                for variable in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"):
                    root = next((p for p in mounts if env[variable].startswith(p + "/")), None)
                    assert root, f"{name}: {variable}={env[variable]} is not on a mounted volume"
                    assert "persistentVolumeClaim" in volumes[mounts[root]], f"{name}: {variable} dies with the pod"


def test_the_gpu_image_pins_the_torch_that_vllm_runs_on():
    dockerfile = (INFRA / "docker/Dockerfile.gpu").read_text()
    assert '"torch==2.13.0"' in dockerfile and "torch.version.cuda" in dockerfile
    assert re.search(r"driver >= \d{3}", dockerfile)
    assert '"vllm==0.32.0"' in PYPROJECT


def test_the_alert_rules_and_the_dashboard_use_only_metrics_a_run_exports():
    from pipeline.run import live_metrics, pushed_metrics

    monitoring = REPO / "infra" / "monitoring"
    plain = yaml.safe_load((monitoring / "embedpipe-alerts.yml").read_text())
    operator = yaml.safe_load((monitoring / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule" and operator["spec"]["groups"] == plain["groups"]
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"]}
    assert alerts == {"EmbedpipeIngestionFailed", "EmbedpipeStoreStale", "EmbedpipeRejectsHigh", "EmbedpipeSlowRun"}
    dashboard = json.loads((monitoring / "grafana-dashboard.json").read_text())
    exprs = [r["expr"] for g in plain["groups"] for r in g["rules"]]
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(?:ray_)?embedpipe_\w+", e)}
    pushed = {pushed_metrics.PREFIX + name for name in pushed_metrics.GAUGES}
    suffix = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    live = {f"ray_{live_metrics.PREFIX}{n}{end}" for n, m in live_metrics.LIVE.items() for end in suffix[m.kind]}
    assert used & pushed and used & live and used <= pushed | live, used - pushed - live
