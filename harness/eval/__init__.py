"""Evaluation: image distances (FID/KID/IS with Inception or classifier features), the Inception weights,
point-cloud metrics, and compression (pruning, quantisation, sizes, inference time)."""
