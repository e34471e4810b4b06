"""What the run and the benchmarks share around the stages: GPUs read without CUDA, what each process is, stopping
what a library left running, and the faults tests inject."""
