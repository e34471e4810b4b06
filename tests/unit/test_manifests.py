"""Every Kubernetes manifest of infra/ against its schema, strictly (a misspelled or misplaced field fails): the core
kinds with kubernetes-validate's schemas of the Kubernetes API, KubeRay's RayCluster and RayJob with the CRDs of
ray-operator v1.5.0 and PrometheusRule with prometheus-operator's (tests/schemas/, each naming its source); then
what a schema cannot see: every claim a pod mounts is defined, the pod that runs the driver has what the driver
reads, the entrypoint's module and config are in the image, and the images and pods set what the engines expect."""

from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.settings import load_settings
from tests.support.manifests import cluster_spec, cluster_specs, kubernetes_documents

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests/schemas"
KUBERNETES = "1.33"
IMAGE_APP = "/app"
"""Where the images put the project (their WORKDIR), and the RayJob's working_dir."""


def _strict(schema):
    """The CRD's schema as kubeconform's --strict reads it: an object with listed properties takes no others."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_schemas() -> dict[str, dict]:
    found = {}
    for path in SCHEMAS.glob("*.json.gz"):
        crd = json.loads(gzip.decompress(path.read_bytes()))
        found[f"{crd['group']}/{crd['version']}:{crd['kind']}"] = _strict(crd["openAPIV3Schema"])
    return found


CRDS = crd_schemas()


@pytest.mark.parametrize(("where", "doc"), kubernetes_documents(), ids=[w for w, _ in kubernetes_documents()])
def test_every_manifest_passes_its_schema(where, doc):
    key = f"{doc['apiVersion']}:{doc['kind']}"
    if key in CRDS:
        errors = sorted(jsonschema.Draft7Validator(CRDS[key]).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{where}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
        for template in _pod_templates(doc):  # the pods in full, as the Kubernetes API checks them
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_catches_a_misspelled_field():
    [(_, job)] = [(w, d) for w, d in kubernetes_documents() if d["kind"] == "RayJob"]
    job = {**job, "spec": {**job["spec"], "activeDeadlineSecond": 60}}
    assert list(jsonschema.Draft7Validator(CRDS["ray.io/v1:RayJob"]).iter_errors(job))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "x"},
                "spec": {"acessModes": []},
            },
            KUBERNETES,
            strict=True,
        )


def test_every_claim_a_pod_mounts_is_defined():
    defined = {d["metadata"]["name"]: d for _, d in kubernetes_documents() if d["kind"] == "PersistentVolumeClaim"}
    for where, doc in kubernetes_documents():
        for template in _pod_templates(doc):
            for volume in template["spec"].get("volumes", []):
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim:
                    assert claim in defined, f"{where}: volume {volume['name']} mounts undefined claim {claim}"
    assert defined["embedding-models"]["spec"]["accessModes"] == ["ReadOnlyMany"]  # every GPU pod reads it
    assert defined["embedpipe-compile-cache"]["spec"]["accessModes"] == ["ReadWriteMany"]  # every GPU pod writes it


def test_the_pod_that_runs_the_driver_has_what_the_driver_reads():
    """A RayJob's driver and a `ray job submit` run on the head: it reads the config from the image, the inputs and
    the store through the object-store secret, and the model's small files from a read-only mount of the models
    claim at model.path (or, without one, on a GPU worker: tests/ray/test_kuberay_shape.py)."""
    settings = load_settings(REPO / "conf/cluster.toml")
    for where, spec in cluster_specs():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", where
        [container] = head["template"]["spec"]["containers"]
        secrets = {s["secretRef"]["name"] for s in container.get("envFrom", [])}
        assert {"embedpipe-object-store", "embedpipe-ray-token"} <= secrets, where
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        [model_mount] = [m for path, m in mounts.items() if settings.model.path.startswith(path + "/")]
        assert model_mount["readOnly"], where
        volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
        assert volumes[model_mount["name"]]["persistentVolumeClaim"]["claimName"] == "embedding-models"
        for group in spec["workerGroupSpecs"]:
            [worker] = group["template"]["spec"]["containers"]
            assert any(settings.model.path.startswith(m["mountPath"] + "/") for m in worker["volumeMounts"]), where


def test_the_entrypoints_module_and_config_are_in_the_image():
    copied = _image_paths(REPO / "infra/docker/Dockerfile.gpu")
    for where, doc in kubernetes_documents():
        if doc["kind"] != "RayJob":
            continue
        args = shlex.split(doc["spec"]["entrypoint"])
        module = args[args.index("-m") + 1].replace(".", "/") + ".py"
        config = args[args.index("--config") + 1]
        for path in (module, config):
            assert any(path == c or path.startswith(c + "/") for c in copied), f"{where}: {path} not in the image"
            assert (REPO / path).is_file(), path
        assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["working_dir"] == IMAGE_APP


def test_the_images_and_the_gpu_pods_set_what_the_engines_expect():
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        text = (REPO / "infra/docker" / dockerfile).read_text()
        env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.+)$", text, re.M))))
        assert env.get("VLLM_NO_USAGE_STATS") == "1" and env.get("HF_HUB_OFFLINE") == "1", dockerfile
        assert re.search(rf"^WORKDIR {IMAGE_APP}$", text, re.M), dockerfile
    for where, spec in cluster_specs():
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            [worker] = pod["containers"]
            env = {e["name"]: e.get("value") for e in worker.get("env", [])}
            assert env.get("VLLM_NO_USAGE_STATS") == "1", where
            assert env["VLLM_CACHE_ROOT"].startswith("/cache/") and env["TORCHINDUCTOR_CACHE_DIR"].startswith(
                "/cache/"
            )
            assert any(m["mountPath"] == "/cache" for m in worker["volumeMounts"]), where
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"], where


def test_a_rayjob_cannot_hold_a_head_forever_and_a_scaling_cluster_has_an_autoscaler():
    for where, doc in kubernetes_documents():
        if doc["kind"] == "RayJob":
            assert 0 < doc["spec"]["activeDeadlineSeconds"] <= 7 * 24 * 3600 and doc["spec"]["backoffLimit"] >= 0
        if doc["kind"] == "RayCluster" and any(g.get("minReplicas", 1) == 0 for g in doc["spec"]["workerGroupSpecs"]):
            assert doc["spec"]["enableInTreeAutoscaling"] is True, f"{where}: request_resources would talk to nobody"


def test_a_run_scaling_from_zero_asks_for_what_the_worker_group_can_give():
    settings = load_settings(REPO / "conf/cluster.toml")
    [(where, cluster)] = [(w, d["spec"]) for w, d in kubernetes_documents() if d["kind"] == "RayCluster"]
    most = sum(
        g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in cluster["workerGroupSpecs"]
    )
    assert settings.run.gpus == most, f"conf/cluster.toml run.gpus vs {where}'s worker groups"


def _pod_templates(doc: dict) -> list[dict]:
    spec = cluster_spec(doc)
    if spec is None:
        return []
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def _image_paths(dockerfile: Path) -> list[str]:
    """What the Dockerfile's COPY lines put under its WORKDIR, relative to it."""
    copied = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            args = [a for a in shlex.split(line)[1:] if not a.startswith("--")]
            sources, target = args[:-1], args[-1]
            copied += [target.rstrip("/") if target not in ("./", ".") and len(sources) == 1 else s for s in sources]
    return copied
