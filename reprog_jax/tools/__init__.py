"""Developer tools beside the library: the benchmark against the PyTorch
version (`bench`, `bench_sides`, `torch_reference`) and the offline demo (`demo`,
`source_task`)."""
