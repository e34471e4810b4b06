"""The store as Python readers open it with none of this project installed: DuckDB and Polars over its Lance
datasets, and LanceDB's own client, at the versions tests/readers/requirements.txt pins. Run with that environment's
Python: `python python_readers.py <store dir> <k>`, query vectors (a JSON list of lists) on stdin; prints JSON."""

import json
import sys

import duckdb
import lance
import lancedb
import polars as pl


def main(uri: str, k: int) -> None:
    vectors = json.loads(sys.stdin.read())
    chunks = lance.dataset(f"{uri}/chunks.lance")
    runs = lance.dataset(f"{uri}/runs.lance")  # noqa: F841 - DuckDB finds the datasets by their names
    batches = lance.dataset(f"{uri}/batches.lance")  # noqa: F841
    made = json.loads(chunks.schema.metadata[b"embedpipe"])
    [(rows, docs)] = duckdb.sql("select count(*), count(distinct doc_id) from chunks").fetchall()
    tokens = duckdb.sql(
        "select r.run_id, any_value(r.tokens), sum(b.n_tokens) from runs r join batches b using (run_id) group by 1"
    ).fetchall()
    by_source = pl.scan_pyarrow_dataset(chunks).group_by("source").len().collect()
    table = lancedb.connect(uri).open_table("chunks")

    def top(vector: list[float], exact: bool) -> list[list]:
        query = table.search(vector).distance_type(made["metric"]).limit(k).select(["chunk_id"])
        query = query.bypass_vector_index() if exact else query.nprobes(20).refine_factor(10)
        return [[r["chunk_id"], r["_distance"]] for r in query.to_list()]

    print(
        json.dumps(
            {
                "versions": {m.__name__: m.__version__ for m in (duckdb, lance, lancedb, pl)},
                "storage_version": chunks.data_storage_version,
                "metric": made["metric"],
                "rows": rows,
                "docs": docs,
                "run_tokens": [[run_id, stated, summed] for run_id, stated, summed in tokens],
                "by_source": dict(zip(by_source["source"].to_list(), by_source["len"].to_list(), strict=True)),
                "exact": [top(v, True) for v in vectors],
                "ann": [top(v, False) for v in vectors],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
