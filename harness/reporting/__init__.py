"""Reports from the MLflow store: the study's tables beside the paper's, the settings tables, arm comparisons
over seeds, Pareto plots, and the report text."""
