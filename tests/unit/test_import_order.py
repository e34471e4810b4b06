"""The library's packages import one way: foundations < plan < stores and stages < engine < the run < checks.
A module imports only from its own layer or lower ones, and no two modules import each other, directly or
around a loop. Every module has a layer by its package, and the run reaches Ray only through its executor. Imports
are read from the source (every `import` and `from ... import`, inside functions too), so an import deferred to keep
Ray out still counts."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
FOUNDATIONS = (
    "pipeline",
    "pipeline.settings",
    "pipeline.errors",
    "pipeline.log",
    "pipeline.schema",
    "pipeline.stats",
    "pipeline.records",
    "pipeline.object_store",
    "pipeline.sample_corpus",
    "pipeline.runtime",
)
LAYERS = {
    **dict.fromkeys(FOUNDATIONS, 0),
    "pipeline.plan": 1,
    "pipeline.stages": 2,
    "pipeline.store": 2,
    "pipeline.engine": 3,
    "pipeline.run": 4,
    "pipeline.checks": 5,
}
"""Layer of each package (and of each top-level module, which are foundations): a module of pipeline/ takes the
layer of the longest name here that it is or lies under (the root package only itself); one under none of them fails
the test."""
NAMES = ["foundations", "plan", "stores and stages", "engine", "the run", "checks"]
RAY_SIDE = "pipeline.run.ray"
SHARED_WITH_EXECUTORS = {"pipeline.run.executor", "pipeline.run.live_metrics", "pipeline.run.progress"}
"""What the run's executors (Ray, in process) use of the run itself: the protocol they meet and what both share."""


def layer(module: str) -> int | None:
    owners = [name for name in LAYERS if module == name or (name != "pipeline" and module.startswith(name + "."))]
    return LAYERS[max(owners, key=len)] if owners else None


def library() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        found[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known and n != module and n != "pipeline"}
    return out


def graph() -> dict[str, set[str]]:
    modules = library()
    return {m: imports(m, p, set(modules)) for m, p in modules.items()}


def test_the_graph_is_read():
    g = graph()
    assert {"pipeline.run.start", "pipeline.run.executors"} <= g["pipeline.run.ingest"]
    assert "pipeline.run.ray.executor" in g["pipeline.run.executors"]
    assert "pipeline.schema" in g["pipeline.stages.fates"]


def test_every_module_has_a_layer():
    """A new module outside every listed package (a `pipeline/ray_x.py` beside the foundations) fails here instead of
    being ranked silently."""
    assert [m for m in library() if layer(m) is None] == []
    assert layer("pipeline.ray_x") is None and layer("pipeline.run.ray.stages") == NAMES.index("the run")


def test_only_the_executors_choice_reaches_the_ray_side_and_the_executors_know_only_their_contract():
    g = graph()
    outside = [m for m in g if not m.startswith(RAY_SIDE)]
    assert sorted(m for m in outside if any(t.startswith(RAY_SIDE) for t in g[m])) == ["pipeline.run.executors"]
    run_modules = {m for m in g if m.startswith("pipeline.run.") and not m.startswith(RAY_SIDE)}
    for side in (RAY_SIDE, "pipeline.run.in_process"):
        used = {t for m, targets in g.items() if m.startswith(side) for t in targets} & run_modules
        assert used - {side} <= SHARED_WITH_EXECUTORS, side


def test_no_module_imports_from_a_higher_layer():
    against = [
        f"{m} ({NAMES[layer(m)]}) imports {t} ({NAMES[layer(t)]})"
        for m, targets in graph().items()
        for t in sorted(targets)
        if layer(t) > layer(m)
    ]
    assert against == []


def test_no_import_cycles():
    g = graph()
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert cycles == []
