"""The embedding engines: vLLM (the pipeline's), the transformers reference, the query-time choice between them,
and where each engine runs on a node (cores, GPU share)."""
