"""LanceDB: the only package that opens tables. The runs table, the chunk writer and the group commits,
stored keys, locks (a local file lock, an S3 lease), maintenance and search."""
