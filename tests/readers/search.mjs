// The chunks table as LanceDB's Node client reads it, with nothing of ours installed: the metric from the table's
// own schema metadata, then the top k for a query vector read from stdin (JSON).
// node search.mjs <store uri> <k> exact|ann
import * as lancedb from "@lancedb/lancedb";

const [uri, k, mode] = process.argv.slice(2);
let input = "";
for await (const piece of process.stdin) input += piece;
const vector = JSON.parse(input);

const db = await lancedb.connect(uri);
const table = await db.openTable("chunks");
const made = JSON.parse((await table.schema()).metadata.get("embedpipe"));
let query = table
  .search(vector)
  .distanceType(made.metric)
  .select(["chunk_id", "doc_id", "source", "chunk_index", "char_start", "char_end"])
  .limit(Number(k));
query = mode === "exact" ? query.bypassVectorIndex() : query.nprobes(20).refineFactor(10);
const rows = await query.toArray();
console.log(
  JSON.stringify({
    metric: made.metric,
    model: made.model,
    hits: rows.map((r) => ({ chunk_id: r.chunk_id, doc_id: r.doc_id, source: r.source, distance: r._distance })),
  }),
);
