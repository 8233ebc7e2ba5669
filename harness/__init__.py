"""harness: a distributed benchmark and ablation harness for small, parameter-efficient vision models."""

__version__ = "0.1.0"
