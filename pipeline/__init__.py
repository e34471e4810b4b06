"""Batch ingestion for vector stores: shards -> token-exact chunks -> vLLM embeddings -> LanceDB."""

__version__ = "0.1.0"
