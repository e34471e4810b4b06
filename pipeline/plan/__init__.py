"""Decisions made before any work starts: lengths and engine placement, memory, the model's parameters and
limits, indexes. Plain functions of the settings, the model's files and the cluster's size."""
