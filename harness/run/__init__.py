"""Running a study: the driver (pre-flight checks, the private or given Ray cluster, Ray Tune), the entry point
each Tune trial runs (one worker in-process, or a Ray Train TorchTrainer), progress and status, and the system
metrics sampled beside training."""
