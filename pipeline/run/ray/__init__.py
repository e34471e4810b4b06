"""The run on Ray: the cluster, the engines' actors and their supervision, the dataset's stages, the progress board,
the live metrics; composed behind the executor protocol by executor.py (RayExecutor)."""
