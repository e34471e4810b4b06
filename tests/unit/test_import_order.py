"""The library's packages import one way: foundations < plan < stores and stages < engine < the run < checks.
A module imports only from its own layer or lower ones, and no two modules import each other, directly or
around a loop. Imports are read from the source (every `import` and `from ... import`, inside functions too),
so an import deferred to keep Ray out still counts."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOUNDATIONS = 0
LAYERS = {
    "pipeline.plan": 1,
    "pipeline.stages": 2,
    "pipeline.store": 2,
    "pipeline.engine": 3,
    "pipeline.ingest": 4,
    "pipeline.estimate_run": 4,
    "pipeline.ray_cluster": 4,
    "pipeline.ray_engines": 4,
    "pipeline.ray_supervision": 4,
    "pipeline.ray_metrics": 4,
    "pipeline.ray_stages": 4,
    "pipeline.checks": 5,
}
"""Layer of each package or module; any other module of pipeline/ (settings, errors, log, schema, stats,
object_store, sample_corpus, runtime/) is a foundation."""
NAMES = ["foundations", "plan", "stores and stages", "engine", "the run", "checks"]


def layer(module: str) -> int:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return FOUNDATIONS


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
    assert "pipeline.plan.job" in g["pipeline.ingest"] and "pipeline.ray_stages" in g["pipeline.ingest"]
    assert "pipeline.schema" in g["pipeline.stages.fates"]


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
