"""Roles are recognised by the names of the pipeline's own actors and tasks: each name must still be a class or
function of the Ray adapters, or CPU demotion and the benchmark's CPU table would silently stop seeing it."""

import ast
from pathlib import Path

import pytest

from pipeline.runtime.process_roles import OWN_ROLES, ROLES, role_of

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
RAY_SIDE = REPO / "pipeline" / "run" / "ray"


def defined_names() -> set[str]:
    names = set()
    for adapter in sorted(RAY_SIDE.glob("*.py")):
        tree = ast.parse(adapter.read_text())
        names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names


def test_every_own_role_names_a_class_or_function_that_exists():
    missing = [name for name, _ in OWN_ROLES if name not in defined_names()]
    assert missing == []


def test_each_own_role_is_recognised_in_a_worker_title():
    for name, role in OWN_ROLES:
        assert role_of(f"ray::MapWorker(MapBatches({name}))", pid=2, driver_pid=1) == role
    assert role_of("ray::HashShuffleAggregator", pid=2, driver_pid=1) == "plan shuffle"
    assert role_of("anything", pid=1, driver_pid=1) == "driver"
    assert len({n for n, _ in ROLES}) == len(ROLES)
