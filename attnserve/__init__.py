"""The `attnserve` command: one front door to serving, training, export and the benchmarks."""
