"""The run's stages as plain functions and classes: read and parse shards, plan each document's fate, chunk
with the model's tokenizer, embed (through any Embedder). Ray stays outside (pipeline/run/ray/stages.py adapts
them)."""
