// The chunks table as LanceDB's Node client reads it, with nothing of ours installed: the metric from the table's
// own schema metadata, then the top k for each query vector read from stdin (a JSON list of vectors).
// node search.mjs <store uri> <k> exact|ann
import * as lancedb from "@lancedb/lancedb";

const [uri, k, mode] = process.argv.slice(2);
let input = "";
for await (const piece of process.stdin) input += piece;
const vectors = JSON.parse(input);

const db = await lancedb.connect(uri);
const table = await db.openTable("chunks");
const made = JSON.parse((await table.schema()).metadata.get("embedpipe"));
const top = async (vector) => {
  let query = table.search(vector).distanceType(made.metric).select(["chunk_id"]).limit(Number(k));
  query = mode === "exact" ? query.bypassVectorIndex() : query.nprobes(20).refineFactor(10);
  return (await query.toArray()).map((r) => [r.chunk_id, r._distance]);
};
const hits = [];
for (const vector of vectors) hits.push(await top(vector));
console.log(JSON.stringify({ metric: made.metric, model: made.model, hits }));
