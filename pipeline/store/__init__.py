"""LanceDB: the only package that opens tables. Runs and their accounting, the chunk writer and the commit,
stored keys, locks (a local file lock, an S3 lease), maintenance and search."""
