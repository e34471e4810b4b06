"""Checks of a finished store: the run's accounting and vectors (verify), retrieval quality."""
