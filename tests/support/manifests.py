"""The manifests of infra/ as the tests read them: every YAML document, and the Ray cluster each RayCluster or
RayJob describes."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MANIFESTS = sorted(INFRA.glob("**/*.yaml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_documents() -> list[tuple[str, dict]]:
    """Every Kubernetes object of the manifests (those with a kind), named file:index."""
    return [(f"{p.name}:{i}", d) for p in MANIFESTS for i, d in enumerate(docs(p)) if "kind" in d]


def cluster_spec(doc: dict) -> dict | None:
    """The Ray cluster a RayCluster or RayJob describes (None for other kinds)."""
    if doc.get("kind") == "RayCluster":
        return doc["spec"]
    if doc.get("kind") == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    return None


def cluster_specs() -> list[tuple[str, dict]]:
    return [(where, spec) for where, doc in kubernetes_documents() if (spec := cluster_spec(doc)) is not None]
