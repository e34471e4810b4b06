"""The store as LangChain's and LlamaIndex's LanceDB stores open it, as their documentation shows, with none of this
project installed: run with tests/readers' environment's Python, `python framework_readers.py <store dir> <k>
<doc id>`, query vectors (a JSON list of lists) on stdin; prints JSON: each framework's hits per query (doc id, chunk
index, its score or distance, its metadata) and the hits of a metadata filter on the doc id."""

import json
import sys

import lancedb
from langchain_community.vectorstores import LanceDB
from langchain_core.embeddings import Embeddings
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery
from llama_index.vector_stores.lancedb import LanceDBVectorStore


class QueryVectors(Embeddings):
    """LangChain's store wants an embedding model; these tests pass it the query vectors themselves."""

    def embed_documents(self, texts):
        raise NotImplementedError

    def embed_query(self, text):
        raise NotImplementedError


def main(uri: str, k: int, doc_id: str) -> None:
    vectors = json.loads(sys.stdin.read())
    metric = json.loads(lancedb.connect(uri).open_table("chunks").schema.metadata[b"embedpipe"])["metric"]
    # mode="append": both stores replace a table of the same name on their first write by default
    db = lancedb.connect(uri)
    langchain = LanceDB(connection=db, embedding=QueryVectors(), table_name="chunks", distance="cosine", mode="append")
    llama = LanceDBVectorStore(uri=uri, table_name="chunks", refine_factor=10, mode="append")

    def langchain_hits(vector):
        found = langchain.similarity_search_by_vector_with_relevance_scores(vector, k=k, metrics=metric)
        return [[d.metadata["doc_id"], d.metadata["chunk_index"], score, d.metadata] for d, score in found]

    def langchain_filtered(vector):
        # its ..._with_relevance_scores drops `filter` (langchain-community 0.4.2); this one passes it on
        found = langchain.similarity_search_by_vector(vector, k=k, filter={"doc_id": doc_id}, prefilter=True)
        return [[d.metadata["doc_id"], d.metadata["chunk_index"], None, d.metadata] for d in found]

    def llama_hits(vector, filters=None):
        result = llama.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=k, filters=filters))
        return [
            [n.ref_doc_id, n.metadata["chunk_index"], similarity, {**n.metadata, "id": n.node_id}]
            for n, similarity in zip(result.nodes, result.similarities, strict=True)
        ]

    only = MetadataFilters(filters=[MetadataFilter(key="doc_id", value=doc_id)])
    print(
        json.dumps(
            {
                "langchain": [langchain_hits(v) for v in vectors],
                "llamaindex": [llama_hits(v) for v in vectors],
                "langchain_filtered": langchain_filtered(vectors[0]),
                "llamaindex_filtered": llama_hits(vectors[0], only),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
