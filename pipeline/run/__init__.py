"""One run: its start (the plan on the executor's cluster), its `runs` row, its accounts and result, the estimate and
the dry run; the executor protocol and the in-process executor. The run on Ray is the ray subpackage."""
