"""`harness bench`: benchmarks that print figures and write reports under results/bench/ (in-process model and
evaluation speed; whole-study overhead, data and scaling runs through Ray)."""
