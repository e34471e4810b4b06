"""Adapters to storage: shard listing and reading (ray) and the LanceDB store."""
