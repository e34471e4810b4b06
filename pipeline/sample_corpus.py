"""Corpora of real English text made offline from what a Python installation carries.

`documents`: each document is one standard-library module's documentation, its docstring followed by those of
its public classes and functions. `package_documents`: each is one installed distribution's long description
(its README as published: markdown or reStructuredText, with code, tables and links), a second corpus of
another shape for the benchmarks. No ray or vllm imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_MODULES = (
    "abc argparse array ast asyncio base64 bisect bz2 calendar cmd codecs collections colorsys configparser "
    "contextlib copy csv dataclasses datetime decimal difflib dis email enum filecmp fnmatch fractions ftplib "
    "functools getopt gettext glob graphlib gzip hashlib heapq hmac html http imaplib inspect io ipaddress "
    "itertools json keyword linecache locale logging lzma mailbox math mimetypes numbers operator optparse os "
    "pathlib pickle pkgutil platform plistlib poplib pprint profile pstats queue quopri random re reprlib "
    "sched secrets select selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat "
    "statistics string struct subprocess symtable sysconfig tabnanny tarfile tempfile textwrap threading "
    "timeit token tokenize trace traceback types typing unittest urllib uuid warnings wave weakref xml zipapp "
    "zipfile zlib"
).split()


def clip(text: str, max_chars: int) -> str:
    """At most `max_chars`, cut at the last paragraph break before the limit where there is one."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n\n", 0, max_chars)
    return text[: cut if cut > 0 else max_chars]


def module_document(name: str, max_chars: int) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any module that fails to import is simply not in the corpus
            return None
    parts = [f"# The {name} module\n", inspect.getdoc(module) or ""]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"\n## {name}.{attr}\n\n{doc}")
    text = clip("\n".join(parts).strip(), max_chars)
    return text if len(text) > 200 else None


def documents(modules: list[str], max_chars: int) -> Iterator[dict]:
    for name in modules:
        text = module_document(name, max_chars)
        if text:
            yield {"id": f"python-docs/{name}", "text": text, "module": name}


def package_documents(max_chars: int, min_chars: int = 3000) -> Iterator[dict]:
    """Installed distributions' long descriptions of at least `min_chars`, by distribution name, each once."""
    from importlib import metadata

    seen = set()
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        name = (dist.metadata["Name"] or "").lower()
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if not name or name in seen or name == "embedpipe" or len(text) < min_chars:
            continue
        seen.add(name)
        yield {"id": f"packages/{name}", "text": clip(text, max_chars).strip(), "module": name}


def write_text_files(out: Path, docs: list[dict]) -> int:
    """One markdown file per document (its id is then the file's path under `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (out / f"{doc['module']}.md").write_text(doc["text"], encoding="utf-8")
    return len(docs)


def write_corpus(out: Path, modules: list[str], max_chars: int, jsonl_only: bool = False) -> dict[str, int]:
    """jsonl shards, a parquet shard and markdown files (unless jsonl_only); returns files per format."""
    out.mkdir(parents=True, exist_ok=True)
    docs = list(documents(modules, max_chars))
    if jsonl_only:
        groups = {"jsonl": docs}
    else:
        groups = {
            "jsonl": docs[: len(docs) * 6 // 10],
            "parquet": docs[len(docs) * 6 // 10 : len(docs) * 9 // 10],
            "text": docs[len(docs) * 9 // 10 :],
        }
    counts = {}
    jsonl = groups["jsonl"]
    n_shards = max(1, min(8, len(jsonl) // 20))
    for i in range(n_shards):
        with (out / f"docs-{i:02d}.jsonl").open("w", encoding="utf-8") as f:
            for doc in jsonl[i::n_shards]:
                f.write(json.dumps({"id": doc["id"], "text": doc["text"]}) + "\n")
    counts["jsonl"] = n_shards
    if "parquet" in groups:
        table = pa.Table.from_pylist([{"id": d["id"], "text": d["text"]} for d in groups["parquet"]])
        pq.write_table(table, out / "docs.parquet")
        counts["parquet"] = 1
        counts["text"] = write_text_files(out / "modules", groups["text"])
    return counts


_SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "turtle",
    "turtledemo",
    "tkinter",
    "test",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "venv",
    "__main__",
}


def all_stdlib_modules() -> list[str]:
    """Every importable standard-library module and the submodules of its packages, tests excluded."""
    import pkgutil

    names = set()
    for name in sys.stdlib_module_names:
        if name.startswith("_") or name in _SKIP:
            continue
        names.add(name)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for info in pkgutil.iter_modules(spec.submodule_search_locations, prefix=f"{name}."):
                leaf = info.name.rsplit(".", 1)[1]
                if not leaf.startswith("_") and "test" not in leaf and leaf != "__main__":
                    names.add(info.name)
    return sorted(names)
